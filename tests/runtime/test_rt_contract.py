"""The installer's pure-stdlib parts on this interpreter: manifest contract, release versions, the agent, bytecode."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edgeseg_runtime import contract, install
from edgeseg_runtime.contract import Manifest
from edgeseg_runtime.errors import ArchiveError, EdgesegError


def test_manifest_parse_on_the_archive_manifest(shipped, manifest) -> None:
    raw = (shipped.unpacked / "manifest.json").read_bytes()
    again = Manifest.parse(raw, "manifest.json")
    assert again.name == manifest.name and again.release_version == manifest.release_version
    assert shipped.archive.name == f"{manifest.name}-{manifest.target.precision}.tar.gz"
    assert manifest.backend.requirement in manifest.runtime.requirements
    assert len(manifest.model.palette) >= len(manifest.model.classes) >= 2
    for golden in manifest.golden:
        assert {golden.image, golden.output, golden.labels} <= set(manifest.files)
    on_disk = {p.relative_to(shipped.unpacked).as_posix(): p.stat().st_size
               for p in shipped.unpacked.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == {rel: entry.size for rel, entry in manifest.files.items()}
    assert manifest.total_bytes == sum(on_disk.values())
    assert contract.parse_version(manifest.release_version) == install.parse_version(manifest.release_version)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return change


def _add_file(name: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["files"][name] = {"sha256": "0" * 64, "size": 1}
    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(("schema_version",), 2), "schema_version"),
        (_set(("schema_version",), True), "schema_version"),
        (_add_file("../escape.py"), "escapes the archive root"),
        (_add_file("runtime\\evil.py"), "backslashes"),
        (_set(("release", "version"), "2.0.0\n"), "not dotted numbers"),
        (_set(("release", "version"), "\u0662.0.0"), "not dotted numbers"),
    ],
    ids=["schema-2", "schema-true", "dotdot", "backslash", "version-newline", "version-arabic-digit"],
)
def test_manifest_parse_refuses(shipped, change, message: str) -> None:
    doc = json.loads((shipped.unpacked / "manifest.json").read_bytes())
    change(doc)
    with pytest.raises(ArchiveError, match=re.escape(message)):
        Manifest.parse(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"schema_version": NaN}', "not valid JSON"),
        (b'{"a": 1}{"b": 2}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"schema_version": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # bounded int parsing on every Python
        (b"[" * 5_000 + b"]" * 5_000, "nested"),
    ],
    ids=["nan", "two-documents", "not-utf8", "5000-digit-int", "deep"],
)
def test_manifest_parse_refuses_bad_json(data: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        Manifest.parse(data)


VALID = [("1.10.2", (1, 10, 2)), ("1.0.0", (1,)), ("0.10.14", (0, 10, 14)), ("7", (7,))]
INVALID = ["2.0.0\n", "\u0662.0.0", "1..2", "", "v1.0", " 1.0", "1.0 ", "1.-1", "+1"]


@pytest.mark.parametrize(("text", "parts"), VALID)
@pytest.mark.parametrize("parse", [contract.parse_version, install.parse_version], ids=["contract", "install"])
def test_parse_version_accepts(parse, text: str, parts: tuple[int, ...]) -> None:
    assert parse(text) == parts


@pytest.mark.parametrize(
    "parse",
    [pytest.param(contract.parse_version, id="contract"), pytest.param(install.parse_version, id="install")],
)
@pytest.mark.parametrize("text", INVALID, ids=[ascii(t) for t in INVALID])
def test_parse_version_refuses(parse, text: str) -> None:
    """One rule for the manifest and the installer: ``$`` would accept a final newline, ``\\d`` any Unicode digit."""
    try:
        got = parse(text)
    except EdgesegError:
        return
    pytest.fail(f"{parse.__module__}.parse_version({text!r}) accepted it as {got}")


BLOCKER = r"""
import importlib.abc, json, runpy, sys
BLOCKED = {"numpy", "PIL", "onnxruntime", "openvino", "ncnn", "tensorrt", "coremltools", "ai_edge_litert"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked: the installer runs before its dependencies)")
sys.meta_path.insert(0, Block())
from edgeseg_runtime.contract import Manifest, parse_version
from edgeseg_runtime.install import parse_version as install_version
m = Manifest.parse(open(sys.argv[1], "rb").read())
print(json.dumps({"name": m.name, "contract": parse_version(m.release_version),
                  "install": install_version(m.release_version)}))
sys.argv = ["edgeseg-agent", "--root", sys.argv[2], "state"]
runpy.run_module("edgeseg_runtime.agent", run_name="__main__")
"""


def test_agent_state_without_numpy_or_pillow(shipped, manifest, tmp_path: Path) -> None:
    """``python -m edgeseg_runtime.agent state`` (what a fresh device runs first) with numpy and Pillow absent."""
    import platform

    root = tmp_path / "root"
    for version in ("10.0", "2.0.0", "1.9"):
        (root / "releases" / version).mkdir(parents=True)
    proc = shipped.python("-c", BLOCKER, str(shipped.unpacked / "manifest.json"), str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, *_, last = proc.stdout.splitlines()
    parsed = json.loads(first)
    assert parsed["name"] == manifest.name
    assert tuple(parsed["contract"]) == tuple(parsed["install"]) == contract.parse_version(manifest.release_version)
    assert last.startswith("= ")
    state = json.loads(last[2:])
    assert state["python"] == platform.python_version() and state["arch"] == platform.machine()
    assert state["releases"] == ["1.9", "2.0.0", "10.0"]  # by version number, not by name
    assert state["current"] is None and state["store"] == [] and state["free_bytes"] > 0


def _requires_python(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        for line in zf.read(meta).decode("utf-8").splitlines():
            if line.startswith("Requires-Python:"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"{wheel.name}: no Requires-Python")


def _admits(spec: str, version: tuple[int, ...]) -> bool:
    ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
           "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    for clause in spec.split(","):
        m = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)\s*([0-9]+(?:\.[0-9]+)*)\s*", clause)
        assert m, f"Requires-Python clause {clause!r} is not one this test reads"
        bound = tuple(int(p) for p in m.group(2).split("."))
        if not ops[m.group(1)](version[: len(bound)], bound):
            return False
    return True


def test_the_runtime_wheel_admits_this_python(shipped) -> None:
    """The archive's runtime wheel says which Pythons it supports; this one must be among them."""
    wheels = list(shipped.runtime.glob("edgeseg_runtime-*.whl"))
    assert len(wheels) == 1, wheels
    spec = _requires_python(wheels[0])
    assert _admits(spec, tuple(sys.version_info[:3])), f"Requires-Python {spec} excludes {sys.version.split()[0]}"


@pytest.mark.extended
def test_compileall_of_the_runtime_sources(shipped, tmp_path: Path) -> None:
    """Every runtime module byte-compiles on this interpreter, without a warning (a copy: the archive stays clean)."""
    src = tmp_path / "edgeseg_runtime"
    shutil.copytree(shipped.runtime / "edgeseg_runtime", src)
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "compileall", "-q", str(src)],
                          capture_output=True, text=True, timeout=shipped.timeout, check=False)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr
    tag = sys.implementation.cache_tag
    sources = sorted(src.rglob("*.py"))
    assert len(sources) >= 20
    missing = [p.name for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").is_file()]
    assert missing == []
    assert not list((shipped.runtime / "edgeseg_runtime").rglob("__pycache__"))
