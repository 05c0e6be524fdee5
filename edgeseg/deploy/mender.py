"""Mender artifacts of edgeseg archives: ``edgeseg export mender``.

Mender (an open over-the-air update system: a server, and the ``mender``
client on each device) ships *artifacts*; edgeseg ships *archives*. An
artifact written here is a Mender artifact (format version 3) whose single
payload of type ``edgeseg`` is the signed edgeseg archive, unchanged. On the
device, the ``edgeseg`` update module (:mod:`edgeseg_runtime.mender`,
written by ``edgeseg devices provision --mender``) installs it with edgeseg's
installer: checked, staged and health-checked on ``ArtifactInstall``,
switched on ``ArtifactCommit``.

The artifact is written by Debian's ``mender-artifact`` (``write
module-image``), not by edgeseg: Mender's own tool owns Mender's format.
What it carries:

* ``artifact_name``: ``<model>-<version>`` (what ``mender show-artifact`` prints);
* ``artifact_provides``: ``edgeseg.<model>.version = <version>`` (the
  ``--software-*`` fields of ``mender-artifact``), ``edgeseg.<model>.target``
  and ``edgeseg.<model>.precision``; ``clears_artifact_provides``
  ``edgeseg.<model>.*`` (a new release replaces all of them);
* ``artifact_depends``: the device types given (``device_type`` of the
  device's ``/var/lib/mender/device_type``): Mender refuses the artifact on
  any other device before the module runs;
* optionally Mender's own signature (``--sign-key``: an RSA or ECDSA P-256
  private key in PEM, checked by clients configured with
  ``ArtifactVerifyKey``), on top of edgeseg's Ed25519 signature inside, which
  the device checks whatever Mender says.

The payload is stored uncompressed in the artifact (the archive is gzip
already): the artifact is the archive plus about 9 KiB of headers. The same
archive and options give the same contents (``manifest``, ``header.tar``,
the payload and its recorded time, ``$SOURCE_DATE_EPOCH`` or else 0), but not
the same bytes: ``mender-artifact`` stamps the time of writing on its two
outer tar headers (and ECDSA signatures are randomized).

Source: Mender documentation, "Artifact format" (v3) and "Update Modules";
``mender-artifact write module-image --help`` (3.9, Debian 12).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeseg_runtime.archive import Archive
from edgeseg_runtime.errors import ToolchainError
from edgeseg_runtime.signing import check_signature

from ..errors import DeployError

__all__ = ["MenderArtifact", "describe", "export_mender", "mender_artifact_tool"]

Report = Callable[[str], None]
#: the update module's name, which is the artifact payload's type (:data:`edgeseg_runtime.mender.MODULE_NAME`)
PAYLOAD_TYPE = "edgeseg"
#: characters Mender accepts in a device type and edgeseg in a provides key (one path component, no spaces)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}", re.ASCII)


@dataclass(frozen=True)
class MenderArtifact:
    """What ``export_mender`` wrote.

    Attributes:
        path: the ``.mender`` file.
        size: its size in bytes; ``archive_size``: the payload's (the edgeseg archive).
        artifact_name: Mender's artifact name (``<model>-<version>``).
        device_types: the device types it depends on.
        provides: Mender ``artifact_provides`` of the payload.
        mender_signed: signed with ``--sign-key`` (Mender's signature); ``key_id``: edgeseg's Ed25519 key inside.
    """

    path: Path
    size: int
    archive_size: int
    artifact_name: str
    device_types: tuple[str, ...]
    provides: dict[str, str]
    mender_signed: bool
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["path"] = str(self.path)
        doc["device_types"] = list(self.device_types)
        return doc


def mender_artifact_tool() -> str:
    """Path of ``mender-artifact``.

    Raises:
        ToolchainError: it is not installed (``apt install mender-artifact``).
    """
    tool = shutil.which("mender-artifact")
    if tool is None:
        raise ToolchainError("mender-artifact is not installed: apt install mender-artifact (Debian 12 ships 3.9), "
                             "or get it from Mender's downloads")
    return tool


def _check_signing_key(key: Path) -> None:
    """Refuse, before writing anything, a key ``mender-artifact`` 3.9 cannot sign with, saying how to convert it.

    It reads RSA keys as PKCS#1 (``BEGIN RSA PRIVATE KEY``) and ECDSA keys as
    SEC1 (``BEGIN EC PRIVATE KEY``), unencrypted; OpenSSL 3 writes PKCS#8.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from ..errors import ConfigError

    try:
        data = key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: no such signing key (an RSA or ECDSA P-256 private key in PEM): "
                          f"{exc.strerror or exc}") from None
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{key}: the key is passphrase-protected; mender-artifact needs it decrypted "
                          "(openssl pkey -in KEY -out KEY.plain.pem)") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: not a PEM private key (mender-artifact signs with RSA or ECDSA P-256 keys)") from None
    if isinstance(loaded, rsa.RSAPrivateKey):
        if b"BEGIN RSA PRIVATE KEY" not in data:
            raise ConfigError(f"{key}: an RSA key in PKCS#8 form; mender-artifact reads PKCS#1: convert it with "
                              "openssl rsa -in KEY -out KEY.rsa.pem -traditional")
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        if b"BEGIN EC PRIVATE KEY" not in data:
            raise ConfigError(f"{key}: an ECDSA key in PKCS#8 form; mender-artifact reads SEC1 ('BEGIN EC PRIVATE "
                              "KEY'): convert it with openssl ec -in KEY -out KEY.sec1.pem")
    else:
        raise ConfigError(f"{key}: a {type(loaded).__name__.removeprefix('_')} key; mender-artifact signs with RSA "
                          "or ECDSA P-256 keys only (edgeseg's own Ed25519 key signs the archive inside)")


def _tool(argv: list[str], doing: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise DeployError(f"mender-artifact could not {doing}: {tail or f'exit {proc.returncode}'}")
    return proc.stdout


def export_mender(archive: str | Path, device_types: Sequence[str], out: str | Path | None = None, *,
                  sign_key: str | Path | None = None, report: Report | None = None) -> MenderArtifact:
    """Write a Mender artifact (format v3, payload type ``edgeseg``) holding a signed edgeseg archive.

    Args:
        archive: ``.tar.gz`` written by ``edgeseg build`` (a folder is packed first, deterministically).
        device_types: Mender device types the artifact installs on (at least one).
        out: the ``.mender`` file to write (default: next to the archive, ``<archive name>.mender``).
        sign_key: RSA or ECDSA P-256 private key (PEM) for Mender's signature (``mender-artifact -k``).
        report: callback receiving progress lines.

    Returns:
        What was written (:class:`MenderArtifact`).

    Raises:
        ArchiveError: the archive is missing, corrupt or altered (every sha256 is checked).
        SignatureError: the archive is unsigned or its Ed25519 signature does not match (devices would refuse it).
        ConfigError: no device type, or one with characters Mender does not take.
        ToolchainError: ``mender-artifact`` is not installed.
        DeployError: ``mender-artifact`` failed, or ``out`` would overwrite the archive.
    """
    from ..bundle import pack
    from ..errors import ConfigError

    report = report or (lambda _line: None)
    src = Path(archive)
    types = tuple(device_types)
    if not types:
        raise ConfigError("give at least one --device-type (the device_type Mender clients report)")
    for t in types:
        if not _NAME.fullmatch(t):
            raise ConfigError(f"device type {t[:60]!r} must be letters, digits and . _ + - (at most 128)")
    key = Path(sign_key) if sign_key is not None else None
    if key is not None:
        _check_signing_key(key)
    tool = mender_artifact_tool()
    with Archive.open(src) as opened:  # every file checked against the manifest
        if opened.signature is None:
            from edgeseg_runtime.errors import SignatureError

            raise SignatureError(f"{src}: the archive is unsigned, and devices refuse unsigned archives; build it "
                                 "with --sign-key (keys from 'edgeseg keys new')")
        key_id = check_signature(opened.manifest_bytes, opened.signature).key_id
        manifest = opened.manifest
    model, version = manifest.model.name, manifest.release_version  # the contract's name pattern: a safe key part
    dest = Path(out) if out is not None else src.with_name(src.name.removesuffix(".tar.gz") + ".mender")
    if dest.exists() and src.exists() and dest.resolve() == src.resolve():
        raise DeployError(f"{dest} is the archive itself; give another --out")
    if dest.is_dir():
        raise ConfigError(f"--out {dest} is a folder; give the artifact's file name (e.g. {dest}/{model}-{version}.mender)")
    if os.path.lexists(dest) and not dest.is_symlink() and not dest.is_file():
        raise ConfigError(f"--out {dest} exists and is not a regular file (a device, FIFO or socket); give another path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    name = f"{model}-{version}"
    provides = {f"edgeseg.{model}.version": version, f"edgeseg.{model}.target": manifest.target.name,
                f"edgeseg.{model}.precision": manifest.target.precision}
    tmpdir = Path(tempfile.mkdtemp(prefix=".edgeseg-mender-", dir=dest.parent))
    try:
        payload = tmpdir / "payload" / (src.name if src.is_file() else f"{src.name}.tar.gz")
        if src.is_dir():
            pack(src, payload)
            report(f"packed {src} into {payload.name}")
        else:  # a copy: mender-artifact records the payload's mtime, which is set (the input is never touched)
            payload.parent.mkdir()
            shutil.copyfile(src, payload)
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
        os.utime(payload, (epoch, epoch))
        tmp = tmpdir / dest.name
        argv = [tool, "write", "module-image", "--type", PAYLOAD_TYPE, "--artifact-name", name,
                "--file", str(payload), "--output-path", str(tmp), "--compression", "none",
                "--software-filesystem", PAYLOAD_TYPE, "--software-name", model, "--software-version", version]
        for t in types:
            argv += ["--device-type", t]
        for k, v in provides.items():
            if not k.endswith(".version"):
                argv += ["--provides", f"{k}:{v}"]
        if key is not None:
            argv += ["--key", str(key)]
        report(f"writing {dest.name}: artifact {name}, payload {payload.name} ({payload.stat().st_size:,} bytes), "
               f"device types {', '.join(types)}")
        _tool(argv, "write the artifact")
        info = _tool([tool, "read", "--no-progress", str(tmp)], "read the artifact back")
        if f"Name: {name}" not in info or f"edgeseg.{model}.version: {version}" not in info:
            raise DeployError(f"mender-artifact read does not show artifact {name} in what it wrote")
        os.replace(tmp, dest)
        size = dest.stat().st_size
        archive_size = payload.stat().st_size
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    report(f"wrote {dest} ({size:,} bytes; the archive is {archive_size:,})")
    return MenderArtifact(dest, size, archive_size, name, types, provides, key is not None, key_id)


def describe(artifact: MenderArtifact) -> str:
    """One line for people."""
    signed = "Mender-signed" if artifact.mender_signed else "not Mender-signed"
    return (f"{artifact.path}: artifact {artifact.artifact_name} for {', '.join(artifact.device_types)}, "
            f"{artifact.size:,} bytes (archive {artifact.archive_size:,}), {signed}, edgeseg key {artifact.key_id}; "
            f"provides {json.dumps(artifact.provides, sort_keys=True)}")
