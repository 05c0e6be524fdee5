"""Fuzz suite: hostile archives, manifests, pipelines, images and arguments through the device CLI.

Property checked for every case (``check``):

* the command returns 0, 1 or 2 (1: a check or some images failed, 2: it could not run);
* when it fails, it says so in one line: ``edgeseg: error: ...`` on stderr (``verify``: one
  ``FAIL: ...`` line on stdout; ``run``: one ``skipped: ...`` line per refused image; ``info``
  exits 1 only for ``signature INVALID``); never ``internal error``, never a traceback,
  never an exception escaping ``main``; argparse usage errors only where arguments are fuzzed;
* it finishes within :data:`CASE_TIMEOUT_S` and under :data:`MEMORY_CAP` (``RLIMIT_AS`` of the
  worker; a ``MemoryError`` or a killed worker is a failure);
* it writes nothing outside its ``--out`` folder (every case runs in its own folder, which is
  compared before and after; the inputs and the unpacked archive must stay unchanged) and leaves
  nothing in ``TMPDIR`` (the worker's ``TMPDIR`` is a fresh folder, checked after every case;
  what importing the backend writes there is test_backend_import_writes_nothing's business).

The CLI runs in-process in ONE worker process per module (``edgeseg_runtime.cli.main``, one
onnxruntime import; stdout/stderr captured as UTF-8 text streams like a terminal's in a UTF-8
locale: stdout strict, stderr backslashreplace; warnings shown as in a fresh process). The
worker sets ``RLIMIT_AS`` on itself; the test process sends it one command at a time and kills
(and restarts) it when a case runs past the time cap, so a hang in C code is caught as well.

Fuzz tests (Hypothesis, derandomized, no database: CI sees the same cases every run): a) the
real .tar.gz byte-mutated, its tar stream byte-mutated and re-gzipped, tar headers mutated
structurally; b) manifest.json and manifest.sig; c) pipeline.json; d) images; e) arguments.
Then plain regression tests (CVE-2025-8194, CVE-2024-6232, 100k members, a 3 GB member, deep
JSON, odd versions, a 3-byte signature) and the minimised cases the fuzzers found.

Budget: about 2 minutes on a 2-core machine. Environment:
``EDGESEG_FUZZ_SCALE=4`` runs 4x the examples; ``EDGESEG_FUZZ_SHRINK=1`` minimises a failure
(slow); ``EDGESEG_FUZZ_COLLECT=f.jsonl`` records every failing case instead of stopping at the
first; ``EDGESEG_FUZZ_TRACE=f.jsonl`` logs every call's exit code and last stderr line (how deep
the cases reach); ``EDGESEG_FUZZ_REPORT=f.json`` writes the figures (cases, calls, seconds,
cases/s per test, peak RSS) that are also printed at the end of the module.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import gzip
import hashlib
import io
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (extra 'dev')")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

import edgeseg
from edgeseg.bundle import pack, write_manifest
from edgeseg.signing import load_private_key, new_keypair, sign_bytes

pytestmark = pytest.mark.slow

SCALE = float(os.environ.get("EDGESEG_FUZZ_SCALE", "1") or 1)
SHRINK = os.environ.get("EDGESEG_FUZZ_SHRINK", "") not in ("", "0")
COLLECT = os.environ.get("EDGESEG_FUZZ_COLLECT", "")
REPORT = os.environ.get("EDGESEG_FUZZ_REPORT", "")
TRACE = os.environ.get("EDGESEG_FUZZ_TRACE", "")
#: wall-clock cap of one CLI call (the worker is killed past it)
CASE_TIMEOUT_S = 10.0
#: address-space cap of the worker (RLIMIT_AS): the whole fuzz session's memory
MEMORY_CAP = 2 << 30
#: what the CVE regression cases must take at most
FAST_S = 2.0


def fuzz(examples: int) -> settings:
    """Hypothesis settings of one fuzz test: reproducible, bounded, no shrinking unless asked."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None, deadline=None,
                    phases=phases, suppress_health_check=list(HealthCheck), print_blob=False)


# ---------------------------------------------------------------------------------------------- worker
_WORKER = r"""
import contextlib, io, json, os, resource, sys, time, traceback, warnings
def _peak_kib():
    # VmHWM: this process's own peak; ru_maxrss also counts the parent's pages at fork (Linux, across exec)
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cap = int(sys.argv[1])
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)  # stray C-level writes go to the worker log, never into the protocol
from edgeseg_runtime.cli import main
import onnxruntime  # noqa: F401  (one import for the whole session)
FILTERS = list(warnings.filters)
proto.write('{"ready": true}\n')
for line in sys.stdin:
    req = json.loads(line)
    os.chdir(req["cwd"])
    argv = [os.fsdecode(bytes.fromhex(a)) for a in req["argv_hex"]]
    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="backslashreplace", write_through=True)
    warnings.filters[:] = FILTERS  # every call sees warnings as a fresh process does (first occurrence shown)
    warnings.onceregistry.clear()
    for reg in [getattr(m, "__warningregistry__", None) for m in list(sys.modules.values())]:
        if isinstance(reg, dict):
            reg.clear()
    warnings._filters_mutated()
    usage, escaped = False, None
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:
                usage = True
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException:
        rc = None
        escaped = traceback.format_exc()[-4000:]
    seconds = time.perf_counter() - start
    with contextlib.suppress(Exception):
        out.flush(); err.flush()
    proto.write(json.dumps({
        "rc": rc, "stdout": out_b.getvalue()[:4 << 20].decode("utf-8", "replace"),
        "stderr": err_b.getvalue()[:1 << 20].decode("utf-8", "replace"), "usage": usage, "escaped": escaped,
        "seconds": seconds, "maxrss_kib": _peak_kib(),
    }) + "\n")
"""


@dataclass
class Outcome:
    """One CLI call: exit code, captured streams, and what the harness saw around it."""

    command: str
    argv: list[str]
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    usage: bool = False
    escaped: str | None = None
    seconds: float = 0.0
    maxrss_kib: int = 0
    problems: list[str] = field(default_factory=list)

    def brief(self) -> str:
        return (f"argv={self.argv!r}\nrc={self.rc} in {self.seconds:.2f}s\nstderr={self.stderr[-1500:]!r}\n"
                f"stdout={self.stdout[:800]!r}{' ...' if len(self.stdout) > 800 else ''}")


class Worker:
    """The capped child process that runs ``edgeseg_runtime.cli.main`` for every case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "worker-tmp"
        self.cache = root / "worker-cache"
        self.log = root / "worker.log"
        for p in (self.tmp, self.cache):
            p.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""
        self.starts = 0
        self.maxrss_kib = 0
        self.home = root / "worker-home"
        self.home.mkdir(parents=True, exist_ok=True)
        #: what importing the backend leaves in TMPDIR (onnxruntime's telemetry writes .ses at import: see
        #: test_backend_import_writes_nothing); the per-case check is about what a command leaves behind
        self.import_leftovers: set[str] = set()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("EDGESEG_DEBUG", "PYTHONWARNINGS")}
        env.update(TMPDIR=str(self.tmp), EDGESEG_CACHE_DIR=str(self.cache), PYTHONDONTWRITEBYTECODE="1",
                   HOME=str(self.home))
        self.log_fh = open(self.log, "ab")  # noqa: SIM115  (held for the worker's life, closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(MEMORY_CAP)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log_fh, env=env, cwd=self.root)
        self.buf = b""
        self.starts += 1
        line = self._readline(120.0)
        assert line is not None and json.loads(line).get("ready"), f"fuzz worker did not start: {self.log_tail()}"
        self.import_leftovers |= set(os.listdir(self.tmp))

    def tmp_leftovers(self) -> list[str]:
        return sorted(set(os.listdir(self.tmp)) - self.import_leftovers)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _readline(self, timeout: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None  # the worker died
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
            self.log_fh.close()

    def call(self, argv: list[str], cwd: Path, timeout: float = CASE_TIMEOUT_S) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        res = Outcome(command=argv[0] if argv else "", argv=list(argv))
        req = {"cwd": str(cwd), "argv_hex": [os.fsencode(a).hex() for a in argv]}
        started = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            line = self._readline(timeout)
        except BrokenPipeError:
            line = None
        wall = time.monotonic() - started
        if line is None:
            code = self.proc.poll()
            if code is None:
                res.problems.append(f"TIMEOUT: still running after {timeout:.0f} s (worker killed)")
            else:
                res.problems.append(f"CRASH: the worker died (exit {code}; {self.log_tail()[-600:]!r})")
            res.seconds = wall
            self.stop()
            return res
        doc = json.loads(line)
        res.rc, res.stdout, res.stderr = doc["rc"], doc["stdout"], doc["stderr"]
        res.usage, res.escaped, res.seconds, res.maxrss_kib = doc["usage"], doc["escaped"], doc["seconds"], doc["maxrss_kib"]
        self.maxrss_kib = max(self.maxrss_kib, res.maxrss_kib)
        if res.seconds > timeout:
            res.problems.append(f"TIMEOUT: took {res.seconds:.1f} s, over the cap of {timeout:.0f} s")
        if res.maxrss_kib * 1024 > MEMORY_CAP:
            res.problems.append(f"MEMORY: worker peak RSS {res.maxrss_kib >> 10} MiB over the cap")
        return res


# ------------------------------------------------------------------------------------- file snapshots
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (links not followed): relative path -> (size, mtime_ns)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            out[os.path.relpath(p, root)] = (st_.st_size, st_.st_mtime_ns)
    return out


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# ------------------------------------------------------------------------------------------- tar bits
def _field(block: bytearray, offset: int, width: int, value: bytes) -> None:
    block[offset:offset + width] = value[:width].ljust(width, b"\x00")


def fix_checksum(block: bytes | bytearray) -> bytes:
    b = bytearray(block)
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\x00 " % (sum(b) & 0o777777)
    return bytes(b)


def raw_header(name: bytes | str, size: int | bytes, kind: bytes = b"0", *, magic: bytes = b"ustar\x0000",
               linkname: bytes = b"", prefix: bytes = b"") -> bytes:
    """A ustar header built by hand (any field value, the checksum made right)."""
    b = bytearray(512)
    _field(b, 0, 100, os.fsencode(name) if isinstance(name, str) else name)
    _field(b, 100, 8, b"0000644\x00")
    _field(b, 108, 8, b"0000000\x00")
    _field(b, 116, 8, b"0000000\x00")
    _field(b, 124, 12, size if isinstance(size, bytes) else b"%011o\x00" % size)
    _field(b, 136, 12, b"00000000000\x00")
    _field(b, 156, 1, kind)
    _field(b, 157, 100, linkname)
    _field(b, 257, 8, magic)
    _field(b, 345, 155, prefix)
    return fix_checksum(b)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def pax_block(records: bytes, name: str = "././@PaxHeader", size: int | None = None) -> bytes:
    return raw_header(name, len(records) if size is None else size, b"x") + pad(records)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def member_chunk(name: str, data: bytes) -> bytes:
    """One member exactly as ``edgeseg.bundle.pack`` writes it (PAX format tarfile header, data, padding)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + pad(data)


def tar_end(length: int) -> bytes:
    """tarfile's end of archive: two zero blocks, then zeros up to a multiple of the 10240-byte record."""
    end = length + 1024
    return bytes(1024 + (-end % tarfile.RECORDSIZE))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Base:
    """The real archives (unsigned and signed), their members, and a fast exact re-packer."""

    def __init__(self, root: Path) -> None:
        dist = root / "dist"
        self.archive = edgeseg.build(target="cpu", out_dir=dist, report=lambda _l: None).archive
        kp = new_keypair(root / "keys")
        self.key = load_private_key(kp.private)
        self.signed = edgeseg.build(target="cpu", out_dir=root / "dist-signed", sign_key=kp.private,
                                    report=lambda _l: None).archive
        self.gz = self.archive.read_bytes()
        self.stream = gzip.decompress(self.gz)
        self.members = self._members(self.archive)
        self.signed_members = self._members(self.signed)
        self.manifest = json.loads(self.members[0][1])
        self.pipeline = json.loads(dict(self.members)["pipeline.json"])
        self.files = {n: {"sha256": sha256(d), "size": len(d)} for n, d in self.members if n != "manifest.json"}
        self.header_offsets = self._offsets(self.stream)
        self.stage = root / "stage"
        with tarfile.open(self.archive) as tar:
            tar.extractall(self.stage, filter="data")
        self.astronaut = dict(self.members)["golden/astronaut.png"]
        self._gz_cache: dict[tuple[str, str], bytes] = {}
        # the fast re-packer gives exactly pack()'s tar stream, and write_manifest()'s files table
        assert self.tar(self.members) == self.stream
        assert write_manifest(self.stage, {k: v for k, v in self.manifest.items() if k != "files"})["files"] == self.files
        assert gzip.decompress(pack(self.stage, root / "repacked.tar.gz").read_bytes()) == self.stream

    @staticmethod
    def _members(path: Path) -> list[tuple[str, bytes]]:
        with tarfile.open(path) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]

    @staticmethod
    def _offsets(stream: bytes) -> list[int]:
        with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
            return [m.offset for m in tar.getmembers()]

    def tar(self, members: list[tuple[str, bytes]]) -> bytes:
        body = b"".join(member_chunk(n, d) for n, d in members)
        return body + tar_end(len(body))

    def targz(self, members: list[tuple[str, bytes]]) -> bytes:
        """``members`` as pack() would write them, gzipped as concatenated gzip members (cached per file)."""
        parts, length = [], 0
        for name, data in members:
            key = (name, sha256(data))
            chunk = member_chunk(name, data)
            length += len(chunk)
            if key not in self._gz_cache:
                self._gz_cache[key] = gzip.compress(chunk, compresslevel=1, mtime=0)
            parts.append(self._gz_cache[key])
        parts.append(gzip.compress(tar_end(length), mtime=0))
        return b"".join(parts)

    def sign(self, manifest_bytes: bytes) -> bytes:
        return sign_bytes(manifest_bytes, self.key)


# ----------------------------------------------------------------------------------------- the harness
class Env:
    """Per-module state: the worker, the base archives and images, per-test figures."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.worker = Worker(root)
        self.base = Base(root)
        self.cases = root / "cases"
        self.cases.mkdir()
        self.n = 0
        self.stats: dict[str, dict[str, float]] = {}
        self.current = "setup"
        self.worker.start()

    @property
    def images(self) -> list[tuple[str, bytes, str]]:
        if not hasattr(self, "_images"):
            self._images = make_images()
        return self._images

    def example(self, now: bool = False) -> None:
        """A new case starts; it is counted once it reaches the CLI (Hypothesis also runs and drops invalid ones)."""
        self.pending = True
        if now:
            self._count_case()

    def _count_case(self) -> None:
        if getattr(self, "pending", False):
            self.stats.setdefault(self.current, {"cases": 0, "calls": 0, "seconds": 0.0})["cases"] += 1
            self.pending = False

    @contextlib.contextmanager
    def case(self) -> Iterator[Path]:
        self.n += 1
        folder = self.cases / f"c{self.n}"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def call(self, case: Path, *argv: str | Path, out: str | Path | None = None, timeout: float = CASE_TIMEOUT_S) -> Outcome:
        """Run one CLI call in the worker with cwd ``case``; note TMPDIR leftovers, a changed input or archive
        folder, and any new file outside ``out`` (relative to ``case``, or absolute)."""
        argv_s = [os.fspath(a) for a in argv]
        self._count_case()
        watched = [case, self.base.stage]
        inputs: set[str] = set()  # every file the command line names (or lists, for a folder): never to be written
        for i, arg in enumerate(argv_s[1:], start=1):
            if argv_s[i - 1] == "--out":  # the output folder is not an input: existing results there may be replaced
                continue
            with contextlib.suppress(OSError, ValueError):
                p = case / arg
                if p.is_dir():
                    inputs.update(os.path.realpath(c) for c in p.iterdir() if c.is_file())
                elif p.is_file():
                    inputs.add(os.path.realpath(p))
        before = [_snapshot(w) for w in watched]
        res = self.worker.call(argv_s, case, timeout)
        s = self.stats.setdefault(self.current, {"cases": 0, "calls": 0, "seconds": 0.0})
        s["calls"] += 1
        out_real = os.path.realpath(case / out) if out is not None else None

        def allowed(folder: Path, rel: str) -> bool:  # a result under --out that is not one of the inputs
            real = os.path.realpath(folder / rel)
            return out_real is not None and _under(real, out_real) and real not in inputs

        for folder, snap in zip(watched, before):
            after = _snapshot(folder)
            changed = sorted(k for k in snap.keys() & after.keys() if snap[k] != after[k] and not allowed(folder, k))
            gone = sorted(k for k in snap.keys() - after.keys() if not allowed(folder, k))
            new = sorted(k for k in after.keys() - snap.keys() if not allowed(folder, k))
            if changed or new or gone:
                res.problems.append(f"WROTE OUTSIDE --out (or changed an input) in {folder.name}: changed {changed[:5]}, "
                                    f"new {new[:5]}, removed {gone[:5]}")
        with contextlib.suppress(OSError):
            tmp_left = [p.name for p in (case / out).iterdir() if p.name.endswith(".tmp")] if out is not None else []
            if tmp_left:
                res.problems.append(f"LEFTOVER temporary files in --out: {tmp_left[:5]}")
        if TRACE:
            with open(TRACE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"test": self.current, "argv": argv_s, "rc": res.rc, "s": round(res.seconds, 3),
                                     "err": (res.stderr.strip().splitlines() or [""])[-1][:300],
                                     "out": (res.stdout.strip().splitlines() or [""])[0][:200]}) + "\n")
        left = self.worker.tmp_leftovers()
        if left:
            res.problems.append(f"TMPDIR LEFTOVER: {left[:5]}")
            for name in left:
                p = self.worker.tmp / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        return res




def _lines(text: str) -> list[str]:
    return text.splitlines()


def check(res: Outcome, *, allow_usage: bool = False, what: str = "") -> None:
    """The fuzz property (module docstring); raises AssertionError (or records the case with EDGESEG_FUZZ_COLLECT)."""
    problems = list(res.problems)
    err, out = _lines(res.stderr), _lines(res.stdout)
    cmd = res.command
    if res.escaped:
        problems.append(f"EXCEPTION escaped main(): {res.escaped.strip().splitlines()[-1]}")
    if "internal error" in res.stderr:
        problems.append("INTERNAL ERROR: " + next(line for line in err if "internal error" in line))
    if "Traceback (most recent call last)" in res.stderr + res.stdout:
        problems.append("TRACEBACK printed")
    if re.search(r"out of memory|not enough memory", res.stderr):
        problems.append("MEMORY cap reached: " + res.stderr.strip()[-200:])
    if res.rc is not None and not problems:
        if res.rc not in (0, 1, 2):
            problems.append(f"EXIT CODE {res.rc}")
        elif res.usage:
            if not allow_usage:
                problems.append("ARGPARSE exit where the arguments were valid")
            elif res.rc == 2 and not (err and re.match(r"edgeseg( \w+)?: error: ", err[-1])
                                      and all(line.startswith(("usage:", " ")) or not line.strip() for line in err[:-1])):
                problems.append("USAGE ERROR not in argparse's usage + one error line form")
        elif res.rc != 0:
            errors = [line for line in err if not line.startswith("skipped: ")]
            if cmd == "info" and res.rc == 1:
                if "signature INVALID" not in res.stdout or res.stderr:
                    problems.append("info exit 1 without 'signature INVALID'")
            elif cmd == "verify" and res.rc == 1 and not res.stderr:
                verdict = out[0] if len(out) == 1 else ""
                if verdict.startswith("{") or (out and out[0].startswith("{")):
                    try:
                        verdict = json.loads(res.stdout)["verdict"]
                    except (ValueError, KeyError, TypeError):
                        verdict = ""
                if not verdict.startswith("FAIL: "):
                    problems.append(f"verify exit 1: stdout is not one FAIL line ({len(out)} lines)")
            elif cmd in ("run", "measure", "bench") and res.rc == 1:
                if not err or errors:
                    problems.append(f"{cmd} exit 1: stderr is not only 'skipped:' lines ({len(err)} lines)")
            else:
                if len(errors) != 1 or not errors[0].startswith("edgeseg: error: ") or (err and err[-1] != errors[0]):
                    problems.append(f"exit {res.rc}: stderr is not one 'edgeseg: error:' line ({len(err)} lines)")
                if cmd in ("info", "verify") and res.stdout:
                    problems.append(f"exit {res.rc}: {cmd} also printed {len(out)} lines on stdout")
        elif res.rc == 0 and cmd in ("verify",) and not (res.stdout.startswith("PASS") or res.stdout.startswith("{")):
            problems.append("verify exit 0 without PASS")
    if not problems:
        return
    record = {"what": what, "problems": problems, "argv": res.argv, "rc": res.rc, "stderr": res.stderr[-2000:],
              "stdout": res.stdout[:1000], "seconds": round(res.seconds, 3)}
    if COLLECT:
        with open(COLLECT, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        return
    raise AssertionError(f"{'; '.join(problems)}\n{what}\n{res.brief()}")


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
    started = time.perf_counter()
    e = Env(tmp_path_factory.mktemp("fuzz"))
    e.stats["setup"] = {"cases": 0, "calls": 0, "seconds": time.perf_counter() - started}
    yield e
    e.worker.stop()
    leftovers = e.worker.tmp_leftovers()
    _summary(request, e)
    assert not leftovers, f"TMPDIR of the fuzz session is not empty at the end: {leftovers[:10]}"
    assert not list(e.worker.cache.iterdir()), "the runtime wrote into EDGESEG_CACHE_DIR"


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    if "env" not in request.fixturenames:
        yield
        return
    e: Env = request.getfixturevalue("env")
    e.current = request.node.name
    s = e.stats.setdefault(e.current, {"cases": 0, "calls": 0, "seconds": 0.0})
    started = time.perf_counter()
    try:
        yield
    finally:
        s["seconds"] += time.perf_counter() - started


def _summary(request: pytest.FixtureRequest, e: Env) -> None:
    rows = [f"{'fuzz test':<48} {'cases':>6} {'calls':>6} {'seconds':>8} {'cases/s':>8}"]
    total_cases = total_calls = 0
    total_s = 0.0
    for name, s in e.stats.items():
        rate = s["cases"] / s["seconds"] if s["seconds"] and s["cases"] else 0.0
        rows.append(f"{name[:48]:<48} {int(s['cases']):>6} {int(s['calls']):>6} {s['seconds']:>8.1f} {rate:>8.1f}")
        total_cases += int(s["cases"])
        total_calls += int(s["calls"])
        total_s += s["seconds"]
    rows.append(f"{'total':<48} {total_cases:>6} {total_calls:>6} {total_s:>8.1f} "
                f"{(total_cases / total_s if total_s else 0):>8.1f}")
    rows.append(f"worker peak RSS {e.worker.maxrss_kib >> 10} MiB (cap {MEMORY_CAP >> 20} MiB, RLIMIT_AS); "
                f"worker starts {e.worker.starts}; scale {SCALE:g}")
    text = "\n".join(["", "edgeseg fuzz figures", *rows])
    if REPORT:
        Path(REPORT).write_text(json.dumps({"tests": e.stats, "total_cases": total_cases, "total_calls": total_calls,
                                            "seconds": total_s, "peak_rss_mib": e.worker.maxrss_kib >> 10}, indent=2))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(text, flush=True)


# ------------------------------------------------------------------------------------ byte mutations
def byte_ops(hot: list[int] | None = None, hot_span: int = 512, max_ops: int = 4) -> st.SearchStrategy[list[tuple]]:
    """Flip / set / insert / delete / truncate operations; positions are fractions or hot-spot offsets."""
    anywhere = st.floats(0, 1, exclude_max=True).map(lambda f: ("frac", f))
    pos = anywhere if not hot else st.one_of(
        anywhere, st.tuples(st.sampled_from(hot), st.integers(0, hot_span - 1)).map(lambda t: ("abs", t[0] + t[1])))
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("set"), pos, st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x20, 0x30, 0x37, 0x39]) | st.integers(0, 255)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), pos, st.integers(1, 1024)),
        st.tuples(st.just("truncate"), pos, st.just(0)),
    )
    return st.lists(op, min_size=1, max_size=max_ops)


def apply_bytes(data: bytes, ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for kind, (how, where), arg in ops:
        if not b:
            break
        i = int(where * len(b)) if how == "frac" else min(where, len(b) - 1)
        if kind == "flip":
            b[i] ^= 1 << arg
        elif kind == "set":
            b[i] = arg
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i:i + arg]
        else:
            del b[i:]
    return bytes(b)


def fix_all_checksums(stream: bytes) -> bytes:
    """Make every 512-aligned block that looks like a ustar header carry a right checksum."""
    b = bytearray(stream)
    for off in range(0, len(b) - 511, 512):
        if b[off + 257:off + 262] == b"ustar":
            b[off:off + 512] = fix_checksum(b[off:off + 512])
    return bytes(b)


def archive_checks(env: Env, case: Path, data: bytes, what: str, name: str = "a.tar.gz",
                   commands: tuple[str, ...] = ("info", "verify")) -> None:
    path = case / name
    path.write_bytes(data)
    for cmd in commands:
        if cmd == "run":
            (case / "in.png").write_bytes(env.base.astronaut)
            check(env.call(case, "run", name, "in.png", "--out", "out", out="out"), what=what)
            shutil.rmtree(case / "out", ignore_errors=True)
        else:
            check(env.call(case, cmd, name), what=what)


# ----------------------------------------------------------------------------------- a) tar streams
@fuzz(100)
@given(data=st.data())
def test_fuzz_targz_bytes(env: Env, data: st.DataObject) -> None:
    """Byte mutations of the real .tar.gz (gzip header, deflate data, CRC32/ISIZE trailer): info, verify."""
    env.example()
    gz = env.base.gz
    ops = data.draw(byte_ops(hot=[0, len(gz) - 24], hot_span=24), label="ops")
    with env.case() as case:
        archive_checks(env, case, apply_bytes(gz, ops), f"gz byte ops {ops}")


@fuzz(100)
@given(data=st.data())
def test_fuzz_tar_stream_bytes(env: Env, data: st.DataObject) -> None:
    """Byte mutations of the decompressed tar stream (headers hit on purpose), re-gzipped: info, verify."""
    env.example()
    b = env.base
    ops = data.draw(byte_ops(hot=b.header_offsets, hot_span=512), label="ops")
    fix = data.draw(st.booleans(), label="fix header checksums")
    gz = data.draw(st.sampled_from([True, True, True, False]), label="gzip (else plain .tar)")
    stream = apply_bytes(b.stream, ops)
    if fix:
        stream = fix_all_checksums(stream)
    payload = gzip.compress(stream, compresslevel=1, mtime=0) if gz else stream
    with env.case() as case:
        archive_checks(env, case, payload, f"tar stream ops {ops} fix={fix} gz={gz}", "a.tar.gz" if gz else "a.tar")


SIZE_FIELDS = [b"%011o\x00", b"%o", b"%012o", b" %o ", b"0%o\x00\x00\x00"]
ODD_SIZE_FIELDS = [b"\xff" * 12, b"\x80" + b"\x00" * 10 + b"\x01", b"\xff" + b"\xff" * 10 + b"\xfe", b"-1", b"-0000000001",
                   b"77777777777\x00", b"777777777777", b"99999999999\x00", b"0x10", b" " * 12, b"\x00" * 12, b"1e3",
                   b"0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", b"\x80" + b"\x00" * 7 + b"\xc0" + b"\x00" * 3]
ODD_NAMES = ["../escape.txt", "/etc/escape.txt", "golden/../../escape.txt", "./end2end.onnx", "end2end.onnx/",
             "golden\\astronaut.png", "", "manifest.json", "manifest.sig", "golden", "golden/", "runtime",
             "x" * 100, "a/" * 40 + "b", "é.png", "a\nb", "end2end.onnx\x00trailing", ".", "..", "//", "golden//rocket.png"]
KINDS = [b"0", b"\x00", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"g", b"x", b"X", b"L", b"K", b"S", b"V", b"D", b"M", b"N", b"A"]


def pax_records() -> st.SearchStrategy[bytes]:
    rec = st.one_of(
        st.sampled_from(["path", "size", "linkpath", "GNU.sparse.major", "GNU.sparse.map", "GNU.sparse.size", "mtime",
                         "uid", "uname", "hdrcharset", "comment", "SCHILY.xattr.user.x"])
        .flatmap(lambda k: st.tuples(st.just(k), st.sampled_from(
            ["end2end.onnx", "../x", "/abs", "0", "-1", "1" * 19, "99999999999999999", "1e3", " 5", "٣", "", "a=b",
             "manifest.json", "pipeline.json", "x" * 300, "0,0"]))).map(lambda kv: pax_record(*kv)),
        st.binary(max_size=40),
        st.sampled_from([b"5 a=b\n", b"0 a=b\n", b"3 a=\n", b"99 path=x\n", b"4 =\n", b"18446744073709551616 x=y\n",
                         b"12 path=\xff\xfe\n", b"10path=abc\n", b"9 path=ab", b" 9 path=a\n", b"\x00\x00"]),
    )
    return st.lists(rec, min_size=1, max_size=4).map(b"".join)


@fuzz(120)
@given(data=st.data())
def test_fuzz_tar_headers(env: Env, data: st.DataObject) -> None:
    """Structural tar mutations: header fields (size, type, name, magic, prefix), pax headers, member order."""
    env.example()
    b = env.base
    chunks = [bytearray(member_chunk(n, d)) for n, d in b.members]  # one chunk per member (header + data)
    for _ in range(data.draw(st.integers(1, 3), label="n ops")):
        i = data.draw(st.integers(0, len(chunks) - 1) | st.sampled_from([0, 1, len(chunks) - 1]), label="member")
        op = data.draw(st.sampled_from(["size", "kind", "name", "magic", "prefix", "pax", "swap", "dup", "drop",
                                        "extra", "linkname", "mode"]), label="op")
        c = chunks[i]
        try:
            size = int(tarfile.nti(bytes(c[124:136])))
        except (ValueError, tarfile.HeaderError):
            size = 0
        if op == "size":
            form = data.draw(st.sampled_from(["delta", "odd"]), label="size form")
            if form == "delta":
                new = max(0, size + data.draw(st.sampled_from([-1, 1, -512, 512, 10**6, -size, 2**33]), label="delta"))
                _field(c, 124, 12, data.draw(st.sampled_from(SIZE_FIELDS), label="fmt") % new)
            else:
                _field(c, 124, 12, data.draw(st.sampled_from(ODD_SIZE_FIELDS), label="field"))
        elif op == "kind":
            _field(c, 156, 1, data.draw(st.sampled_from(KINDS), label="kind"))
        elif op == "name":
            name = data.draw(st.sampled_from(ODD_NAMES) | st.sampled_from([n for n, _ in b.members]), label="name")
            _field(c, 0, 100, os.fsencode(name) if name != "x" * 100 else b"x" * 100)
        elif op == "magic":
            _field(c, 257, 8, data.draw(st.sampled_from([b"ustar  \x00", b"ustar\x00\x00\x00", b"ustar\x0001", b"USTAR\x0000",
                                                        b"\x00" * 8, b"ustar"]), label="magic"))
        elif op == "prefix":
            _field(c, 345, 155, os.fsencode(data.draw(st.sampled_from(["..", "/", "golden", "a" * 155, "runtime/x", "\xe9"]),
                                                      label="prefix")))
        elif op == "linkname":
            _field(c, 157, 100, b"/etc/passwd")
        elif op == "mode":
            _field(c, 100, 8, data.draw(st.sampled_from([b"4755", b"7777\x00", b"zzzz", b"\xff" * 8]), label="mode"))
        elif op == "pax":
            recs = data.draw(pax_records(), label="pax records")
            lie = data.draw(st.sampled_from([None, 0, 1, 65536, 65537, 10**9]), label="pax size field")
            kind = data.draw(st.sampled_from([b"x", b"g", b"X"]), label="pax kind")
            blk = bytearray(pax_block(recs, size=lie))
            blk[156] = kind[0]
            chunks.insert(i, bytearray(fix_checksum(blk[:512]) + blk[512:]))
            continue
        elif op == "swap":
            j = data.draw(st.integers(0, len(chunks) - 1), label="swap with")
            chunks[i], chunks[j] = chunks[j], chunks[i]
            continue
        elif op == "dup":
            chunks.insert(i, bytearray(c))
            continue
        elif op == "drop":
            if len(chunks) > 1:
                del chunks[i]
            continue
        elif op == "extra":
            name = data.draw(st.sampled_from(ODD_NAMES + ["evil.py", "golden/extra.png", "runtime/x.pth"]), label="extra name")
            kind = data.draw(st.sampled_from([b"0", b"5", b"2", b"1", b"6", b"3"]), label="extra kind")
            body = data.draw(st.sampled_from([b"", b"x", b"A" * 600]), label="extra data") if kind == b"0" else b""
            chunks.insert(i, bytearray(raw_header(name, len(body), kind, linkname=b"/etc/passwd" if kind in b"12" else b"")
                                       + pad(body)))
            continue
        if data.draw(st.integers(0, 4), label="fix checksum (4: no)") != 4:
            c[0:512] = fix_checksum(c[0:512])
    body = b"".join(bytes(c) for c in chunks)
    stream = body + tar_end(len(body))
    with env.case() as case:
        archive_checks(env, case, gzip.compress(stream, compresslevel=1, mtime=0), "tar header mutations (see draws)")


# -------------------------------------------------------------------------------- JSON mutations
ODD_NUMBERS = [0, -1, 1, 2, 3, 255, 256, -(2**31), 2**31 - 1, 2**32, 2**50, 2**50 + 1, 2**53 + 1, 2**63, 10**18 - 1,
               10**18, 10**19, -(10**19), 8192, 8193, 65536, 65537, 1e-320, 1e308, 0.5, -0.0, 1.5, 255.0, 256.0,
               float("nan"), float("inf"), float("-inf")]
HOSTILE_STRINGS = ["", " ", "../escape.txt", "/etc/passwd", "golden\\astronaut.png", "./end2end.onnx", "golden/../end2end.onnx",
                   "golden", "golden/", "runtime", "a//b", "x" * 300, "\u00e9/\u00fc.png", "a\nb", "a\x00b", "manifest.json",
                   "manifest.sig", "d/" * 20 + "f", "\u0662.0.0", "2.0.0\n", "1" * 5001, "\udcff", "\ufeff", "NaN", "null",
                   "\u202e", "end2end.onnx ", "C:\\x", "~/x", "$HOME", "%s%s%n", "{}", "[]", "0", "-1", "true"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(ODD_NUMBERS), st.floats(),
                      st.text(max_size=12), st.sampled_from(HOSTILE_STRINGS))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=10)


def draw_path(data: st.DataObject, doc: Any, label: str) -> tuple:
    """A random path into ``doc`` (descending one level at a time, stopping at random)."""
    path: list[Any] = []
    node = doc
    while isinstance(node, (dict, list)) and node and (not path or data.draw(st.integers(0, 3), label=f"{label} deeper") != 0):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))), label=label)
        path.append(key)
        node = node[key]
    return tuple(path)


def get_in(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def set_in(doc: Any, path: tuple, value: Any) -> None:
    get_in(doc, path[:-1])[path[-1]] = value


def retype(value: Any, kind: str) -> Any:
    """``value`` turned into another JSON type (str<->int<->list<->dict<->null<->bool<->float)."""
    return {"str": lambda v: json.dumps(v)[:80] if not isinstance(v, str) else v + "x", "int": lambda v: len(str(v)),
            "list": lambda v: [v], "dict": lambda v: {"value": v}, "null": lambda v: None, "bool": lambda v: not bool(v),
            "float": lambda v: float(len(str(v))) + 0.5}[kind](value)


def generic_json_op(data: st.DataObject, doc: Any, label: str) -> str:
    """One structural mutation anywhere in ``doc``; returns a description."""
    path = draw_path(data, doc, label)
    if not path:
        return "none"
    op = data.draw(st.sampled_from(["delete", "retype", "replace", "number", "nest", "long", "dup", "empty", "add_key"]),
                   label=f"{label} op")
    old = get_in(doc, path)
    if op == "delete":
        parent = get_in(doc, path[:-1])
        del parent[path[-1]]
    elif op == "retype":
        set_in(doc, path, retype(old, data.draw(st.sampled_from(["str", "int", "list", "dict", "null", "bool", "float"]),
                                                label="to type")))
    elif op == "replace":
        set_in(doc, path, data.draw(json_any, label="value"))
    elif op == "number":
        set_in(doc, path, data.draw(st.sampled_from(ODD_NUMBERS), label="number"))
    elif op == "nest":
        depth = data.draw(st.sampled_from([2, 30, 31, 32, 33, 40, 200, 2000]), label="depth")
        value: Any = old
        for _ in range(depth):
            value = [value]
        set_in(doc, path, value)
    elif op == "long":
        set_in(doc, path, data.draw(st.sampled_from(["A" * 1025, "B" * 4097, "C" * 70_000, "\u00e9" * 600]), label="long"))
    elif op == "dup" and isinstance(old, list):
        old.extend(old[:1] * data.draw(st.sampled_from([1, 2, 100]), label="copies"))
    elif op == "empty":
        set_in(doc, path, type(old)() if isinstance(old, (list, dict, str)) else 0)
    elif op == "add_key" and isinstance(old, dict):
        old[data.draw(st.sampled_from(["", "x", "files", "../k", "__proto__", "\u00e9"]), label="key")] = data.draw(json_any,
                                                                                                               label="v")
    return f"{op} at {list(path)[:8]}"


def dumps(doc: Any, **kw: Any) -> bytes:
    """JSON bytes of a mutated document (NaN/Infinity written as Python does, for the runtime to refuse; deep
    nesting allowed past the recursion limit)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))
    try:
        return (json.dumps(doc, allow_nan=True, **kw) + "\n").encode("utf-8", "surrogatepass")
    finally:
        sys.setrecursionlimit(limit)


def dumps_like_write_manifest(doc: Any) -> bytes:
    """``edgeseg.bundle.write_manifest``'s serialisation."""
    return dumps(doc, indent=2, sort_keys=True)


def text_op(data: st.DataObject, raw: bytes) -> bytes:
    """A text-level mutation of a serialised JSON document."""
    op = data.draw(st.sampled_from(["bytes", "bom", "trailing", "dup_key", "truncate", "utf16", "comment"]), label="text op")
    if op == "bytes":
        return apply_bytes(raw, data.draw(byte_ops(max_ops=3), label="json byte ops"))
    if op == "bom":
        return b"\xef\xbb\xbf" + raw
    if op == "trailing":
        return raw + data.draw(st.sampled_from([b"{}", b"x", b"\x00", b"\n\n", b"[1]", b"\xff"]), label="tail")
    if op == "dup_key":
        return raw.replace(b"{", b'{\n  "schema_version": 2,', 1)
    if op == "truncate":
        return raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut")]
    if op == "utf16":
        return raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    return b"// comment\n" + raw


# ------------------------------------------------------------------------------ b) manifest.json
MANIFEST_TARGETED = ["files_entry", "unlisted_member", "path", "lying_size", "bad_sha", "variants", "palette",
                     "golden_missing", "classes", "schema", "release", "tensor", "tolerance", "backend_name",
                     "backend_options", "runtime", "target_name", "deploy"]


def manifest_op(data: st.DataObject, doc: dict, extra: list[tuple[str, bytes]], base: Base) -> str:
    op = data.draw(st.sampled_from(MANIFEST_TARGETED), label="manifest op")
    files = doc.get("files") if isinstance(doc.get("files"), dict) else None
    names = sorted(base.files)
    if op == "files_entry" and files is not None:
        body = data.draw(st.sampled_from([b"", b"evil", b"print('pwned')\n"]), label="body")
        name = data.draw(st.sampled_from(["evil.py", "golden/x.png", "runtime/edgeseg_runtime/sitecustomize.py", "x/y/z",
                                          "end2end.onnx/x", "MODEL_LICENSE/sub"] + HOSTILE_STRINGS[:12]), label="name")
        files[name] = {"sha256": sha256(body), "size": len(body)}
        if data.draw(st.booleans(), label="also add the member"):
            extra.append((name, body))
    elif op == "unlisted_member":
        extra.append((data.draw(st.sampled_from(["evil.py", "golden/zz.png", "aaa", "runtime/edgeseg_runtime/x.pth"]),
                                label="member"), b"unlisted"))
    elif op == "path":
        where = data.draw(st.sampled_from([("backend", "net"), ("backend", "weights"), ("golden", 0, "image"),
                                           ("golden", 1, "output"), ("golden", 2, "labels"), ("runtime", "wheels"),
                                           ("backend", "variants"), ("files-key",)]), label="where")
        value = data.draw(st.sampled_from(HOSTILE_STRINGS[:20] + names), label="path value")
        if where == ("runtime", "wheels"):
            if isinstance(doc.get("runtime"), dict):
                doc["runtime"]["wheels"] = [value]
        elif where == ("backend", "variants") and isinstance(doc.get("backend"), dict):
            doc["backend"]["variants"] = [{"shape": [256, 256], "net": value}]
        elif where == ("files-key",) and files is not None:
            old = data.draw(st.sampled_from(names), label="renamed")
            if old in files:
                files[value] = files.pop(old)
        else:
            with contextlib.suppress(KeyError, IndexError, TypeError):
                set_in(doc, where, value)
    elif op == "lying_size" and files is not None:
        name = data.draw(st.sampled_from(names), label="file")
        if isinstance(files.get(name), dict):
            size = base.files[name]["size"]
            files[name]["size"] = data.draw(st.sampled_from([size - 1, size + 1, 0, 2**50, 2**40, -1, 2**33, size * 2]),
                                            label="size")
    elif op == "bad_sha" and files is not None:
        name = data.draw(st.sampled_from(names), label="file")
        if isinstance(files.get(name), dict):
            files[name]["sha256"] = data.draw(st.sampled_from([sha256(b""), "0" * 64, base.files[name]["sha256"].upper(),
                                                               base.files[name]["sha256"][:63], "g" * 64]), label="sha")
    elif op == "variants":
        hw = data.draw(st.lists(st.sampled_from([0, 1, 2, 255, 256, 257, -1, 8192, 8193, "256", 256.0, None]),
                                min_size=2, max_size=2) | st.sampled_from([[], [256], [256, 256, 256]]), label="shape")
        with contextlib.suppress(KeyError, TypeError):
            if data.draw(st.booleans(), label="model.input.variants (else backend.variants)"):
                doc["model"]["input"]["variants"] = [hw]
            else:
                doc["backend"]["variants"] = [{"shape": hw, "net": "end2end.onnx"}]
    elif op == "palette":
        with contextlib.suppress(KeyError, TypeError, IndexError):
            pal = doc["model"]["palette"]
            form = data.draw(st.sampled_from(["value", "entry", "empty", "long", "short"]), label="palette form")
            if form == "value":
                pal[data.draw(st.integers(0, 1), label="i")][data.draw(st.integers(0, 2), label="j")] = data.draw(
                    st.sampled_from([256, -1, 1e3, 255.5, "255", None, True, 2**63]), label="channel")
            elif form == "entry":
                pal[0] = data.draw(st.sampled_from([[0, 0], [0, 0, 0, 0], "red", {}, None, []]), label="entry")
            elif form == "empty":
                doc["model"]["palette"] = []
            elif form == "long":
                doc["model"]["palette"] = [[1, 2, 3]] * 70_000
            else:
                doc["model"]["palette"] = pal[:1]
    elif op == "golden_missing":
        with contextlib.suppress(KeyError, TypeError, IndexError):
            field_ = data.draw(st.sampled_from(["image", "output", "labels"]), label="golden field")
            value = data.draw(st.sampled_from(["golden/missing.png", "MODEL_LICENSE", "end2end.onnx", "pipeline.json",
                                               "golden/astronaut.labels.png", "runtime", "golden"]), label="points to")
            doc["golden"][data.draw(st.integers(0, 2), label="golden i")][field_] = value
            if value == "golden/missing.png" and files is not None and data.draw(st.booleans(), label="list it"):
                files[value] = {"sha256": sha256(b"x"), "size": 1}
            if data.draw(st.booleans(), label="empty golden list"):
                doc["golden"] = []
    elif op == "classes":
        n = data.draw(st.sampled_from([0, 1, 3, 256, 257, 65536, 65537]), label="n classes")
        with contextlib.suppress(KeyError, TypeError):
            doc["model"]["classes"] = [f"c{i}" for i in range(n)]
            if data.draw(st.booleans(), label="output channels follow"):
                doc["model"]["output"]["shape"][1] = n
    elif op == "schema":
        doc["schema_version"] = data.draw(st.sampled_from([0, 2, "1", 1.0, True, None, -1, 10**18, [1]]), label="schema")
    elif op == "release":
        with contextlib.suppress(TypeError):
            doc["release"]["version"] = data.draw(st.sampled_from(
                ["2.0.0\n", "\u0662.0.0", "1" * 5001, "1.2.3.4.5.6.7.8.9", "01.0", "1.0.0-rc1", "", "1..0", " 1.0",
                 "1" * 10, 1, 1.0, None, ["1"], "1.0.0\x00"]), label="version")
    elif op == "tensor":
        with contextlib.suppress(KeyError, TypeError, IndexError):
            t = doc["model"][data.draw(st.sampled_from(["input", "output"]), label="tensor")]
            key = data.draw(st.sampled_from(["shape", "dtype", "layout", "kind", "name"]), label="tensor key")
            t[key] = data.draw(st.sampled_from({
                "shape": [[1, 3, 0, 256], [1, 3, -1, 256], [1, 3, "h", "w"], [1, 3, 256], [1, 3, 2**20 + 1, 1],
                          [1, 3, 128, 128], [2, 3, 256, 256], [1, 1, 256, 256], [1, 3, "../x", 256], [1, 3, "", 256]],
                "dtype": ["float64", "uint8", "int64", "", None, "float16"],
                "layout": ["NHWC", "nchw", None], "kind": ["labels", "logits", None, ""],
                "name": ["", "nope", "x" * 257, None, "input", "output"]}[key]), label="tensor value")
    elif op == "tolerance":
        with contextlib.suppress(KeyError, TypeError):
            doc["target"]["tolerance"][data.draw(st.sampled_from(["atol", "rtol", "min_label_agreement"]), label="tol")] = \
                data.draw(st.sampled_from([-1, 0, 1, 2, 1e7, "0.1", None, float("nan"), True]), label="tol value")
    elif op == "backend_name":
        with contextlib.suppress(KeyError, TypeError):
            doc["backend"]["name"] = data.draw(st.sampled_from(["openvino", "tensorrt", "ncnn", "coreml", "tflite", "torch",
                                                                "", None, "ONNXRUNTIME"]), label="backend")
    elif op == "backend_options":
        with contextlib.suppress(KeyError, TypeError):
            doc["target"]["backend_options"] = {data.draw(st.sampled_from(["intra_op_num_threads", "providers", "x"]),
                                                          label="option"):
                                                data.draw(st.sampled_from([-1, 0, 1, 4096, 10**6, 2**31, "4", 4.5, True,
                                                                           None, [], ["CUDAExecutionProvider"], "abc",
                                                                           ["CPUExecutionProvider", 5], {}]), label="opt")}
    elif op == "runtime":
        with contextlib.suppress(KeyError, TypeError):
            doc["runtime"][data.draw(st.sampled_from(["requirements", "version", "wheels"]), label="runtime key")] = \
                data.draw(st.sampled_from([["numpy; os_name=='nt'"], ["x" * 2000], [], "numpy", None, [1],
                                           ["-e ."], ["pip install x && rm -rf /"]]), label="runtime value")
    elif op == "target_name":
        with contextlib.suppress(KeyError, TypeError):
            doc["target"][data.draw(st.sampled_from(["name", "precision", "platform", "description"]), label="target key")] = \
                data.draw(st.sampled_from(["", "CPU", "../x", "int4", None, {}, "x" * 5000, "a\nb"]), label="target value")
    elif op == "deploy":
        with contextlib.suppress(KeyError, TypeError):
            doc["target"]["deploy"] = data.draw(st.sampled_from([
                {"latency_budget_ms": 0}, {"latency_budget_ms": -1}, {"keep_releases": 0}, {"keep_releases": 10**6},
                None, "x", {"latency_budget_ms": float("inf")}]), label="deploy")
    return op


def _sorted_members(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return sorted(members, key=lambda m: m[0])


@fuzz(150)
@given(data=st.data())
def test_fuzz_manifest(env: Env, data: st.DataObject) -> None:
    """Structural mutations of manifest.json in an otherwise real archive, files table recomputed or not:
    info, verify, run; unsigned, with the stale signature, or re-signed (a valid signature on a hostile manifest)."""
    env.example()
    b = env.base
    doc = copy.deepcopy(b.manifest)
    extra: list[tuple[str, bytes]] = []
    ops = []
    for _ in range(data.draw(st.integers(1, 3), label="n ops")):
        if data.draw(st.integers(0, 4), label="targeted (0-2) or generic") >= 3:
            ops.append(generic_json_op(data, doc, "manifest path"))
        else:
            ops.append(manifest_op(data, doc, extra, b))
    recompute = data.draw(st.booleans(), label="recompute files table")
    if recompute and isinstance(doc, dict):
        doc["files"] = {**b.files, **{n: {"sha256": sha256(d), "size": len(d)} for n, d in extra
                                      if n not in ("manifest.json", "manifest.sig")}}
    raw = dumps_like_write_manifest(doc)
    if data.draw(st.integers(0, 9), label="text op (9)") == 9:
        raw = text_op(data, raw)
        ops.append("text")
    signing = data.draw(st.sampled_from(["unsigned", "unsigned", "stale", "resigned"]), label="signature")
    members = [m for m in b.members[1:]]
    members = _sorted_members([m for m in members if m[0] not in dict(extra)] + extra)
    head = [("manifest.json", raw)]
    if signing == "stale":
        head.append(("manifest.sig", dict(b.signed_members)["manifest.sig"]))
    elif signing == "resigned":
        head.append(("manifest.sig", b.sign(raw)))
    with env.case() as case:
        archive_checks(env, case, b.targz(head + members), f"manifest ops {ops} recompute={recompute} {signing}",
                       commands=("info", "verify", "run"))


SIG_VALUES = [b"abc", b"", b"{}", b"null", b"[" * 5000, b"\xff\xfe", b'{"algorithm": "ed25519"}', b"x" * 5000]


@fuzz(45)
@given(data=st.data())
def test_fuzz_signature(env: Env, data: st.DataObject) -> None:
    """manifest.sig mutated (bytes, JSON structure, key id, public key) in the signed archive: info, verify."""
    env.example()
    b = env.base
    manifest = b.signed_members[0][1]
    good = json.loads(dict(b.signed_members)["manifest.sig"])
    form = data.draw(st.sampled_from(["raw", "json", "bytes", "other_manifest"]), label="form")
    if form == "raw":
        sig = data.draw(st.sampled_from(SIG_VALUES) | st.binary(max_size=200), label="sig bytes")
    elif form == "json":
        doc = copy.deepcopy(good)
        for _ in range(data.draw(st.integers(1, 2), label="n")):
            if data.draw(st.booleans(), label="targeted"):
                key = data.draw(st.sampled_from(["algorithm", "key_id", "public_key", "signature"]), label="key")
                doc[key] = data.draw(st.sampled_from([
                    None, "", "RSA", "0" * 16, "0" * 15, good["key_id"].upper(), base64.b64encode(b"\0" * 32).decode(),
                    base64.b64encode(b"\0" * 64).decode(), base64.b64encode(b"\0" * 63).decode(), "!!!!", "====", 5, [],
                    good["signature"][:-4] + "AAAA", good["public_key"][:-4] + "AAA=", {"a": 1}]), label="sig value")
            else:
                generic_json_op(data, doc, "sig path")
        sig = dumps(doc)
    elif form == "bytes":
        sig = apply_bytes(dict(b.signed_members)["manifest.sig"], data.draw(byte_ops(max_ops=2), label="sig ops"))
    else:
        sig = b.sign(b"another manifest")
    members = [("manifest.json", manifest), ("manifest.sig", sig)] + [m for m in b.signed_members[2:]]
    if data.draw(st.integers(0, 5), label="second sig (5)") == 5:
        members.insert(2, ("manifest.sig", sig))
    with env.case() as case:
        archive_checks(env, case, b.targz(members), f"signature {form}: {sig[:80]!r}")
        if not (case / "a.tar.gz").exists():
            return
        res = env.call(case, "info", "a.tar.gz", "--json")
        check(res, what=f"info --json, signature {form}")
        if res.rc == 0 and "signature valid" in res.stdout:
            # a signature said valid must be the original one: same Ed25519 signature and public key bytes
            try:
                doc = json.loads(sig)
                same = (base64.b64decode(doc["signature"]) == base64.b64decode(good["signature"])
                        and base64.b64decode(doc["public_key"]) == base64.b64decode(good["public_key"]))
            except (ValueError, KeyError, TypeError):
                same = False
            assert same, f"info calls a changed manifest.sig valid: {sig[:300]!r}"


# ------------------------------------------------------------------------------ c) pipeline.json
def pipeline_op(data: st.DataObject, doc: Any) -> str:
    op = data.draw(st.sampled_from(["resize", "keep_ratio", "normalize", "to_rgb", "tasks_string", "drop_resizemask",
                                    "num_classes", "with_argmax", "transforms", "drop_transform", "no_pipeline", "order",
                                    "garbage"]), label="pipeline op")
    try:
        tasks = doc["pipeline"]["tasks"]
        transforms = tasks[0]["transforms"]
        resize = next(t for t in transforms if t.get("type") == "Resize")
        norm = next(t for t in transforms if t.get("type") == "Normalize")
        post = tasks[2]["params"]
    except (KeyError, TypeError, IndexError, StopIteration, AttributeError):
        return "skipped (structure already broken)"
    if op == "resize":
        resize["size"] = data.draw(st.sampled_from([[0, 256], [-1, 256], [256, 0], [8192, 8192], [8193, 1], [10**6, 10**6],
                                                    ["256", "256"], [256], [256, 256, 256], "256", None, [256.0, 256.0],
                                                    [True, 256], [4096, 4097], [1, 1], [255, 256], [2**63, 1]]), label="size")
    elif op == "keep_ratio":
        resize["keep_ratio"] = data.draw(st.sampled_from([True, "false", 0, None, []]), label="keep_ratio")
    elif op == "normalize":
        key = data.draw(st.sampled_from(["mean", "std"]), label="key")
        norm[key] = data.draw(st.sampled_from([[0, 0], [1, 2, 3, 4], [0, 0, 0], [1e-7] * 3, [1e-6] * 3, [1e6] * 3, [-1e6] * 3,
                                               [float("nan")] * 3, "abc", None, [[1], [2], [3]], [True, 1, 1], [1e300] * 3,
                                               ["1", "1", "1"]]), label="value")
    elif op == "to_rgb":
        norm["to_rgb"] = data.draw(st.sampled_from([False, "true", 1, None]), label="to_rgb")
    elif op == "tasks_string":
        doc["pipeline"]["tasks"] = data.draw(st.sampled_from(["Transform", "", 5, None, {}, [[]], ["x"]]), label="tasks")
    elif op == "drop_resizemask":
        if data.draw(st.booleans(), label="delete (else rename)"):
            del tasks[2]
        else:
            tasks[2]["component"] = "ResizeMask2"
    elif op == "num_classes":
        post["num_classes"] = data.draw(st.sampled_from([0, 1, 3, 256, 65536, 65537, -1, "2", 2.0, True, None]), label="n")
    elif op == "with_argmax":
        post["with_argmax"] = data.draw(st.sampled_from([True, "false", None, 0]), label="with_argmax")
    elif op == "transforms":
        tasks[0]["transforms"] = data.draw(st.sampled_from([
            "Resize", [], [{"type": 5}], [{}], transforms + [dict(resize, size=[128, 128])], [norm, resize],
            transforms + [dict(norm, std=[0, 0, 0])], [{"type": "Resize", "size": [256, 256]}] * 65]), label="transforms")
    elif op == "drop_transform":
        tasks[0]["module"] = data.draw(st.sampled_from(["Net", "transform", None]), label="module")
    elif op == "no_pipeline":
        doc.pop("pipeline")
    elif op == "order":
        tasks.reverse()
    return op


@fuzz(80)
@given(data=st.data())
def test_fuzz_pipeline(env: Env, data: st.DataObject) -> None:
    """Structural mutations of pipeline.json with the files table recomputed: info, verify, run (--overlay --probs)."""
    env.example()
    b = env.base
    doc = copy.deepcopy(b.pipeline)
    ops = []
    for _ in range(data.draw(st.integers(1, 2), label="n ops")):
        if data.draw(st.integers(0, 3), label="targeted (0-2) or generic") == 3:
            ops.append(generic_json_op(data, doc, "pipeline path"))
        else:
            ops.append(pipeline_op(data, doc))
    raw = dumps(doc, indent=2)
    form = data.draw(st.sampled_from(["json"] * 8 + ["text", "garbage", "missing"]), label="form")
    if form == "text":
        raw = text_op(data, raw)
    elif form == "garbage":
        raw = data.draw(st.binary(max_size=300), label="garbage")
    manifest = copy.deepcopy(b.manifest)
    members = [m for m in b.members[1:] if m[0] != "pipeline.json"]
    if form != "missing":
        members = _sorted_members(members + [("pipeline.json", raw)])
        manifest["files"]["pipeline.json"] = {"sha256": sha256(raw), "size": len(raw)}
    else:
        manifest["files"].pop("pipeline.json")
    archive = b.targz([("manifest.json", dumps_like_write_manifest(manifest))] + members)
    flags = data.draw(st.sampled_from([[], ["--overlay"], ["--probs"], ["--overlay", "--probs"]]), label="run flags")
    with env.case() as case:
        what = f"pipeline ops {ops} form={form}"
        archive_checks(env, case, archive, what, commands=("info", "verify"))
        (case / "in.png").write_bytes(b.astronaut)
        check(env.call(case, "run", "a.tar.gz", "in.png", "--out", "out", *flags, out="out"),
              what=what)


# ------------------------------------------------------------------------------------ d) images
def _psd(rgb: np.ndarray) -> bytes:
    """A minimal Photoshop file (3 channels, raw), for a PSD named .png (Adobe PSD file format spec, header section)."""
    h, w, _ = rgb.shape
    head = b"8BPS" + struct.pack(">H", 1) + bytes(6) + struct.pack(">HIIHH", 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
    return head + struct.pack(">H", 0) + rgb.transpose(2, 0, 1).tobytes()


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_images() -> list[tuple[str, bytes, str]]:
    """Real photos (scikit-image) in every format and pixel mode the runtime meets: (label, bytes, suffix)."""
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    photo = {n: Image.fromarray(getattr(skdata, n)()) for n in ("astronaut", "camera", "coffee", "chelsea", "rocket")}
    small = {n: im.resize((48, 36) if im.width >= im.height else (36, 48)) for n, im in photo.items()}
    rgb, grey, coffee, cat, rocket = (small[n] for n in ("astronaut", "camera", "coffee", "chelsea", "rocket"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    rgba = coffee.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(coffee.size))
    out = [
        ("png-rgb", _save(rgb, "PNG"), ".png"), ("png-l", _save(grey, "PNG"), ".png"),
        ("png-p", _save(rgb.convert("P"), "PNG"), ".png"), ("png-rgba", _save(rgba, "PNG"), ".png"),
        ("png-la", _save(grey.convert("LA"), "PNG"), ".png"), ("png-1", _save(grey.convert("1"), "PNG"), ".png"),
        ("png-i16", _save(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"), ".png"),
        ("png-p-trns", _save(coffee.convert("P"), "PNG", transparency=0), ".png"),
        ("png-exif", _save(rocket, "PNG", exif=exif), ".png"),
        ("jpeg", _save(rgb, "JPEG", quality=90), ".jpg"), ("jpeg-prog", _save(cat, "JPEG", progressive=True), ".jpeg"),
        ("jpeg-l", _save(grey, "JPEG"), ".jpg"), ("jpeg-cmyk", _save(cat.convert("CMYK"), "JPEG"), ".jpg"),
        ("jpeg-exif", _save(rocket, "JPEG", exif=exif), ".jpg"),
        ("gif", _save(rgb, "GIF"), ".gif"),
        ("gif-anim", _save(coffee.convert("P"), "GIF", save_all=True, append_images=[cat.resize(coffee.size).convert("P")]),
         ".gif"),
        ("tiff", _save(rgb, "TIFF"), ".tif"), ("tiff-lzw", _save(cat, "TIFF", compression="tiff_lzw"), ".tiff"),
        ("tiff-deflate", _save(rgba, "TIFF", compression="tiff_adobe_deflate"), ".tif"),
        ("tiff-jpeg", _save(rgb, "TIFF", compression="jpeg"), ".tif"),
        ("tiff-g4", _save(grey.convert("1"), "TIFF", compression="group4"), ".tif"),
        ("tiff-f", _save(Image.fromarray(np.asarray(grey).astype(np.float32) / 255), "TIFF"), ".tif"),
        ("tiff-i32", _save(Image.fromarray(np.asarray(grey).astype(np.int32) * 1000 - 70000), "TIFF"), ".tif"),
        ("tiff-i16", _save(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "TIFF"), ".tif"),
        ("tiff-cmyk", _save(cat.convert("CMYK"), "TIFF"), ".tif"),
        ("tiff-multi", _save(rgb, "TIFF", save_all=True, append_images=[cat.resize(rgb.size)]), ".tif"),
        ("tiff-exif", _save(rocket, "TIFF", exif=exif), ".tif"),
        ("bmp", _save(rgb, "BMP"), ".bmp"), ("bmp-p", _save(rgb.convert("P"), "BMP"), ".bmp"),
        ("bmp-1", _save(grey.convert("1"), "BMP"), ".bmp"),
        ("webp", _save(rgb, "WEBP", quality=80), ".webp"), ("webp-lossless", _save(rgba, "WEBP", lossless=True), ".webp"),
        ("webp-exif", _save(rocket, "WEBP", exif=exif), ".webp"),
        ("webp-anim", _save(rgb, "WEBP", save_all=True, append_images=[cat.resize(rgb.size)]), ".webp"),
        ("ppm", _save(rgb, "PPM"), ".ppm"), ("pgm", _save(grey, "PPM"), ".pgm"),
        ("png-full", _save(photo["astronaut"], "PNG"), ".png"), ("jpeg-full", _save(photo["coffee"], "JPEG"), ".jpg"),
        # other formats under an image's name: refused without reaching their decoders
        ("eps-as-png", _save(rgb, "EPS"), ".png"), ("psd-as-png", _psd(np.asarray(rgb)), ".png"),
        ("ico-as-png", _save(rgb, "ICO"), ".png"), ("tga-as-jpg", _save(rgb, "TGA"), ".jpg"),
        ("pcx-as-png", _save(rgb, "PCX"), ".png"), ("pdf-as-png", _save(rgb, "PDF"), ".png"),
        ("xbm-as-png", _save(grey.convert("1"), "XBM"), ".png"),
        ("svg-as-png", b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>', ".png"),
        ("empty", b"", ".png"), ("text", b"hello\n", ".jpg"),
    ]
    return out


DIMS = [0, 1, 2, 7, 48, 1000, 9000, 65535, 100_000, 2**31 - 1, 2**32 - 1]


def _tiff_dims(b: bytearray, w: int, h: int) -> None:
    """Set ImageWidth (256) and ImageLength (257) in a TIFF's first IFD (TIFF 6.0 section 2)."""
    end = "<" if b[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", b[4:8])
    (n,) = struct.unpack(end + "H", b[ifd:ifd + 2])
    for i in range(n):
        e = ifd + 2 + 12 * i
        tag, typ = struct.unpack(end + "HH", b[e:e + 4])
        if tag in (256, 257):
            v = (w if tag == 256 else h) & (0xFFFF if typ == 3 else 0xFFFFFFFF)
            b[e + 8:e + 12] = struct.pack(end + ("HH" if typ == 3 else "I"), *((v, 0) if typ == 3 else (v,)))


def set_dims(data: bytes, w: int, h: int) -> bytes:
    """A header claiming ``w`` x ``h`` pixels (PNG IHDR with its CRC, BMP, GIF, JPEG SOF, PNM, TIFF)."""
    b = bytearray(data)
    try:
        if data.startswith(b"\x89PNG"):
            b[16:24] = struct.pack(">II", w & 0xFFFFFFFF, h & 0xFFFFFFFF)
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        elif data[:2] == b"BM":
            b[18:26] = struct.pack("<ii", min(w, 2**31 - 1), min(h, 2**31 - 1))
        elif data[:4] == b"GIF8":
            b[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
            i = data.find(b"\x2c", 13)
            if i > 0:
                b[i + 5:i + 9] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
        elif data[:2] == b"\xff\xd8":
            i = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
            b[i + 5:i + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
        elif data[:2] in (b"P5", b"P6"):
            parts = data.split(b"\n", 3)
            b = bytearray(b"\n".join([parts[0], b"%d %d" % (w, h), parts[2], parts[3]]))
        elif data[:2] in (b"II", b"MM"):
            _tiff_dims(b, w, h)
    except (StopIteration, struct.error, IndexError):
        pass
    return bytes(b)


@fuzz(200)
@given(data=st.data())
def test_fuzz_images(env: Env, data: st.DataObject) -> None:
    """Real images in every format, byte-mutated, with lying headers, or random bytes: run (--overlay --probs)."""
    env.example()
    images = env.images
    n = data.draw(st.sampled_from([1, 1, 1, 2, 3]), label="images")
    files, notes = [], []
    with env.case() as case:
        (case / "in").mkdir()
        for k in range(n):
            label, raw, suffix = data.draw(st.sampled_from(images), label="base image")
            form = data.draw(st.sampled_from(["as is", "bytes", "bytes", "header", "dims", "truncate", "random"]),
                             label="mutation")
            if form == "bytes":
                raw = apply_bytes(raw, data.draw(byte_ops(max_ops=4), label="ops"))
            elif form == "header":
                raw = apply_bytes(raw, data.draw(byte_ops(hot=[0], hot_span=min(max(len(raw), 1), 512), max_ops=3),
                                                 label="header ops"))
            elif form == "dims":
                raw = set_dims(raw, data.draw(st.sampled_from(DIMS), label="w"), data.draw(st.sampled_from(DIMS), label="h"))
            elif form == "truncate":
                raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep")]
            elif form == "random":
                raw = data.draw(st.binary(max_size=2048), label="random bytes")
            if data.draw(st.integers(0, 5), label="rename (5)") == 5:
                suffix = data.draw(st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bmp", ".webp", ".ppm", ".PNG", ""]),
                                   label="suffix")
            name = f"img{k}{suffix}"
            (case / "in" / name).write_bytes(raw)
            files.append(f"in/{name}")
            notes.append(f"{label}/{form}")
        flags = data.draw(st.sampled_from([[], ["--overlay"], ["--probs"], ["--overlay", "--probs"]]), label="flags")
        if data.draw(st.integers(0, 5), label="max-pixels (5)") == 5:
            flags += ["--max-pixels", data.draw(st.sampled_from(["1", "100", "1728", "1000000"]), label="max")]
        inputs = ["in"] if data.draw(st.integers(0, 4), label="folder (4)") == 4 else files
        res = env.call(case, "run", env.base.stage, *inputs, "--out", "out", *flags, out="out")
        check(res, what=f"images {notes} flags {flags}")
        if res.rc == 0 and not res.problems:
            suffixes = [".png"] + (["_overlay.png"] if "--overlay" in flags else []) + (["_scores.npy"] if "--probs" in flags else [])
            names = sorted(f"{Path(f).stem}{s}" for f in files for s in suffixes if inputs == files or Path(f).suffix.lower()
                           in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif"))
            assert sorted(os.listdir(case / "out")) == names, (notes, os.listdir(case / "out"))


# ----------------------------------------------------------------------------------- e) arguments
RUNS = ["0", "1", "2", "-1", "3", "1e3", "0x10", "\u0663", " 2 ", "2_0", "", "nan", "9" * 20, "-0", "+2",
        "\u00bd", "1.5", "20"]
MAX_PIXELS = ["1", "0", "-5", "64000000", "1000000", "999999", "1e9", "abc", "", "100", "9" * 30, "2000", "100000000"]
ODD_INPUTS = ["-x.png", "sp ace.png", os.fsdecode(b"\xff\xfe.png"), "\u00e9.png", "x" * 250 + ".png", "a.PNG", ".hidden.png",
              "a.png.png", "noext", "in/a_overlay.png"]


def _cli_case(case: Path, base: Base, photo: bytes) -> None:
    (case / "in").mkdir()
    (case / "noimages").mkdir()
    (case / "noimages" / "notes.txt").write_text("x")
    for name in ["a.png", "a_overlay.png", "b.jpg", "a.jpg"]:
        (case / "in" / name).write_bytes(photo)
    for name in ODD_INPUTS:
        if "/" not in name:
            (case / name).write_bytes(photo)
    (case / "a.png").write_bytes(photo)
    (case / "file.txt").write_text("an existing file")
    (case / "A.tar.gz").write_bytes(base.gz)


@fuzz(120)
@given(data=st.data())
def test_fuzz_cli_args(env: Env, data: st.DataObject) -> None:
    """Odd --runs/--warmup/--max-pixels/--out values, clashing and odd input names, odd archive paths."""
    env.example()
    photo = {lbl: raw for lbl, raw, _ in env.images}["png-rgb"]
    cmd = data.draw(st.sampled_from(["run", "run", "run", "measure", "bench", "info", "verify"]), label="command")
    archive = data.draw(st.sampled_from(["A.tar.gz"] * 6 + [str(env.base.stage), "", ".", "in/a.png", "missing.tar.gz",
                                                             "/dev/null", "in", "file.txt", "-"]), label="archive")
    argv = [cmd, archive]
    out = data.draw(st.sampled_from(["out", "out", "out", ".", "in", "in/", "", "a.png", "file.txt", "file.txt/sub",
                                     "out/../out2", "x" * 300, "deep/er/out", "/dev/null", "noimages", "\u00e9",
                                     os.fsdecode(b"\xff")]), label="out")
    pool = ["in/a.png", "in/a_overlay.png", "in/b.jpg", "in/a.jpg", "in", "a.png", "missing.png", "noimages", ".",
            "file.txt"] + ODD_INPUTS
    if cmd in ("run", "measure"):
        argv += data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3), label="inputs")
        argv += ["--out", out]
    if cmd == "run":
        argv += data.draw(st.sampled_from([[], ["--overlay"], ["--probs"], ["--overlay", "--probs"]]), label="flags")
        if data.draw(st.booleans(), label="--max-pixels"):
            argv += ["--max-pixels", data.draw(st.sampled_from(MAX_PIXELS), label="max")]
    if cmd in ("measure", "bench"):
        for opt in ("--runs", "--warmup"):
            if data.draw(st.booleans(), label=opt):
                argv += [opt, data.draw(st.sampled_from(RUNS), label=f"{opt} value")]
        if cmd == "bench" and data.draw(st.booleans(), label="bench image"):
            argv.append(data.draw(st.sampled_from(pool), label="bench image"))
        if cmd == "measure" and data.draw(st.booleans(), label="--no-scores"):
            argv.append("--no-scores")
    if cmd in ("info", "verify", "bench") and data.draw(st.booleans(), label="--json"):
        argv.append("--json")
    if data.draw(st.integers(0, 9), label="bogus argument (9)") == 9:
        argv.append(data.draw(st.sampled_from(["--bogus", "extra", "--out", "-"]), label="bogus"))
    with env.case() as case:
        _cli_case(case, env.base, photo)
        out_allowed = out if cmd in ("run", "measure") else None
        res = env.call(case, *argv, out=out_allowed)
        check(res, allow_usage=True, what=f"cli args {argv}")


# ------------------------------------------------------------------------------- regression cases
def _targz(*chunks: bytes) -> bytes:
    body = b"".join(chunks)
    return gzip.compress(body + tar_end(len(body)), compresslevel=1, mtime=0)


def _manifest_chunk(base: Base, raw: bytes | None = None) -> bytes:
    return member_chunk("manifest.json", base.members[0][1] if raw is None else raw)


def _refused_fast(env: Env, data: bytes, name: str = "a.tar.gz", limit: float = FAST_S,
                  expect: str = "", commands: tuple[str, ...] = ("info", "verify")) -> list[Outcome]:
    """Both commands refuse the archive in one line (info: exit 2, verify: FAIL) within ``limit`` seconds."""
    results = []
    with env.case() as case:
        (case / name).write_bytes(data)
        for cmd in commands:
            res = env.call(case, cmd, name)
            check(res, what=f"regression {name}")
            assert res.rc == (2 if cmd == "info" else 1), res.brief()
            assert res.seconds < limit, f"{cmd} took {res.seconds:.2f} s (limit {limit} s)"
            assert expect in res.stderr + res.stdout, res.brief()
            results.append(res)
    return results


@pytest.mark.parametrize("where", ["first", "after-manifest"])
@pytest.mark.parametrize("field", [b"\xff" * 12, b"\xff" * 11 + b"\xfe", b"\x80" + b"\xff" * 11, b"-1"],
                         ids=["base256-minus-1", "base256-minus-2", "base256-positive-huge", "ascii-minus-1"])
def test_negative_member_size_is_refused_fast(env: Env, where: str, field: bytes) -> None:
    """CVE-2025-8194: a negative (base-256) member size makes CPython's tarfile loop forever."""
    env.example()
    evil = raw_header("end2end.onnx", field) + bytes(512)
    chunks = [evil] if where == "first" else [_manifest_chunk(env.base), evil]
    _refused_fast(env, _targz(*chunks))


@pytest.mark.parametrize("records", [
    b"529 " + b"x" * 524 + b"\n",  # one 529-byte record with no '='
    b"1 " * 264 + b"\n",  # 529 bytes of 1-byte records (old tarfile regex backtracking)
    (b"9" * 8 + b" ") * 58 + b"xxxxxxx",  # 529 bytes of length fields pointing past the end
    b"0" * 529,
    b"%d path=" % 529 + b"a" * 515 + b"\n",
    b"9" * 65536,  # the largest pax header accepted, all digits
    b"1 " * 32768,
    pax_record("GNU.sparse.map", "0,1," * 5000),
], ids=["529-no-eq", "529-tiny-records", "529-long-lengths", "529-zeros", "529-path", "64k-digits", "64k-records",
        "sparse"])
def test_crafted_pax_header_is_refused_fast(env: Env, records: bytes) -> None:
    """CVE-2024-6232: crafted pax headers take quadratic time in CPython's tarfile; refused in linear time."""
    env.example()
    _refused_fast(env, _targz(_manifest_chunk(env.base), pax_block(records), raw_header("end2end.onnx", 1) + pad(b"x")))


def test_100k_empty_members(env: Env) -> None:
    """100,000 empty members after the manifest, as unlisted files or as (accepted) parent folders."""
    env.example()
    unlisted = raw_header("e/0", 0) * 100_000
    _refused_fast(env, _targz(_manifest_chunk(env.base), unlisted), expect="not listed in the manifest")
    folders = raw_header("golden", 0, b"5") * 100_000
    rest = b"".join(member_chunk(n, d) for n, d in env.base.members[1:])
    with env.case() as case:
        (case / "dirs.tar.gz").write_bytes(_targz(_manifest_chunk(env.base), folders, rest))
        res = env.call(case, "info", "dirs.tar.gz")
        check(res, what="100k folder members")
        assert res.seconds < CASE_TIMEOUT_S
    many = copy.deepcopy(env.base.manifest)
    many["files"].update({f"e/{i}": {"sha256": sha256(b""), "size": 0} for i in range(100_000)})
    _refused_fast(env, _targz(_manifest_chunk(env.base, dumps_like_write_manifest(many))), expect="over the limit")


@pytest.mark.parametrize("compressed", [False, True], ids=["tar-sparse-3GB", "targz-header-only"])
def test_unlisted_3gb_member_is_refused_at_its_header(env: Env, compressed: bool) -> None:
    """A 3 GB unlisted member is refused at its header: nothing of it is written (TMPDIR stays small)."""
    env.example()
    size = 3 << 30
    with env.case() as case:
        path = case / ("big.tar.gz" if compressed else "big.tar")
        head = _manifest_chunk(env.base) + raw_header("big.bin", size)
        if compressed:
            path.write_bytes(gzip.compress(head, mtime=0))
        else:
            with open(path, "wb") as fh:  # a sparse file: 3 GB of zeros that take no disk
                fh.write(head)
                fh.truncate(len(head) + size + 1024)
        peak, done = [0], threading.Event()

        def sample() -> None:  # the size of TMPDIR while the command runs
            while not done.is_set():
                with contextlib.suppress(OSError):
                    peak[0] = max(peak[0], sum(f.stat().st_size for f in env.worker.tmp.rglob("*") if f.is_file()))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            res = env.call(case, "info", path.name)
        finally:
            done.set()
            sampler.join()
        check(res, what="3 GB member")
        assert res.rc == 2 and "not listed in the manifest" in res.stderr and "nothing of it" in res.stderr, res.brief()
        assert res.seconds < FAST_S
        assert peak[0] < 1 << 20, f"TMPDIR held {peak[0]:,} bytes while the command ran"


@pytest.mark.parametrize("doc", ["manifest", "pipeline", "signature"])
@pytest.mark.parametrize("depth", [33, 100_000])
def test_deeply_nested_json(env: Env, doc: str, depth: int) -> None:
    """JSON nested past the 32-level limit (and past the recursion limit) is refused in one line."""
    env.example()
    b = env.base
    nested = "[" * depth + "]" * depth
    if doc == "manifest":
        raw = b.members[0][1].replace(b'"schema_version": 1', b'"deep": ' + nested.encode() + b', "schema_version": 1')
        members = [("manifest.json", raw)] + b.members[1:]
    elif doc == "pipeline":
        raw = ('{"deep": ' + nested + ', ' + json.dumps(b.pipeline)[1:]).encode()
        manifest = copy.deepcopy(b.manifest)
        manifest["files"]["pipeline.json"] = {"sha256": sha256(raw), "size": len(raw)}
        members = [("manifest.json", dumps_like_write_manifest(manifest))] + _sorted_members(
            [m for m in b.members[1:] if m[0] != "pipeline.json"] + [("pipeline.json", raw)])
    else:
        members = [b.signed_members[0], ("manifest.sig", nested.encode())] + b.signed_members[2:]
    with env.case() as case:
        (case / "a.tar.gz").write_bytes(b.targz(members))
        for cmd in ("info", "verify"):
            res = env.call(case, cmd, "a.tar.gz")
            check(res, what=f"{depth}-deep {doc}")
            assert res.rc != 0 and res.seconds < FAST_S, res.brief()
            if doc == "signature":
                assert "signature INVALID" in res.stdout, res.brief()


@pytest.mark.parametrize("version", ["1" * 5001, "2.0.0\n", "\u0662.0.0", "1.0.0\x00", 1, "1" * 10],
                         ids=["5001-digits", "newline", "arabic-indic-2", "nul", "int", "10-digit-part"])
def test_odd_release_versions_are_refused(env: Env, version: Any) -> None:
    """Release versions that are not ASCII dotted numbers (README: full match only) are refused in one line."""
    env.example()
    doc = copy.deepcopy(env.base.manifest)
    doc["release"]["version"] = version
    res = _refused_fast(env, env.base.targz([("manifest.json", dumps_like_write_manifest(doc))] + env.base.members[1:]),
                        expect="release version")
    assert all(len(r.stderr + r.stdout) < 1000 for r in res), "the refusal line quotes the whole value"


def test_5001_digit_integer_is_refused(env: Env) -> None:
    """A 5001-digit JSON integer (CPython int parsing is quadratic; 3.11 raises past 4300 digits) is refused."""
    env.example()
    raw = env.base.members[0][1].replace(b'"schema_version": 1', b'"schema_version": ' + b"1" * 5001)
    _refused_fast(env, env.base.targz([("manifest.json", raw)] + env.base.members[1:]), expect="digits")


def test_3_byte_signature_is_invalid(env: Env) -> None:
    """A 3-byte manifest.sig: info says 'signature INVALID' and exits non-zero; verify FAILs."""
    env.example()
    b = env.base
    members = [b.signed_members[0], ("manifest.sig", b"abc")] + b.signed_members[2:]
    with env.case() as case:
        (case / "a.tar.gz").write_bytes(b.targz(members))
        info = env.call(case, "info", "a.tar.gz")
        check(info, what="3-byte signature")
        assert info.rc == 1 and "signature INVALID" in info.stdout, info.brief()
        verify = env.call(case, "verify", "a.tar.gz")
        check(verify, what="3-byte signature")
        assert verify.rc == 1 and verify.stdout.startswith("FAIL: ") and "signature INVALID" in verify.stdout


def test_max_pixels_accepts_the_documented_default(env: Env) -> None:
    """--max-pixels takes its own default (64000000, README and --help) and larger values ('raise --max-pixels')."""
    env.example()
    with env.case() as case:
        (case / "in.png").write_bytes(env.base.astronaut)
        for value in ("64000000", "100000000"):
            res = env.call(case, "run", env.base.stage, "in.png", "--out", f"out{value}", "--max-pixels",
                           value, out=f"out{value}")
            check(res, allow_usage=True, what=f"--max-pixels {value}")
            assert res.rc == 0 and not res.usage, res.brief()


def test_backend_import_writes_nothing(env: Env, tmp_path: Path) -> None:
    """A command writes nothing outside --out: importing the backend must not write into TMPDIR or HOME
    (onnxruntime 1.32 writes telemetry state, $TMPDIR/.ses and ~/.cache/Microsoft/DeveloperTools/.onnxruntime/,
    at import unless ORT_DISABLE_TELEMETRY=1)."""
    env.example(now=True)
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    home.mkdir()
    child_env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    child_env.update(TMPDIR=str(tmp), HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "edgeseg_runtime", "info", str(env.base.archive)],
                          check=False, capture_output=True, text=True, env=child_env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert not written, f"'edgeseg info' wrote {written}"


# ------------------------------------------------------------- minimised cases the fuzzers found
def test_decoder_warnings_stay_off_stderr(env: Env) -> None:
    """An 8-byte TIFF header: one 'skipped:' line, not Pillow's 'UserWarning: Corrupt EXIF data' + source line too."""
    env.example()
    with env.case() as case:
        (case / "t.tif").write_bytes(b"II*\x00\x08\x00\x00\x00")
        res = env.call(case, "run", env.base.stage, "t.tif", "--out", "out", out="out")
        check(res, what="8-byte TIFF")
        assert res.rc == 1 and res.stderr.count("\n") == 1, res.brief()


@pytest.mark.parametrize("command", ["run", "measure", "info"])
def test_non_utf8_file_name(env: Env, command: str) -> None:
    """A file name that is not UTF-8 (bytes 0xff 0xfe: a camera card, an old share) with stdout in a UTF-8 locale
    (errors='strict', as Python sets it outside the C/POSIX locale): the command works and says so, no
    'internal error (UnicodeEncodeError)'."""
    env.example()
    name = os.fsdecode(b"\xff\xfe.png")
    with env.case() as case:
        if command == "info":
            archive = os.fsdecode(b"\xff\xfe.tar.gz")
            (case / archive).write_bytes(env.base.gz)
            res = env.call(case, "info", archive)
        else:
            (case / name).write_bytes(env.base.astronaut)
            res = env.call(case, command, env.base.stage, name, "--out", "out",
                           *(["--runs", "1"] if command == "measure" else []), out="out")
        check(res, what=f"non-UTF-8 file name ({command})")
        assert res.rc == 0, res.brief()


@pytest.mark.parametrize("out", ["file.txt", "file.txt/sub", "/dev/null", "x" * 300],
                         ids=["file", "under-a-file", "dev-null", "name-over-255-bytes"])
@pytest.mark.parametrize("command", ["run", "measure"])
def test_out_that_cannot_be_a_folder(env: Env, command: str, out: str) -> None:
    """--out naming a file, a path under one, or a name over NAME_MAX: one 'edgeseg: error:' line, not
    'internal error (FileExistsError / NotADirectoryError / OSError: File name too long)'."""
    env.example()
    with env.case() as case:
        (case / "a.png").write_bytes(env.base.astronaut)
        (case / "file.txt").write_text("x")
        res = env.call(case, command, env.base.stage, "a.png", "--out", out,
                       *(["--runs", "1"] if command == "measure" else []), out=out)
        check(res, what=f"{command} --out {out}")
        assert res.rc == 2, res.brief()


def test_measure_never_overwrites_an_input(env: Env) -> None:
    """measure --out the input folder: a.png must not be replaced by its own label map (run refuses this)."""
    env.example()
    with env.case() as case:
        (case / "in").mkdir()
        (case / "in" / "a.png").write_bytes(env.base.astronaut)
        res = env.call(case, "measure", env.base.stage, "in/a.png", "--out", "in", "--runs", "1", out="in")
        check(res, what="measure --out the input folder")
        assert (case / "in" / "a.png").read_bytes() == env.base.astronaut, "measure overwrote its input in/a.png"


@pytest.mark.parametrize("field_", ["image", "output", "labels"])
@pytest.mark.parametrize("target", ["golden", "runtime", "MODEL_LICENSE"])
def test_golden_entry_naming_a_folder_or_another_file(env: Env, field_: str, target: str) -> None:
    """golden[0].<field> naming a folder of the archive ('golden', 'runtime': accepted as 'listed' because files
    lie under it) or an unrelated file: verify FAILs in one line, not 'internal error (KeyError: ...)'."""
    env.example()
    doc = copy.deepcopy(env.base.manifest)
    doc["golden"][0][field_] = target
    with env.case() as case:
        (case / "a.tar.gz").write_bytes(env.base.targz([("manifest.json", dumps_like_write_manifest(doc))]
                                                       + env.base.members[1:]))
        res = env.call(case, "verify", "a.tar.gz")
        check(res, what=f"golden[0].{field_} = {target!r}")
        assert res.rc == 1, res.brief()
