"""DESIGN.md house rules 1 and 2: a minimal runtime, and an importable host package without backends."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edgeseg_runtime

RUNTIME = Path(edgeseg_runtime.__file__).parent
STDLIB = set(sys.stdlib_module_names)
BACKEND_OF_RUNNER = {"onnxruntime.py": {"onnxruntime"}, "openvino.py": {"openvino"}, "tensorrt.py": {"tensorrt"},
                     "coreml.py": {"coremltools"}}
#: the on-device installer checks Ed25519 signatures with cryptography (imported only there, lazily);
#: the TensorRT engine builder takes CUDA memory from cuda-python
EXTRA_OF_MODULE = {"signing.py": {"cryptography"}, "engine.py": {"cuda"}, "stream.py": {"av"}}


def test_runtime_imports_only_stdlib_numpy_pillow_and_its_backend() -> None:
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        allowed = STDLIB | {"numpy", "PIL", "edgeseg_runtime"}
        if path.parent.name == "runners" and path.name in BACKEND_OF_RUNNER:
            allowed |= BACKEND_OF_RUNNER[path.name]
        if path.parent == RUNTIME and path.name in EXTRA_OF_MODULE:
            allowed |= EXTRA_OF_MODULE[path.name]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in allowed]
    assert offenders == []


BLOCKER = """
import sys, importlib.abc
BLOCKED = {"onnxruntime", "openvino", "torch", "onnx", "ncnn", "coremltools", "tensorrt", "fabric", "paramiko",
           "cryptography", "invoke"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by test)")
sys.meta_path.insert(0, Block())
"""


def test_import_edgeseg_without_any_backend(tmp_path: Path) -> None:
    code = BLOCKER + """
import edgeseg
assert not ({"onnxruntime", "openvino", "torch", "onnx", "fabric", "paramiko", "cryptography"} & set(sys.modules))
import edgeseg.cli, edgeseg.deploy  # the CLI and the deploy API import without SSH or crypto libraries
try:
    edgeseg.build(target="intel", out_dir=sys.argv[1], report=lambda _l: None)
except edgeseg.ToolchainError as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'edgeseg[openvino]'" in proc.stdout
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Layering (issue "One shape for every step and every backend", parts 2, 4, 5): typed manifest readers, a lazy
# package, no import cycles, tasks that call the API or the CLI.

HOST = Path(__file__).parents[1] / "edgeseg"
#: manifest sections read as raw JSON through Manifest's Mapping (report-only: no typed attribute)
REPORT_ONLY = {"quantization", "provenance", "toolchain", "build_check", "cross_build"}


def _is_manifest(node: ast.AST, bound: set[str]) -> bool:
    """``X.manifest``, ``Manifest.parse(...)``/``from_doc(...)``, a name bound to one, or its ``.doc``."""
    if isinstance(node, ast.Attribute) and node.attr == "doc":
        return _is_manifest(node.value, bound)
    if isinstance(node, ast.Attribute) and node.attr == "manifest":
        return True
    if isinstance(node, ast.Name):
        return node.id in bound
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("parse", "from_doc"):
        owner = node.func.value
        return (owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")) == "Manifest"
    return False


def _annotated_manifest(arg: ast.arg) -> bool:
    ann = arg.annotation
    text = ann.value if isinstance(ann, ast.Constant) else ast.unparse(ann) if ann is not None else ""
    return str(text).split(".")[-1] == "Manifest"


def manifest_key_reads(source: str) -> list[str]:
    """``line: key`` of every string-keyed read of a typed manifest section (``m["model"]``, ``m.get("files")``).

    Per function (and the module body): names bound to a manifest by assignment or a ``Manifest``
    annotation, then subscripts and ``.get`` calls on them (or on ``X.manifest`` directly) with a
    string key other than the report-only sections.
    """
    tree = ast.parse(source)
    scopes: list[ast.AST] = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    found = set()
    for scope in [tree, *scopes]:
        nodes = list(ast.walk(scope)) if scope is not tree else [
            n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for n in ast.walk(stmt)]
        bound = {a.arg for a in getattr(getattr(scope, "args", None), "args", []) if _annotated_manifest(a)}
        for _ in range(2):  # m = archive.manifest; n = m
            for n in nodes:
                if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and _is_manifest(n.value, bound):
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    bound |= {t.id for t in targets if isinstance(t, ast.Name)}
        for n in nodes:
            key, owner = None, None
            if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant):
                key, owner = n.slice.value, n.value
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and n.args
                  and isinstance(n.args[0], ast.Constant)):
                key, owner = n.args[0].value, n.func.value
            if isinstance(key, str) and key not in REPORT_ONLY and _is_manifest(owner, bound):
                found.add(f"{n.lineno}: {key}")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def test_manifest_key_check_is_precise() -> None:
    flagged = """
def f(archive, path):
    m = archive.manifest
    a = m["model"]["name"]
    b = archive.manifest["backend"]
    c = Manifest.parse(path.read_bytes())["files"]
    d = m.doc["target"]
    e = m.get("golden")
def g(manifest: Manifest):
    return manifest["runtime"]
"""
    assert manifest_key_reads(flagged) == ["4: model", "5: backend", "6: files", "7: target", "8: golden", "10: runtime"]
    clean = """
def f(archive, self):
    m = archive.manifest
    a = m["provenance"]["source_sha256"], m.doc.get("quantization"), m.model.name
    manifest = {"model": 1}
    manifest["runtime"] = 2
    b = manifest["model"], self.run["backend"]["version"]
"""
    assert manifest_key_reads(clean) == []


def test_typed_manifest_sections_are_read_as_attributes() -> None:
    """Only edgeseg_runtime/contract.py reads model/target/backend/files/golden/runtime/release by string key."""
    offenders = [
        f"{path.relative_to(HOST.parent)}:{hit}"
        for root in (HOST, RUNTIME)
        for path in sorted(root.rglob("*.py"))
        if path != RUNTIME / "contract.py"
        for hit in manifest_key_reads(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_import_edgeseg_is_lazy() -> None:
    code = """
import sys
import edgeseg
assert sorted(m for m in sys.modules if m.split(".")[0] == "edgeseg") == ["edgeseg", "edgeseg._version"], sys.modules
from edgeseg.build import BuildResult  # importing the submodule leaves edgeseg.build the function
assert callable(edgeseg.build) and edgeseg.BuildResult is BuildResult and "build_for_device" in dir(edgeseg)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _module_graph(root: Path) -> dict[str, set[str]]:
    """Module → modules it imports when it is imported (module-level statements; a.b.c imports a and a.b first)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in names}
    for mod, path in names.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
            for node in stmt.body if isinstance(stmt, ast.Try) else [stmt]:
                targets = []
                if isinstance(node, ast.ImportFrom):
                    base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                        if node.level else node.module or ""
                    targets = [base, *(f"{base}.{a.name}" for a in node.names)]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                for target in targets:
                    parts = target.split(".")
                    for i in range(1, len(parts) + 1):
                        dep = ".".join(parts[:i])
                        # an enclosing package is already being imported, unless it is what is imported from
                        if dep in graph and dep != mod and (i == len(parts) or not mod.startswith(dep + ".")):
                            graph[mod].add(dep)
    return graph


def test_no_import_cycles() -> None:
    for root in (HOST, RUNTIME):
        graph = _module_graph(root)
        cycles = []
        for start in graph:  # depth-first search for a path back to ``start``
            stack, seen = [(start, [start])], set()
            while stack:
                node, path = stack.pop()
                for dep in graph[node]:
                    if dep == start:
                        cycles.append(" -> ".join([*path, start]))
                    elif dep not in seen:
                        seen.add(dep)
                        stack.append((dep, [*path, dep]))
        assert cycles == [], cycles[:3]


def test_tasks_build_no_argparse_namespaces() -> None:
    tree = ast.parse((HOST.parent / "tasks.py").read_text(encoding="utf-8"))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "Namespace" not in names and "argparse" not in imports
