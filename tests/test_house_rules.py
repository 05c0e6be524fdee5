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
EXTRA_OF_MODULE = {"signing.py": {"cryptography"}, "engine.py": {"cuda"}}


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
