"""The backend contract (DESIGN.md house rule 3 and 9): one registry, one base class per side, declared
options and capabilities, errors that keep the tool's words, no import cycle, and one conformance test
that every backend installed here passes (convert -> run via its runner -> agree with fp32 ONNX Runtime).
"""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeseg
import edgeseg_runtime
from edgeseg import ConfigError, ConversionError, ToolchainError
from edgeseg.backends import BaseBackend, Capabilities, backend_class, get_backend, translate_errors
from edgeseg_runtime.runners import BACKEND_NAMES, REGISTRY, BaseRunner, Option, resolve, runner_class, tool_lines

HOST = Path(edgeseg.__file__).parent
RUNTIME = Path(edgeseg_runtime.__file__).parent
#: host modules in edgeseg/backends that are helpers, not backends
HOST_HELPERS = {"__init__", "onnx_torch", "unsupported"}
#: capabilities and optional runner/backend attributes: read as attributes, never with getattr(x, "name", default)
CAPABILITY_NAMES = {*Capabilities.__dataclass_fields__, "capabilities", "system_requirement", "constraints", "plan",
                    "OPTIONS", "quant_options", "requirement"}
#: files the lead engineer is rewriting; they still read capabilities with getattr until they switch (remove then)
PENDING_GETATTR: set[str] = set()
#: modules that still spell the list of backend names; they should read edgeseg_runtime.runners.BACKEND_NAMES
#: (contract.py: the manifest schema's backend choices; matrix.py: the support matrix's columns and their profiles)
PENDING_NAME_LISTS: set[str] = set()


def _modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of edgeseg and edgeseg_runtime."""
    for pkg, root in (("edgeseg", HOST), ("edgeseg_runtime", RUNTIME)):
        for path in sorted(root.rglob("*.py")):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _rel(path: Path) -> str:
    root = HOST.parent if path.is_relative_to(HOST) else RUNTIME.parent
    return path.relative_to(root).as_posix()


# ----------------------------------------------------------------- one registry
def test_every_backend_registered_exactly_once() -> None:
    """One REGISTRY line per backend; each names one runner module and one host module; nothing else lists them."""
    tree = ast.parse((RUNTIME / "registry.py").read_text())
    (registry,) = [n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "REGISTRY"]
    keys = [k.value for k in registry.keys]  # a dict literal keeps the last of two equal keys: count them here
    assert sorted(keys) == sorted(set(keys)) == sorted(REGISTRY) and tuple(keys) == BACKEND_NAMES
    runner_modules = {p.stem for p in (RUNTIME / "runners").glob("*.py")} - {"__init__"}
    host_modules = {p.stem for p in (HOST / "backends").glob("*.py")} - HOST_HELPERS
    assert runner_modules == host_modules == set(REGISTRY)
    for name in REGISTRY:
        runner, host = runner_class(name), backend_class(name)
        assert (runner.backend, host.name) == (name, name)
        assert runner.__module__ == f"edgeseg_runtime.runners.{name}" and host.__module__ == f"edgeseg.backends.{name}"
    assert {edgeseg.load_target(t).backend for t in edgeseg.list_targets()} == set(REGISTRY)  # each has a shipped profile
    listed = []
    for _, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
                names = {i.value for i in items if isinstance(i, ast.Constant) and i.value in REGISTRY}
                if len(names) >= 3 and _rel(path) != "edgeseg_runtime/registry.py":
                    listed.append(f"{_rel(path)}:{node.lineno}")
    assert {entry.split(":")[0] for entry in listed} <= PENDING_NAME_LISTS, listed


def test_every_runner_subclasses_base_runner() -> None:
    """Six runners, one template: none re-writes activate/infer/deactivate or enter/exit; options are declared."""
    for name in REGISTRY:
        cls = runner_class(name)
        assert issubclass(cls, BaseRunner), name
        own = set(vars(cls))
        assert not own & {"__enter__", "__exit__", "activate", "infer", "deactivate"}, (name, own)
        assert {"_activate_impl", "_infer_impl", "_deactivate_impl", "version"} <= own, name
        assert cls.requirement and all(isinstance(o, Option) and o.doc for o in cls.OPTIONS.values()), name
        host = backend_class(name)
        assert issubclass(host, BaseBackend) and isinstance(host.capabilities, Capabilities), name
        assert all(isinstance(o, Option) and o.doc for o in host.quant_options.values()), name
        # one convert signature: every backend takes calibration and spec=
        assert inspect.signature(host.convert).parameters.keys() == inspect.signature(BaseBackend.convert).parameters.keys()


class _Echo(BaseRunner):
    """A runner without a library: doubles its input."""

    backend = "echo"
    requirement = "echo"
    OPTIONS = {"scale": Option(float, 0, 10, default=2.0, doc="factor")}  # noqa: RUF012

    @staticmethod
    def version() -> str:
        return "1"

    def _activate_impl(self) -> None:
        self.calls = ["activate"]

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": feed["input"] * self.options["scale"]}

    def _deactivate_impl(self) -> None:
        self.calls.append("deactivate")


def test_base_runner_keeps_state_and_checks_inputs(tmp_path: Path) -> None:
    runner = _Echo(tmp_path, {"net": "x"}, {})
    assert runner.options == {"scale": 2.0} and not runner.is_active
    x = np.ones((1, 3, 2, 2), np.float32)
    with pytest.raises(ToolchainError, match="echo runner is not active: activate"):
        runner.infer({"input": x})
    with runner as active:
        assert active is runner and runner.is_active
        assert np.array_equal(runner.infer({"input": x})["output"], 2 * x)
        with pytest.raises(ToolchainError, match=r"takes inputs \['input'\], got \['image'\]"):
            runner.infer({"image": x})
        with pytest.raises(ToolchainError, match="input 'input' is float32, got float64"):
            runner.infer({"input": x.astype(np.float64)})
    assert runner.calls == ["activate", "deactivate"] and not runner.is_active
    runner.deactivate()  # not active: nothing to free
    assert runner.calls == ["activate", "deactivate"]
    with pytest.raises(ValueError, match=r"option scale: 11 is outside \[0, 10\]"):
        _Echo(tmp_path, {"net": "x"}, {"scale": 11})


def test_onnxruntime_runner_reads_its_inputs_and_keeps_the_load_error(tmp_path: Path) -> None:
    cls = runner_class("onnxruntime")
    with cls(edgeseg.DEFAULT_MODEL.parent, {"net": edgeseg.DEFAULT_MODEL.name}, {}) as runner:
        assert list(runner.inputs) == ["input_1"] and runner.inputs["input_1"] == np.float32  # the model's own name
        out = runner.infer({"input_1": np.zeros((1, 256, 256, 3), np.float32)})
        assert list(out) == ["activation_10"]
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ToolchainError, match="onnxruntime cannot load bad.onnx: ") as info:
        cls(tmp_path, {"net": "bad.onnx"}, {}).activate()
    assert info.value.__cause__ is not None  # the tool's own exception is kept


# ----------------------------------------------------------------- declared options and capabilities
def test_declared_options_validate_and_supply_defaults() -> None:
    ort = backend_class("onnxruntime")
    assert resolve({}, ort.quant_options) == {"weight_type": "int8", "activation_type": "uint8", "reduce_range": False}
    cpu = edgeseg.load_target("cpu")
    assert ort().quantization_options(cpu)["reduce_range"] is True  # the profile's value over the one default
    assert ort().backend_options(cpu) == {"intra_op_num_threads": 0, "providers": ["CPUExecutionProvider"],
                                          "allow_spinning": True}
    jetson = edgeseg.load_target("jetson")
    trt = backend_class("tensorrt")().backend_options(jetson)
    assert (trt["workspace_mb"], trt["dla_core"], trt["min_shape"], trt["engine_cache"]) == (1024, -1, None, None)
    with pytest.raises(ValueError, match="option weight_type: 'int4' is not one of int8, uint8"):
        resolve({"weight_type": "int4"}, ort.quant_options)
    t = cpu.with_precision("int8")
    bad = t.model_copy(update={"quantization": t.quantization.model_copy(update={"options": {"activation_type": "int4"}})})
    with pytest.raises(ConfigError, match=r"quantization\.options\.activation_type: 'int4' is not one of int8, uint8"):
        get_backend(bad)


def test_no_option_read_with_an_inline_default() -> None:
    """Option defaults live in the declarations only (not in ``options.get("key", default)`` calls; manifest
    details such as ``model.get("deployment_target", "?")`` are not options)."""
    declared = {k for n in REGISTRY for k in (*runner_class(n).OPTIONS, *backend_class(n).quant_options)}
    found = []
    for path in [*(RUNTIME / "runners").glob("*.py"), *(HOST / "backends").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in declared
                    and (ast.unparse(node.func.value).endswith("options") or ast.unparse(node.func.value) in ("opts", "o", "q"))):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_no_getattr_on_capability_names() -> None:
    found = set()
    for _, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in CAPABILITY_NAMES):
                found.add(_rel(path))
    assert found <= PENDING_GETATTR, found


@pytest.mark.parametrize(("profile", "build_on", "message"), [
    ("cpu", "device", "build_on = 'device' but backend onnxruntime builds on the host; set build_on = 'host'"),
    ("jetson", "host", "build_on = 'host' but backend tensorrt builds on the device; set build_on = 'device'"),
])
def test_profile_build_on_checked_against_the_backend(profile: str, build_on: str, message: str) -> None:
    target = edgeseg.load_target(profile).model_copy(update={"build_on": build_on})
    with pytest.raises(ConfigError, match=message):
        get_backend(target)


def test_translate_errors_keeps_cause_and_last_lines(tmp_path: Path) -> None:
    text = "Exception from src/frontend.cpp:12:\nCheck 'x' failed\nframe 1\nframe 2\nop Foo: not supported"
    with pytest.raises(ConversionError) as info, translate_errors("OpenVINO conversion failed"):
        raise RuntimeError(text)
    assert str(info.value) == f"OpenVINO conversion failed: {tool_lines(text)}"
    assert str(info.value).endswith("... | frame 2 | op Foo: not supported") and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    log = tmp_path / "native.log"
    log.write_text("I0000 loading\nE0001 12:00 converter.cc:9] error: tensor too big\nW0002 done\n")
    with pytest.raises(ToolchainError, match=r"^tool: ValueError \(log: E0001 .*tensor too big\)$"), \
            translate_errors("tool", log=log, error=ToolchainError):
        raise ValueError
    with pytest.raises(ConfigError, match="^as it is$"), translate_errors("tool"):  # edgeseg's own errors pass through
        raise ConfigError("as it is")


# ----------------------------------------------------------------- no import cycle
def _type_checking(node: ast.If) -> bool:
    return getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``name`` imports anywhere (functions included, ``if TYPE_CHECKING:`` blocks excluded)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                for alias in child.names:
                    target = f"{module}.{alias.name}"
                    out.add(target if target in known else module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return (out & known) - {name}


def test_no_import_cycle() -> None:
    modules = dict(_modules())
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == []
    assert "edgeseg.backends" not in graph["edgeseg.targets"] and "edgeseg_runtime.runners.tensorrt" not in graph[
        "edgeseg_runtime.engine"]


def test_no_function_over_80_lines_of_code() -> None:
    files = [*(RUNTIME / "runners").glob("*.py"), RUNTIME / "engine.py", *(HOST / "backends").glob("*.py"), HOST / "targets.py"]
    long = []
    for path in files:
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        docs = {i for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Module)) and ast.get_docstring(n)
                for i in range(n.body[0].lineno, n.body[0].end_lineno + 1)}
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            code = [i for i in range(fn.lineno, fn.end_lineno + 1)
                    if i not in docs and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#")]
            if len(code) > 80:
                long.append(f"{path.name}:{fn.name} {len(code)}")
    assert long == []


# ----------------------------------------------------------------- conformance: convert -> runner -> fp32 ONNX Runtime
def _profile_of(backend: str) -> Any:
    return next(t for t in map(edgeseg.load_target, edgeseg.list_targets()) if t.backend == backend)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_conformance(name: str, archives: dict[str, Path], tmp_path: Path) -> None:
    """The shipped profile of each backend installed here: its conversion of the cpu archive's shared fp32 ONNX,
    run through its runner on the golden photos, agrees with the fp32 ONNX Runtime outputs within the profile's
    tolerance. Backends that cannot run here (CoreML off macOS, TensorRT without a GPU) are skipped, saying why.
    """
    from edgeseg_runtime.archive import Archive
    from edgeseg_runtime.pipeline import output_labels
    from edgeseg_runtime.segmentor import Segmentor
    from edgeseg_runtime.verify import compare_outputs

    target = _profile_of(name)
    runner_cls = runner_class(name)
    try:
        runner_cls.version()
        backend = get_backend(target)
        backend.versions()
    except ToolchainError as exc:
        pytest.skip(f"{name} does not run here: {exc}")
    tol = target.tolerance.model_dump(include={"atol", "rtol", "min_label_agreement"})
    with Archive.open(archives["cpu"]) as archive:  # cpu = fp32 ONNX Runtime: the shared ONNX and its golden outputs
        files = backend.convert(archive.root / "end2end.onnx", target, tmp_path, spec=edgeseg.DEFAULT_SPEC)
        with Segmentor(archive) as reference:
            tensors = [reference.prepare(reference.load(archive.path(g.image))) for g in archive.manifest.golden]
            feeds = [(t, reference.infer(t)) for t in tensors]  # the fp32 reference's whole outputs
    model = {"net": files.net, "weights": files.weights, **files.details}
    with runner_cls(tmp_path, model, target.backend_options) as runner:
        for tensor, ref in feeds:
            out = runner.infer({"input": tensor})["output"]
            max_diff, _, agreement, ok = compare_outputs(out, ref, output_labels(out), output_labels(ref), tol)
            assert ok, f"{name}: max |diff| {max_diff:.3g} (atol {tol['atol']}), labels {agreement:.4f}"
    assert len(feeds) >= 3


def test_onnxruntime_fp16_keeps_constants_beyond_fp16_in_fp32(tmp_path: Path) -> None:
    """A BatchNormalization variance of 1e8 (PP-OCRv4's detector has 9.8e7) is inf in fp16, which zeroes the
    output; the fp16 build keeps that node in fp32 and records it."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c = 4
    consts = {"scale": np.ones(c), "bias": np.full(c, 0.5), "mean": np.zeros(c), "var": np.full(c, 1e8)}
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"], name="relu"),
         helper.make_node("BatchNormalization", ["r", *consts], ["output"], name="bn")],
        "bn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, c, 8, 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    src = tmp_path / "bn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    target = edgeseg.load_target("cpu").with_precision("fp16")
    out = tmp_path / "out"
    out.mkdir()
    files = get_backend(target).convert(src, target, out)
    assert files.details["kept_float_overflow"] == ["bn"]
    x = np.random.default_rng(0).standard_normal((1, c, 8, 8)).astype(np.float32) * 1e3
    want = ort.InferenceSession(str(src)).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out / files.net)).run(None, {"input": x})[0]
    assert np.abs(want - 0.5).max() > 0.05  # the variance matters: an inf one gives 0.5 everywhere
    np.testing.assert_allclose(got, want, atol=2e-3)
