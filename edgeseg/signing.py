"""Signing keys and archive signatures (Ed25519, RFC 8032, via ``cryptography``).

``edgeseg keys new`` writes a key pair; ``edgeseg build --sign-key KEY`` (or
``$EDGESEG_SIGNING_KEY``) signs the exact bytes of the archive's
``manifest.json``, which holds every other file's sha256, into the detached
``manifest.sig`` (format in :mod:`edgeseg_runtime.signing`). Ed25519
signatures are deterministic, so a signed rebuild stays byte-identical.
Devices check the signature before installing (``edgeseg deploy``).

Files:

* ``<name>.key``: private key, PEM PKCS#8, unencrypted, mode 0600;
* ``<name>.pem``: public key, PEM SubjectPublicKeyInfo; give it to devices
  (``trusted_keys`` in ``devices.toml``).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg_runtime.signing import ALGORITHM, SIGNATURE_NAME, key_id_of, load_public_key

from .errors import ConfigError, ToolchainError

__all__ = ["KeyPair", "SIGNING_KEY_ENV", "default_sign_key", "new_keypair", "load_private_key", "sign_bytes", "sign_stage", "signature_key_id", "public_key_id"]


#: environment variable naming the signing key when none is given
SIGNING_KEY_ENV = "EDGESEG_SIGNING_KEY"


def default_sign_key(key: str | Path | None) -> str | Path | None:
    """``key``, else ``$EDGESEG_SIGNING_KEY``, else None (unsigned)."""
    return key or os.environ.get(SIGNING_KEY_ENV) or None


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ToolchainError("signing needs the 'cryptography' package: pip install 'edgeseg[deploy]'") from None
    return serialization, ed25519


@dataclass(frozen=True)
class KeyPair:
    """A key pair written by :func:`new_keypair`: private and public key files, and the key id."""

    private: Path
    public: Path
    key_id: str


def new_keypair(out_dir: str | Path, name: str = "edgeseg-signing", *, overwrite: bool = False) -> KeyPair:
    """Generate an Ed25519 key pair.

    Args:
        out_dir: folder for ``<name>.key`` (0600) and ``<name>.pem``.
        name: file name stem.
        overwrite: replace existing files (a lost key cannot sign updates that devices accept).

    Raises:
        ConfigError: the files exist and ``overwrite`` is False.
    """
    serialization, ed25519 = _crypto()
    out = Path(out_dir)
    private, public = out / f"{name}.key", out / f"{name}.pem"
    if not overwrite and (private.exists() or public.exists()):
        raise ConfigError(f"{private} already exists; devices trust its public key. Use --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = key.public_key()
    public.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPair(private, public, key_id_of(raw))


def load_private_key(path: str | Path) -> Any:
    """Read a PEM Ed25519 private key.

    Raises:
        ConfigError: missing file, not PEM, encrypted, or not Ed25519.
    """
    serialization, ed25519 = _crypto()
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"signing key {path} not found; create one with 'edgeseg keys new'") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key; create one with 'edgeseg keys new'")
    return key


def sign_bytes(data: bytes, key: Any) -> bytes:
    """The ``manifest.sig`` document (JSON bytes) signing ``data`` with an Ed25519 private key."""
    serialization, _ = _crypto()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    doc = {"algorithm": ALGORITHM, "key_id": key_id_of(raw), "public_key": base64.b64encode(raw).decode(),
           "signature": base64.b64encode(key.sign(data)).decode()}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def sign_stage(stage: Path, key_path: str | Path) -> str:
    """Write ``stage/manifest.sig`` over ``stage/manifest.json``; returns the key id."""
    key = load_private_key(key_path)
    sig = sign_bytes((stage / "manifest.json").read_bytes(), key)
    (stage / SIGNATURE_NAME).write_bytes(sig)
    return json.loads(sig)["key_id"]


def signature_key_id(sig_bytes: bytes) -> str | None:
    """The key id named by a ``manifest.sig`` (None when unreadable); says nothing about validity."""
    try:
        return str(json.loads(sig_bytes)["key_id"])
    except (ValueError, KeyError, TypeError):
        return None


def public_key_id(path: str | Path) -> str:
    """Key id of a PEM public key file."""
    return load_public_key(Path(path).expanduser())[0]
