"""On-device A/B install of edgeseg archives: signed, atomic, health-checked, reversible.

The host (``edgeseg deploy``) uploads the files a device lacks into its
content-addressed store and then asks this module, running on the device, to
install one manifest. Layout under the install root ``R``::

    agent/                   this package as the host pushed it (the installer code)
    trusted_keys/*.pem       Ed25519 public keys whose signatures this device accepts
    incoming/<sha256>.part   uploads in progress; a new upload resumes at their size
    store/<sha256>           received files, named by their content (read-only)
    releases/<version>/      installed slots: the archive's files, hard links into store/
    releases/.staging-<v>/   a slot being assembled
    sites/<sha256>/          dependencies installed from an archive's wheels/ (shared by
                             every slot with the same wheels)
    engines/<key>.engine     TensorRT engines the health check built here, keyed by
                             TensorRT + GPU + precision + shapes + ONNX (edgeseg_runtime.engine)
    current  -> releases/<v> the version in use (symbolic link, switched by rename(2))
    previous -> releases/<v> the version before it (``rollback`` target)
    journal.json             the install in progress and its phase
    bin/edgeseg              runs the runtime of ``current`` (``R/bin/edgeseg verify --archive R/current``)

An install is a sequence of idempotent steps; each records its phase in
``journal.json`` before it starts (written to a temporary file, fsynced and
renamed, POSIX ``rename(2)`` being atomic):

1. ingest: hash every completed upload in ``incoming/`` and move it into the store;
2. check: signature of ``manifest.json`` by a trusted key, every path inside the
   slot, the release version against the installed one (anti-rollback);
3. assemble ``releases/.staging-<v>`` from the store, re-checking every sha256;
4. dependencies: ``pip install --no-index`` from the archive's ``wheels/`` into
   ``sites/<sha>`` (skipped when the archive has none or the site exists);
5. health check: the slot's own runtime runs ``verify`` on the golden set and,
   when the profile sets ``[deploy] latency_budget_ms``, ``bench``;
6. switch: rename the slot to ``releases/<v>``, point ``current`` at it by
   renaming a new symbolic link over the old one, ``previous`` at the old one;
7. prune slots beyond the profile's ``keep_releases`` and unreferenced store files.

Power may fail at any point: ``current`` always names a complete, checked
slot, because nothing but step 6's rename changes it. :meth:`Device.recover`
(run at boot, and before every install) finishes an install whose switch
already happened and discards any other half-done one.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .archive import MANIFEST_NAME, sha256_file
from .errors import EdgesegError, InstallError
from .signing import SIGNATURE_NAME, load_public_key, verify_manifest

__all__ = ["Device", "parse_version", "wheels_digest", "VERSION_PATTERN"]

Report = Callable[[str], None]
VERSION_PATTERN = r"^\d+(\.\d+)*$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.10.2"`` → ``(1, 10, 2)``; release versions are dotted non-negative integers.

    Raises:
        InstallError: anything else.
    """
    if not isinstance(text, str) or not re.match(VERSION_PATTERN, text):
        raise InstallError(f"release version {text!r} is not dotted numbers like 1.4.0; rebuild with --release-version")
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 1.0 == 1.0.0
        parts.pop()
    return tuple(parts)


def wheels_digest(files: dict[str, dict[str, Any]]) -> str | None:
    """Identity of an archive's ``wheels/`` set: sha256 over its sorted ``name sha256`` lines; None without wheels."""
    lines = sorted(f"{rel} {meta['sha256']}" for rel, meta in files.items() if rel.startswith("wheels/"))
    if not lines:
        return None
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _symlink_atomic(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` by renaming a fresh symbolic link over it (atomic)."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _disk_full(exc: OSError, where: Path) -> InstallError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InstallError(f"disk full on the device while writing {where}; free space and deploy again")
    return InstallError(f"cannot write {where}: {exc.strerror or exc}")


class Device:
    """The install root of one device (see the module docstring for the layout).

    Args:
        root: install root folder (created if missing).
        report: callback receiving one progress line per step.
    """

    def __init__(self, root: str | Path, report: Report | None = None) -> None:
        self.root = Path(root).absolute()
        self.report = report or (lambda _line: None)
        for sub in ("store", "incoming", "releases", "sites", "trusted_keys"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def _release(self, link: str) -> dict[str, Any] | None:
        path = self.root / link
        if not path.is_symlink():
            return None
        slot = path.resolve()
        manifest = slot / MANIFEST_NAME
        if not manifest.is_file():
            return {"version": None, "slot": str(slot), "manifest_sha256": None, "broken": True}
        return {
            "version": slot.name,
            "slot": str(slot),
            "manifest_sha256": sha256_file(manifest),
            "target": json.loads(manifest.read_text(encoding="utf-8"))["target"]["name"],
        }

    def releases(self) -> list[str]:
        """Installed slot versions, oldest first (by version number)."""
        names = [p.name for p in (self.root / "releases").iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(names, key=lambda v: parse_version(v) if re.match(VERSION_PATTERN, v) else (-1,))

    def trusted_keys(self) -> dict[str, Any]:
        """``{key_id: public key}`` of ``trusted_keys/*.pem``."""
        out = {}
        for path in sorted((self.root / "trusted_keys").glob("*.pem")):
            key_id, key = load_public_key(path)
            out[key_id] = key
        return out

    def state(self) -> dict[str, Any]:
        """What the host needs before an upload: versions, stored files, partial uploads, free space.

        Returns:
            JSON-ready dict: ``agent``, ``python``, ``arch``, ``current``/``previous``
            (version, manifest sha256, target), ``releases``, ``store`` (sha256
            list), ``partials`` (``{sha256: bytes received}``), ``free_bytes``,
            ``trusted_keys`` (ids; None when ``cryptography`` is missing), ``journal``.
        """
        keys: list[str] | None = sorted(p.stem for p in (self.root / "trusted_keys").glob("*.pem"))
        if importlib.util.find_spec("cryptography") is None:  # signatures cannot be checked here
            keys = None
        st = os.statvfs(self.root)
        journal = self.root / "journal.json"
        return {
            "agent": __version__,
            "python": platform.python_version(),
            "arch": platform.machine(),
            "current": self._release("current"),
            "previous": self._release("previous"),
            "releases": self.releases(),
            "store": sorted(p.name for p in (self.root / "store").iterdir() if _SHA256.match(p.name)),
            "partials": {
                p.name[: -len(".part")]: p.stat().st_size
                for p in (self.root / "incoming").glob("*.part")
                if _SHA256.match(p.name[: -len(".part")])
            },
            "free_bytes": st.f_bavail * st.f_frsize,
            "trusted_keys": keys,
            "journal": json.loads(journal.read_text(encoding="utf-8")) if journal.is_file() else None,
        }

    # ----------------------------------------------------------------- ingest
    def ingest(self) -> list[str]:
        """Move completed uploads from ``incoming/`` into the store after checking their sha256.

        A ``.part`` whose content hashes to its name is complete; one that is a
        prefix is left for the upload to resume; anything longer or different
        than the name promises cannot be completed and is deleted.

        Returns:
            The sha256 names moved into the store.
        """
        moved = []
        for part in sorted((self.root / "incoming").glob("*.part")):
            name = part.name[: -len(".part")]
            if not _SHA256.match(name):
                part.unlink()
                continue
            if sha256_file(part) == name:
                dest = self.root / "store" / name
                os.chmod(part, 0o444)
                os.replace(part, dest)
                moved.append(name)
        if moved:
            _fsync_dir(self.root / "store")
        return moved

    def _blob(self, sha: str) -> Path:
        path = self.root / "store" / sha
        if not path.is_file():
            raise InstallError(f"file {sha[:16]} is not on the device (upload incomplete?); deploy again")
        return path

    # ---------------------------------------------------------------- install
    def _journal(self, **doc: Any) -> None:
        _write_atomic(self.root / "journal.json", json.dumps(doc, sort_keys=True))

    def _check(
        self, manifest_sha: str, current: dict[str, Any] | None, allow_downgrade: bool
    ) -> tuple[dict[str, Any], str, str]:
        """Signature, paths and version (against ``current``) of the manifest stored under ``manifest_sha``."""
        mbytes = self._blob(manifest_sha).read_bytes()
        if hashlib.sha256(mbytes).hexdigest() != manifest_sha:
            self._blob(manifest_sha).unlink()
            raise InstallError("manifest.json on the device is corrupt (sha256 mismatch); deploy again")
        trusted = self.trusted_keys()
        if not trusted:
            raise InstallError("this device trusts no signing key; run 'edgeseg devices provision' with trusted_keys")
        try:
            manifest = json.loads(mbytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InstallError("manifest.json is not valid JSON") from None
        sig_path = self.root / "incoming" / f"{manifest_sha}.sig"
        key_id = verify_manifest(mbytes, sig_path.read_bytes() if sig_path.is_file() else None, trusted)
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise InstallError("manifest lists no files")
        for rel, meta in files.items():
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or rel.startswith(("/", "\\")) or not p.parts:
                raise InstallError(f"manifest path {rel!r} escapes the release slot; refusing to install")
            if rel in (MANIFEST_NAME, SIGNATURE_NAME) or not _SHA256.match(str(meta.get("sha256", ""))):
                raise InstallError(f"manifest entry {rel!r} is not a file with a sha256")
        version = str(manifest.get("release", {}).get("version", ""))
        new = parse_version(version)
        if current and current.get("version"):
            old = parse_version(current["version"])
            if new == old and current["manifest_sha256"] != manifest_sha:
                raise InstallError(
                    f"version {version} is installed with other contents; give the new build another "
                    "--release-version"
                )
            if new < old and not allow_downgrade:
                raise InstallError(
                    f"version {version} is older than the installed {current['version']}; refusing a downgrade "
                    "(anti-rollback) unless --allow-downgrade"
                )
        return manifest, version, key_id

    def install(
        self,
        manifest_sha: str,
        *,
        allow_downgrade: bool = False,
        health_timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Install the release whose ``manifest.json`` is stored under ``manifest_sha``.

        The signature travels as ``incoming/<manifest_sha>.sig`` (uploaded by the host).

        Returns:
            ``{"status": "installed" | "unchanged", "version", "previous", "key_id", "health"}``.

        Raises:
            SignatureError: unsigned, untrusted or altered manifest.
            InstallError: bad paths, downgrade, missing or corrupt files, disk
                full, failed dependencies or health check. ``current`` is
                unchanged in every case.
        """
        self.recover()
        try:
            self.ingest()
        except OSError as exc:
            raise _disk_full(exc, self.root / "store") from None
        current = self._release("current")
        manifest, version, key_id = self._check(manifest_sha, current, allow_downgrade)
        self.report(f"checked: signed by key {key_id}, version {version}, {len(manifest['files'])} files")
        if current and current["manifest_sha256"] == manifest_sha:
            self.report(f"version {version} is already current")
            return {"status": "unchanged", "version": version, "previous": current["version"], "key_id": key_id}
        slot = self.root / "releases" / version
        staging = self.root / "releases" / f".staging-{version}"
        try:
            self._journal(phase="assemble", version=version, manifest=manifest_sha)
            self._assemble(manifest, manifest_sha, staging)
            self._journal(phase="dependencies", version=version, manifest=manifest_sha)
            site = self._dependencies(manifest, staging)
            self._journal(phase="health", version=version, manifest=manifest_sha)
        except OSError as exc:
            self._discard(staging)
            raise _disk_full(exc, staging) from None
        except EdgesegError:
            self._discard(staging)
            raise
        health = self._health(staging, site, manifest, health_timeout)
        if not health["passed"]:
            self._discard(staging)
            raise InstallError(f"health check failed, kept version {current['version'] if current else 'none'}: "
                               f"{health['verdict']}")
        self._journal(phase="switch", version=version, manifest=manifest_sha, old=current["version"] if current else None)
        if slot.exists():
            shutil.rmtree(slot)
        os.replace(staging, slot)
        _fsync_dir(slot.parent)
        if current and current["version"] != version:
            _symlink_atomic(self.root / "previous", f"releases/{current['version']}")
        _symlink_atomic(self.root / "current", f"releases/{version}")
        self.report(f"switched: current -> releases/{version}")
        self._finish(manifest)
        return {
            "status": "installed",
            "version": version,
            "previous": current["version"] if current else None,
            "key_id": key_id,
            "health": health,
        }

    def _assemble(self, manifest: dict[str, Any], manifest_sha: str, staging: Path) -> None:
        if staging.exists():
            shutil.rmtree(staging)
        tmp = staging.with_name(staging.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for rel, meta in sorted(manifest["files"].items()):
            blob = self._blob(meta["sha256"])
            if blob.stat().st_size != meta["size"] or sha256_file(blob) != meta["sha256"]:
                blob.unlink()
                shutil.rmtree(tmp)
                raise InstallError(f"{rel}: the device's copy does not match the manifest's sha256 (corrupt); deploy again")
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dest)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):  # no hard link possible: copy instead
                    raise
                shutil.copyfile(blob, dest)
        shutil.copyfile(self._blob(manifest_sha), tmp / MANIFEST_NAME)
        sig = self.root / "incoming" / f"{manifest_sha}.sig"
        shutil.copyfile(sig, tmp / SIGNATURE_NAME)
        os.replace(tmp, staging)
        self.report(f"assembled releases/{staging.name} ({len(manifest['files'])} files)")

    def site_of(self, manifest: dict[str, Any]) -> Path | None:
        """The dependency folder of a release (None when its archive carries no wheels)."""
        digest = wheels_digest(manifest["files"])
        return None if digest is None else self.root / "sites" / digest

    def _dependencies(self, manifest: dict[str, Any], slot: Path) -> Path | None:
        site = self.site_of(manifest)
        if site is None:
            self.report("dependencies: none bundled; using the device's Python packages")
            return None
        if (site / ".complete").is_file():
            self.report(f"dependencies: reusing sites/{site.name[:16]}")
            return site
        tmp = site.with_name(f".{site.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = [
            sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(slot / "wheels"),
            "--only-binary=:all:", "--no-compile", "--disable-pip-version-check", "--target", str(tmp),
            *manifest["runtime"]["requirements"],
        ]
        self.report(f"dependencies: pip install --no-index from {len([f for f in manifest['files'] if f.startswith('wheels/')])} wheels")
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            if "No space left" in proc.stderr:
                raise InstallError("disk full on the device while installing the wheels; free space and deploy again")
            raise InstallError(f"installing the archive's wheels failed ({' '.join(argv[:4])} ...): {tail}")
        (tmp / ".complete").write_text("ok\n", encoding="utf-8")
        os.replace(tmp, site)
        return site

    def _runtime_env(self, slot: Path, site: Path | None) -> dict[str, str]:
        paths = [str(slot / "runtime")] + ([str(site)] if site else [])
        # device-built TensorRT engines live next to the releases (edgeseg_runtime.engine)
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1",
                "EDGESEG_ENGINE_CACHE": str(self.root / "engines")}

    def _health(self, slot: Path, site: Path | None, manifest: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Golden ``verify`` (and ``bench`` against the latency budget) with the slot's own runtime."""
        env = self._runtime_env(slot, site)
        t0 = time.perf_counter()
        self.report("health check: verify on the golden set")
        verify = self._runtime_json(["verify", "--archive", str(slot), "--json"], env, timeout)
        out: dict[str, Any] = {"passed": bool(verify.get("passed")), "verdict": verify.get("verdict", "no verdict")}
        budget = manifest["target"].get("deploy", {}).get("latency_budget_ms")
        if out["passed"] and budget:
            self.report(f"health check: latency against the budget of {budget} ms")
            bench = self._runtime_json(["bench", "--archive", str(slot), "--json", "--runs", "20", "--warmup", "3"], env, timeout)
            ms = bench.get("end_to_end_ms")
            out["latency_ms"] = ms
            if ms is None or ms > budget:
                out["passed"] = False
                out["verdict"] = f"FAIL: median latency {ms} ms is over the profile's budget of {budget} ms"
            else:
                out["verdict"] += f"; latency {ms:.1f} ms <= {budget} ms"
        out["seconds"] = round(time.perf_counter() - t0, 2)
        self.report(f"health check: {out['verdict']}")
        return out

    def _runtime_json(self, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
        argv = [sys.executable, "-m", "edgeseg_runtime", *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"passed": False, "verdict": f"FAIL: '{args[0]}' took longer than {timeout:.0f} s"}
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:]) or f"exit {proc.returncode}"
            return {"passed": False, "verdict": f"FAIL: {args[0]} did not run: {tail}"}

    def _clear_journal(self) -> None:
        (self.root / "journal.json").unlink(missing_ok=True)

    def _discard(self, staging: Path) -> None:
        """Abandon an install before its switch: the half-built slot and the journal go, ``current`` stays."""
        shutil.rmtree(staging, ignore_errors=True)
        self._clear_journal()

    def _finish(self, manifest: dict[str, Any]) -> None:
        """Launcher, pruning of old slots, sites and store files; then the journal goes."""
        self._journal(phase="prune")
        self._write_launcher()
        keep = int(manifest["target"].get("deploy", {}).get("keep_releases", 3))
        self.prune(keep)
        self._clear_journal()

    def _write_launcher(self) -> None:
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        script = (
            "#!/bin/sh\n# edgeseg on this device (written by the edgeseg installer): 'recover' runs the installer's\n"
            "# recovery (put it in a boot script); anything else runs the current release's runtime.\n"
            f'export PYTHONPATH="{self.root}/agent"\n'
            f'if [ "$1" = recover ]; then exec "{sys.executable}" -m edgeseg_runtime.agent --root "{self.root}" recover; fi\n'
            f'exec "{sys.executable}" -m edgeseg_runtime.agent --root "{self.root}" exec -- "$@"\n'
        )
        path = bindir / "edgeseg"
        if not path.is_file() or path.read_text(encoding="utf-8") != script:
            _write_atomic(path, script)
            os.chmod(path, 0o755)

    def prune(self, keep: int) -> list[str]:
        """Remove slots beyond the ``keep`` newest (never ``current`` or ``previous``), then unused sites and files.

        Returns:
            The versions removed.
        """
        pinned = {r["version"] for r in (self._release("current"), self._release("previous")) if r}
        versions = self.releases()
        removed = []
        for v in versions[: max(0, len(versions) - keep)]:
            if v not in pinned:
                shutil.rmtree(self.root / "releases" / v)
                removed.append(v)
        if removed:
            self.report(f"pruned releases {', '.join(removed)} (keep_releases = {keep})")
        self.gc()
        return removed

    def gc(self) -> None:
        """Delete store files and sites that no kept slot references, and stale signatures."""
        used: set[str] = set()
        sites: set[str] = set()
        sigs: set[str] = set()
        for v in self.releases():
            mpath = self.root / "releases" / v / MANIFEST_NAME
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            used |= {meta["sha256"] for meta in manifest["files"].values()}
            msha = sha256_file(mpath)
            used.add(msha)
            sigs.add(f"{msha}.sig")
            site = self.site_of(manifest)
            if site is not None:
                sites.add(site.name)
        for blob in (self.root / "store").iterdir():
            if blob.name not in used:
                blob.unlink()
        for site in (self.root / "sites").iterdir():
            if site.name not in sites:
                shutil.rmtree(site, ignore_errors=True)
        for sig in (self.root / "incoming").glob("*.sig"):
            if sig.name not in sigs:
                sig.unlink()

    # --------------------------------------------------------- rollback/recover
    def rollback(self) -> dict[str, Any]:
        """Make ``previous`` current again (and the current one ``previous``).

        Raises:
            InstallError: no previous release to return to.
        """
        self.recover()
        cur, prev = self._release("current"), self._release("previous")
        if not prev or not prev.get("version") or prev.get("broken"):
            raise InstallError("no previous release on this device to roll back to")
        _symlink_atomic(self.root / "current", f"releases/{prev['version']}")
        if cur and cur.get("version"):
            _symlink_atomic(self.root / "previous", f"releases/{cur['version']}")
        self.report(f"rolled back: current -> releases/{prev['version']}")
        return {"status": "rolled back", "version": prev["version"], "previous": cur["version"] if cur else None}

    def recover(self) -> dict[str, Any]:
        """Finish or discard a half-done install (run at boot and before every install).

        An install whose journal reached ``switch`` with ``current`` already on
        the new slot is finished (``previous``, pruning); any other is discarded
        (staging folders removed). ``current`` never changes here, except when
        it names a missing slot and ``previous`` is intact.

        Returns:
            ``{"status": "clean" | "finished" | "discarded", "version": current version}``.
        """
        journal_path = self.root / "journal.json"
        status = "clean"
        if journal_path.is_file():
            try:
                journal = json.loads(journal_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                journal = {}
            cur = self._release("current")
            new = journal.get("version")
            if journal.get("phase") in ("switch", "prune") and cur and cur.get("version") == new:
                if journal.get("old") and journal["old"] != new and (self.root / "releases" / journal["old"]).is_dir():
                    _symlink_atomic(self.root / "previous", f"releases/{journal['old']}")
                mpath = self.root / "releases" / new / MANIFEST_NAME
                self._finish(json.loads(mpath.read_text(encoding="utf-8")))
                status = "finished"
            else:
                status = "discarded"
            journal_path.unlink(missing_ok=True)
        for leftover in (self.root / "releases").glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            status = "discarded" if status == "clean" else status
        for tmp in list(self.root.glob(".*.new")) + list(self.root.glob(".*.tmp")):
            tmp.unlink(missing_ok=True)
        cur = self._release("current")
        if cur and cur.get("broken"):
            prev = self._release("previous")
            if prev and not prev.get("broken"):
                _symlink_atomic(self.root / "current", f"releases/{prev['version']}")
                status = "repaired"
        cur = self._release("current")
        if status != "clean":
            self.report(f"recover: {status} a half-done install; current is {cur['version'] if cur else 'none'}")
        return {"status": status, "version": cur["version"] if cur else None}

    def exec_argv(self, args: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run ``edgeseg ARGS`` with the current release's runtime."""
        cur = self._release("current")
        if not cur or cur.get("broken"):
            raise InstallError(f"nothing is installed under {self.root}; deploy a release first")
        slot = Path(cur["slot"])
        manifest = json.loads((slot / MANIFEST_NAME).read_text(encoding="utf-8"))
        env = self._runtime_env(slot, self.site_of(manifest))
        return [sys.executable, "-m", "edgeseg_runtime", *args], env
