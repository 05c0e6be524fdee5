"""Checking an archive's signature: Ed25519 (RFC 8032) over the exact bytes of ``manifest.json``.

The manifest lists every other file with its sha256, so one signature covers
the whole archive (the TUF / Mender "signed metadata, hashed targets" scheme).
The detached ``manifest.sig`` is a small JSON document::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw 32-byte public
key; it names the key, it proves nothing (the signature does). Public keys are
PEM ``SubjectPublicKeyInfo`` files (``*.pem``); a device trusts the keys in
its ``trusted_keys/`` folder.

Uses the ``cryptography`` package (imported only when a signature is
checked): on a device, ``pip install cryptography`` or Debian's
``python3-cryptography``. This is the one dependency the on-device installer
adds to the runtime's numpy + Pillow + backend.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import SignatureError, ToolchainError

__all__ = ["SIGNATURE_NAME", "ALGORITHM", "key_id_of", "load_public_key", "verify_manifest"]

SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ToolchainError(
            "checking signatures needs the 'cryptography' package: pip install cryptography "
            "(Debian/Raspberry Pi OS: apt install python3-cryptography)"
        ) from None
    return ed25519


def key_id_of(raw_public_key: bytes) -> str:
    """The key id: first 16 hex digits of sha256 over the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def load_public_key(path: Path) -> tuple[str, Any]:
    """Read a PEM Ed25519 public key.

    Returns:
        ``(key_id, Ed25519PublicKey)``.

    Raises:
        SignatureError: not a PEM Ed25519 public key.
    """
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, OSError) as exc:
        raise SignatureError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id_of(raw), key


def _parse_signature(sig_bytes: bytes) -> tuple[str, bytes]:
    try:
        doc = json.loads(sig_bytes)
        if doc.get("algorithm") != ALGORITHM:
            raise SignatureError(f"{SIGNATURE_NAME}: algorithm {doc.get('algorithm')!r} is not {ALGORITHM}")
        signature = base64.b64decode(doc["signature"], validate=True)
        key_id = str(doc["key_id"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise SignatureError(f"{SIGNATURE_NAME} is not a valid edgeseg signature document") from None
    if len(signature) != 64:
        raise SignatureError(f"{SIGNATURE_NAME}: an Ed25519 signature is 64 bytes, this one is {len(signature)}")
    return key_id, signature


def verify_manifest(manifest_bytes: bytes, sig_bytes: bytes | None, trusted: dict[str, Any]) -> str:
    """Check ``manifest.sig`` over ``manifest.json`` against trusted public keys.

    Args:
        manifest_bytes: the exact bytes of ``manifest.json``.
        sig_bytes: the bytes of ``manifest.sig``; None when the archive has none.
        trusted: ``{key_id: Ed25519PublicKey}`` (see :func:`load_public_key`).

    Returns:
        The key id that signed the manifest.

    Raises:
        SignatureError: unsigned, signed by a key not in ``trusted``, or a
            signature that does not match the manifest (tampered).
    """
    if sig_bytes is None:
        raise SignatureError("archive is unsigned; build it with --sign-key (keys from 'edgeseg keys new')")
    key_id, signature = _parse_signature(sig_bytes)
    if key_id not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(f"archive is signed by key {key_id}, which this device does not trust (trusted: {known})")
    from cryptography.exceptions import InvalidSignature

    try:
        trusted[key_id].verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {key_id} does not match manifest.json: the archive was altered after signing"
        ) from None
    return key_id
