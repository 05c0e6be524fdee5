"""Inference runners, one small module per backend (imported lazily); the registry (registry.py) re-exported.

Every runner subclasses :class:`BaseRunner` (Polygraphy's template): the base
class keeps the state and checks the inputs, the runner writes three hooks::

    with open_runner(archive) as runner:            # activate() -> _activate_impl()
        outputs = runner.infer({"input": tensor})   # input checks, then _infer_impl(): dict name -> ndarray
                                                    # deactivate() -> _deactivate_impl()

A new backend adds one runner module here (``runners/<name>.py``), one host
module (``edgeseg/backends/<name>.py``) and ONE line in :data:`REGISTRY`
(see ``docs/adding-a-backend.md``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Optional

import numpy as np

from ..errors import ArchiveError, ToolchainError
from ..registry import BACKEND_NAMES, REGISTRY, Registration

__all__ = [
    "BACKEND_NAMES",
    "REGISTRY",
    "RUNNERS",
    "BaseRunner",
    "Option",
    "OptionSpec",
    "Registration",
    "Runner",
    "error_text",
    "import_backend",
    "open_runner",
    "option_error",
    "resolve",
    "runner_class",
    "tool_lines",
]


# the registry itself lives in a stdlib-only module (the installer and the contract read the names before
# numpy is installed); it is re-exported here
#: backend name -> "module:Class" of its runner (derived from :data:`REGISTRY`; the old table's shape)
RUNNERS: dict[str, str] = {name: f"{__name__}.{name}:{entry.runner}" for name, entry in REGISTRY.items()}


# ----------------------------------------------------------------- declared options
@dataclass(frozen=True)
class Option:
    """A declared option: a profile's ``[backend_options]`` key of a runner, or a host backend's
    ``[quantization.options]`` key. It validates (:func:`option_error`) and supplies values (:func:`resolve`).

    Attributes:
        type: ``int``, ``float``, ``str``, ``bool`` or ``list``.
        low, high: inclusive range of a number (None = open).
        choices: the allowed values (None = any).
        items: the type of a list's items.
        default: the value when the profile does not set it (None = unset: the library's own choice).
        doc: one line for ``docs`` and error messages.
    """

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    items: type = str
    default: Any = None
    doc: str = ""


#: the name the backend contract uses (Olive's PassConfigParam idea): the same record
OptionSpec = Option


def _spec(declared: Any) -> Option:
    return declared if isinstance(declared, Option) else Option(declared)


def option_error(key: str, value: Any, allowed: Mapping[str, Any]) -> str | None:
    """Why ``key = value`` is not a valid option among ``allowed`` (``{name: type | Option}``), or None."""
    if key not in allowed:
        return f"unknown option (known: {', '.join(sorted(allowed)) or 'none'})"
    spec = _spec(allowed[key])
    kind = spec.type
    numeric_ok = kind is float and isinstance(value, int)
    if (not isinstance(value, kind) and not numeric_ok) or (isinstance(value, bool) and kind is not bool):
        return f"expected {kind.__name__}, got {repr(value)[:40]}"
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        return f"{value!r} is outside [{spec.low}, {spec.high}]"
    if spec.choices is not None and value not in spec.choices:
        return f"{str(value)[:40]!r} is not one of {', '.join(map(str, spec.choices))}"
    if kind is list and not all(isinstance(v, spec.items) and not isinstance(v, bool) for v in value):
        return f"expected a list of {spec.items.__name__}"
    return None


def resolve(options: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option with its value: the given one, else the declared default.

    Args:
        options: the given options (a profile's table, a manifest's options).
        declared: ``{name: Option | type}``.

    Returns:
        A complete dict, one key per declared option (None = unset); lists are fresh copies.

    Raises:
        ValueError: an unknown or invalid option (names it); callers check at their boundary first
            and say it as ConfigError / ArchiveError.
    """
    for key, value in options.items():
        why = option_error(key, value, declared)
        if why is not None:
            raise ValueError(f"option {str(key)[:40]}: {why}")
    out: dict[str, Any] = {}
    for key, spec in declared.items():
        value = options[key] if key in options else _spec(spec).default
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def tool_lines(text: str, keep: int = 3, width: int = 200) -> str:
    """A tool's error text as one line: its first line, then its last ones (``keep`` in all), `` | ``-joined.

    The first line is the tool's summary, the last ones where its own error usually is
    (OpenVINO, NNCF and onnx2torch put theirs last, after a location line).
    """
    lines = [line.strip()[:width] for line in str(text).splitlines() if line.strip()]
    if len(lines) > keep:
        lines = [lines[0], "...", *lines[len(lines) - keep + 1:]]
    return " | ".join(lines)


def error_text(exc: BaseException) -> str:
    """:func:`tool_lines` of an exception (its type name when its text is empty)."""
    return tool_lines(str(exc)) or type(exc).__name__


# ----------------------------------------------------------------- the runner template
class BaseRunner:
    """What every backend runner is: Polygraphy's activate / infer / deactivate around three hooks.

    Subclasses set the class attributes and write ``version``, ``_activate_impl``,
    ``_infer_impl`` and ``_deactivate_impl`` (and ``plan`` when ``edgeseg info``
    has something to say). The base class resolves the options against
    :attr:`OPTIONS`, refuses ``infer`` before ``activate`` and checks the feed's
    names and dtypes against :attr:`inputs`.

    Args:
        root: the folder the model files are in (the archive root).
        model: the manifest's backend section (``net``, ``weights``, backend details).
        options: ``[backend_options]``; missing ones get their declared defaults.

    Raises:
        ValueError: an unknown or invalid option.
    """

    #: backend name, as in target profiles
    backend: ClassVar[str] = ""
    #: pip requirement of the backend library on the device
    requirement: ClassVar[str] = ""
    #: non-empty: the device's system provides the library (not pip-installed); says how to get it
    system_requirement: ClassVar[str] = ""
    #: extra pip requirements the backend needs on the device (e.g. ``numpy<2.4``)
    constraints: ClassVar[tuple[str, ...]] = ()
    #: accepted ``[backend_options]`` keys
    OPTIONS: ClassVar[dict[str, Option]] = {}
    #: the option in :attr:`OPTIONS` that sets the backend's CPU threads (``edgeseg run --threads``); None: none
    THREADS: ClassVar[Optional[str]] = None
    #: ``(option, value)`` that stops the backend's idle worker threads from busy-waiting between runs, so
    #: that a pipelined run's decoding and writing get the cores (``Segmentor(spin=False)``); None: none
    NO_SPIN: ClassVar[Optional[tuple[str, Any]]] = None

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.model: dict[str, Any] = dict(model)
        self.options: dict[str, Any] = resolve(options, self.OPTIONS)
        self.is_active = False
        #: input name -> dtype the network takes (None = not checked); ``_activate_impl`` may read the model's own.
        #: A tensor with several names (OpenVINO) lists each; :attr:`input_count` then says how many tensors.
        self.inputs: dict[str, np.dtype | None] = {"input": np.dtype(np.float32)}
        self.input_count: int | None = None  # None: one tensor per name in inputs

    @staticmethod
    def version() -> str:
        """Installed version of the backend library. Raises ToolchainError when missing or unusable here."""
        raise NotImplementedError

    @staticmethod
    def plan(model: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
        """``edgeseg info`` lines on what happens on the device (none by default)."""
        return []

    def activate(self) -> BaseRunner:
        """Load the model (once: an active runner stays as it is). Raises ToolchainError."""
        if self.is_active:
            return self
        try:
            self._activate_impl()
        except BaseException:
            self._release()
            raise
        self.is_active = True
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``feed`` maps input names to arrays; returns output name -> array.

        Raises:
            ToolchainError: not activated, inputs other than :attr:`inputs` or of another dtype, or the backend failed.
        """
        if not self.is_active:
            raise ToolchainError(f"the {self.backend} runner is not active: activate() it (or use it in a with block) "
                                 "before infer()")
        count = len(self.inputs) if self.input_count is None else self.input_count
        if len(feed) != count or not all(name in self.inputs for name in feed):
            raise ToolchainError(f"the {self.backend} runner takes inputs {sorted(self.inputs)}, got {sorted(map(str, feed))}")
        for name, array in feed.items():
            want = self.inputs[name]
            if want is not None and getattr(array, "dtype", None) != want:
                raise ToolchainError(f"the {self.backend} runner's input {name!r} is {want}, got "
                                     f"{getattr(array, 'dtype', type(array).__name__)}")
        return self._infer_impl(feed)

    def deactivate(self) -> None:
        """Free what :meth:`activate` took (nothing when not active)."""
        if self.is_active:
            try:
                self._deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> BaseRunner:  # noqa: PYI034  (typing.Self needs Python 3.11; the runtime runs on 3.9)
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def _release(self) -> None:
        """After a failed activation: free what it took, keeping its error."""
        try:
            self._deactivate_impl()
        except Exception:  # noqa: BLE001, S110  the activation's error is the one to say
            pass

    def _activate_impl(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate_impl(self) -> None:
        raise NotImplementedError


#: the old name (a Protocol until the runners shared one base class)
Runner = BaseRunner


def import_backend(module: str, extra: str) -> ModuleType:
    """Import a backend library lazily.

    Args:
        module: import name (``onnxruntime``, ``openvino``, ...).
        extra: the edgeseg extra that installs it on the host.

    Raises:
        ToolchainError: not installed; says what to pip install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ToolchainError(
            f"{module} is not installed ({exc}); on a device: pip install {module}, on the host: "
            f"pip install 'edgeseg[{extra}]'"
        ) from None


def runner_class(backend: str) -> type[BaseRunner]:
    """The runner class for a backend name (its module is imported, the backend library is not).

    Raises:
        ToolchainError: no runner exists for that backend in this runtime.
    """
    entry = REGISTRY.get(backend) if isinstance(backend, str) else None
    if entry is None:
        raise ToolchainError(
            f"this runtime has no runner for backend {backend!r} (known: {', '.join(sorted(REGISTRY))}); "
            "use the runtime shipped in the archive's runtime/ folder"
        )
    cls: type[BaseRunner] = getattr(importlib.import_module(f"{__name__}.{backend}"), entry.runner)
    return cls


def _check_options(name: Any, options: Mapping[str, Any]) -> None:
    """Options reaching a runner from a manifest are untrusted: check names, types and ranges."""
    if not isinstance(options, Mapping):
        raise ArchiveError(f"manifest.json: {name} options are not an object")
    if not isinstance(name, str) or name not in REGISTRY:
        return  # runner_class says which backends exist
    allowed = runner_class(name).OPTIONS
    for key, value in options.items():
        why = option_error(key, value, allowed)
        if why is not None:
            raise ArchiveError(f"manifest.json: {name} option {str(key)[:40]}: {why}")


def open_runner(
    root: Path,
    backend: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    report: Callable[[str], None] | None = None,
) -> BaseRunner:
    """Build (not yet activate) the runner for an archive's ``backend`` manifest section.

    When the backend is not usable here and the section names a ``fallback``
    (the profile's ``fallback_backend``, e.g. ONNX Runtime for a TensorRT
    target), the fallback runner is returned instead and ``report`` (default:
    stderr) gets one line saying so: a fallback is never silent. The runner's
    ``backend`` attribute says which one runs.

    Args:
        root: the archive folder.
        backend: ``{"name": ..., "net": ..., "weights": ..., "fallback": {...}}`` from the manifest.
        options: backend options from the target profile, optionally overridden.
        report: where the fallback line goes.

    Raises:
        ToolchainError: the backend is missing here and there is no fallback (or it is missing too).
    """
    _check_options(backend.get("name"), options or {})
    fallback = backend.get("fallback")
    if fallback:
        _check_options(fallback.get("name"), fallback.get("options", {}))
        try:
            runner_class(backend["name"]).version()
        except ToolchainError as exc:
            cls = runner_class(fallback["name"])
            cls.version()  # raises when the fallback is missing too
            say = report or (lambda line: print(line, file=sys.stderr, flush=True))
            say(f"edgeseg: {exc}; running the profile's fallback_backend {fallback['name']} instead")
            return cls(root, fallback, dict(fallback.get("options", {})))
    return runner_class(backend["name"])(root, backend, dict(options or {}))
