"""Checking an archive's signature: Ed25519 (RFC 8032) over the exact bytes of ``manifest.json``.

The manifest lists every other file with its sha256, so one signature covers
the whole archive (the TUF / Mender "signed metadata, hashed targets" scheme).
The detached ``manifest.sig`` is a small JSON document::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "public_key": "<base64, 32 bytes>",
     "signature": "<base64, 64 bytes>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw 32-byte public
key; it names the key, it proves nothing (the signature does). ``public_key``
(the raw key, whose ``key_id`` it must have) lets anyone check that the
signature is intact (``edgeseg info`` / ``verify``); whether the key is
*trusted* is decided by the device alone: it checks the signature with its
own copy of the key. Public keys are PEM ``SubjectPublicKeyInfo`` files
(``*.pem``); a device trusts the keys in its ``trusted_keys/`` folder.

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .contract import SIGNATURE_NAME
from .errors import SignatureError, ToolchainError

__all__ = ["SIGNATURE_NAME", "ALGORITHM", "key_id_of", "load_public_key", "verify_manifest", "check_signature",
           "SignatureDoc", "parse_signature"]

ALGORITHM = "ed25519"
_KEY_ID = re.compile(r"[0-9a-f]{16}", re.ASCII)


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


@dataclass(frozen=True)
class SignatureDoc:
    """A parsed ``manifest.sig``: key id (16 hex), raw 64-byte signature, raw 32-byte public key (None in old archives)."""

    key_id: str
    signature: bytes
    public_key: Optional[bytes]


def parse_signature(sig_bytes: bytes) -> SignatureDoc:
    """Parse ``manifest.sig`` (structure only; see :func:`check_signature` for the maths).

    Raises:
        SignatureError: not the JSON document above, another algorithm, a key
            id that is not 16 hex digits, a signature that is not 64 bytes, or
            a public key whose id is not ``key_id``.
    """
    try:
        doc = json.loads(sig_bytes) if len(sig_bytes) <= 4096 else None
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        if doc.get("algorithm") != ALGORITHM:
            raise SignatureError(f"{SIGNATURE_NAME}: algorithm {str(doc.get('algorithm'))[:20]!r} is not {ALGORITHM}")
        signature = base64.b64decode(doc["signature"], validate=True)
        key_id = doc["key_id"]
        public = doc.get("public_key")
        public_key = None if public is None else base64.b64decode(public, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise SignatureError(f"{SIGNATURE_NAME} is not a valid edgeseg signature document") from None
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise SignatureError(f"{SIGNATURE_NAME}: key_id {str(key_id)[:20]!r} is not 16 hex digits")
    if len(signature) != 64:
        raise SignatureError(f"{SIGNATURE_NAME}: an Ed25519 signature is 64 bytes, this one is {len(signature)}")
    if public_key is not None and (len(public_key) != 32 or key_id_of(public_key) != key_id):
        raise SignatureError(f"{SIGNATURE_NAME}: its public key is not key {key_id}")
    return SignatureDoc(key_id, signature, public_key)


def check_signature(manifest_bytes: bytes, sig_bytes: bytes) -> SignatureDoc:
    """Check that ``manifest.sig`` is an intact Ed25519 signature of ``manifest.json`` by the key it names.

    This says the manifest was not altered since it was signed by the holder
    of that key; it does not say the key is trusted (devices decide that with
    :func:`verify_manifest`).

    Returns:
        The parsed signature document.

    Raises:
        SignatureError: malformed, without its public key (edgeseg always
            writes it: a signature without it cannot be checked here, so it
            is not accepted as valid), or not matching the manifest.
        ToolchainError: ``cryptography`` is not installed.
    """
    doc = parse_signature(sig_bytes)
    if doc.public_key is None:
        raise SignatureError(f"{SIGNATURE_NAME} names key {doc.key_id} but carries no public key to check it with; "
                             "re-sign the archive with this edgeseg")
    ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(doc.public_key).verify(doc.signature, manifest_bytes)
    except (InvalidSignature, ValueError):
        raise SignatureError(
            f"signature by key {doc.key_id} does not match manifest.json: the archive was altered after signing"
        ) from None
    return doc


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
    doc = parse_signature(sig_bytes)
    key_id, signature = doc.key_id, doc.signature
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
