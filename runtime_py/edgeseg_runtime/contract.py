"""The host↔device contract: archives and installer replies as typed, validated, frozen records.

``manifest.json`` and ``pipeline.json`` (:class:`Manifest`, :class:`PipelineSpec`)
and the installer's replies (:class:`DeviceState`, :class:`InstallResult`, ...).

Every byte of an archive that reaches a device is untrusted until checked, so
the runtime, the on-device installer and the host read both documents only
through this module. It turns them into frozen dataclasses or fails at one
place with one :class:`~edgeseg_runtime.errors.ArchiveError` line naming the
offending key (``manifest.json: model.input.shape[2]: expected a positive
integer or an axis name, got -1``), never with a ``KeyError`` or a traceback.

It also holds the limits that bound what the runtime will do for an archive
(document sizes, file counts, total unpacked size, network input size), the
rule for file names inside an archive, and the rule for release versions.

Standard library only (the installer imports it on a device before numpy is
installed); runs on Python 3.9+.

Sources: RFC 8259 (JSON), the MMDeploy SDK pipeline schema
(``mmdeploy/utils/export_info.py``), PEP 440's release segment
(``N(.N)*``) for versions.
"""

# typing's Optional/Tuple/Dict in the device records on purpose (see "device side" below)
# ruff: noqa: UP006, UP035, UP045, PYI019, TRY004
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ArchiveError
from .registry import BACKEND_NAMES

__all__ = [
    "LIMITS",
    "Limits",
    "FileEntry",
    "TensorSpec",
    "Model",
    "Tolerance",
    "DeploySettings",
    "Target",
    "Variant",
    "Backend",
    "Golden",
    "RuntimeInfo",
    "Manifest",
    "PipelineSpec",
    "load_json",
    "check_rel_path",
    "parse_version",
    "VERSION_RE",
    "MANIFEST_NAME",
    "PIPELINE_NAME",
    "SIGNATURE_NAME",
    "SCHEMA_VERSION",
    "JOURNAL_PHASES",
    "DeviceState",
    "Health",
    "InstallResult",
    "InstallStatus",
    "Journal",
    "JournalPhase",
    "LockHolder",
    "Part",
    "PruneResult",
    "GoldenImage",
    "VerifyOutcome",
    "BenchOutcome",
    "Record",
    "RecoverResult",
    "RecoverStatus",
    "Release",
    "RollbackResult",
]

MANIFEST_NAME = "manifest.json"
PIPELINE_NAME = "pipeline.json"
SIGNATURE_NAME = "manifest.sig"
SCHEMA_VERSION = 1
#: names an archive holds but its manifest does not list (the manifest itself and its detached signature)
UNLISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

#: a release version: dotted ASCII decimal numbers, 1-8 parts of 1-9 digits (``1.4.0``); full match only
VERSION_RE = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}", re.ASCII)
_TEXT_RE = re.compile(r"[^\x00-\x1f\x7f]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}", re.ASCII)


@dataclass(frozen=True)
class Limits:
    """What the runtime accepts from an archive, whatever its signature says.

    Attributes:
        manifest_bytes: largest ``manifest.json``.
        document_bytes: largest ``pipeline.json`` / ``manifest.sig`` / other small JSON.
        files: most files a manifest may list.
        total_bytes: largest sum of listed file sizes (the unpacked size); ``$EDGESEG_MAX_ARCHIVE_BYTES``.
        net_side: longest network input side in pixels (``Resize`` size or dynamic input).
        net_pixels: largest network input area in pixels.
        classes: most classes (labels are uint16 above 256).
        json_depth: deepest JSON nesting.
    """

    manifest_bytes: int = 16 << 20
    document_bytes: int = 1 << 20
    files: int = 10_000
    total_bytes: int = 8 << 30
    net_side: int = 8192
    net_pixels: int = 4096 * 4096
    classes: int = 65536
    json_depth: int = 32


def _limits() -> Limits:
    raw = os.environ.get("EDGESEG_MAX_ARCHIVE_BYTES", "")
    if raw.isascii() and raw.isdigit() and 0 < len(raw) <= 15:
        return Limits(total_bytes=int(raw))
    return Limits()


#: the limits in force (``$EDGESEG_MAX_ARCHIVE_BYTES`` raises or lowers ``total_bytes``)
LIMITS = _limits()


# ------------------------------------------------------------------ JSON
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def load_json(data: bytes, what: str, max_bytes: int | None = None) -> Any:
    """Parse untrusted JSON bytes with bounds.

    Refuses documents over ``max_bytes`` (default :attr:`Limits.document_bytes`),
    non-UTF-8 bytes, ``NaN``/``Infinity``, integers over 18 digits (CPython's
    int parsing is quadratic; 3.11+ raise on 4300 digits, 3.9/3.10 do not),
    nesting deeper than :attr:`Limits.json_depth` and duplicate-free parsing
    errors, all as one :class:`ArchiveError` line.

    Raises:
        ArchiveError: any of the above, or invalid JSON.
    """
    limit = LIMITS.document_bytes if max_bytes is None else max_bytes
    if len(data) > limit:
        raise ArchiveError(f"{what} is {len(data):,} bytes, over the limit of {limit:,}")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise ArchiveError(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise ArchiveError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError included
        raise ArchiveError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if _depth(value, LIMITS.json_depth) > LIMITS.json_depth:
        raise ArchiveError(f"{what} is nested deeper than {LIMITS.json_depth} levels")
    return value


# ----------------------------------------------------------------- paths
def check_rel_path(rel: Any, where: str) -> str:
    """Validate a file name inside an archive (manifest key, tar member, golden/backend reference).

    A name is a relative POSIX path of 1-16 components joined by ``/``, each
    1-255 bytes, without ``.``/``..`` components, backslashes, NUL or other
    control characters, 1024 bytes at most.

    Returns:
        ``rel`` unchanged.

    Raises:
        ArchiveError: anything else (``where`` says whose name it is).
    """
    if not isinstance(rel, str) or not rel:
        raise ArchiveError(f"{where}: file name {rel!r} is not a non-empty string")
    if len(rel.encode("utf-8", "surrogatepass")) > 1024 or any(ord(c) < 32 or c in "\\\x7f" for c in rel):
        raise ArchiveError(f"{where}: file name {rel[:80]!r} is too long or has control characters or backslashes")
    parts = rel.split("/")
    if len(parts) > 16 or any(p in ("", ".", "..") or len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts):
        raise ArchiveError(f"{where}: file name {rel[:80]!r} escapes the archive root or is not a plain relative path")
    return rel


def parse_version(text: Any) -> Tuple[int, ...]:
    """``"1.10.2"`` → ``(1, 10, 2)``; trailing zero parts are dropped (``1.0 == 1``).

    A release version is 1-8 dotted parts of 1-9 ASCII digits, matched in
    full (``"2.0.0\\n"`` and ``"٢.0.0"`` are refused).

    Raises:
        ArchiveError: anything else.
    """
    if not isinstance(text, str) or VERSION_RE.fullmatch(text) is None:
        shown = repr(text)[:40] + ("..." if len(repr(text)) > 40 else "")
        raise ArchiveError(
            f"release version {shown} is not dotted numbers like 1.4.0 (ASCII digits, at most 8 parts of 9 digits); "
            "rebuild with --release-version"
        )
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


# -------------------------------------------------------------- readers
class _Doc:
    """Typed reads from one JSON object, each failure one ArchiveError naming the key path."""

    def __init__(self, value: Any, path: str, source: str) -> None:
        self.path, self.source = path, source
        if not isinstance(value, dict):
            raise self.error("", f"expected an object, got {_kind(value)}")
        self.value: dict[str, Any] = value

    def error(self, key: str, message: str) -> ArchiveError:
        where = ".".join(p for p in (self.path, key) if p) or "(top level)"
        return ArchiveError(f"{self.source}: {where}: {message}" if self.source else f"{where}: {message}")

    def has(self, key: str) -> bool:
        return key in self.value and self.value[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        return self.value.get(key, default)

    def get(self, key: str) -> Any:
        if key not in self.value:
            raise self.error(key, "missing")
        return self.value[key]

    def obj(self, key: str, optional: bool = False) -> _Doc | None:
        if optional and not self.has(key):
            return None
        return _Doc(self.get(key), _join(self.path, key), self.source)

    def str(self, key: str, *, default: str | None = None, pattern: re.Pattern[str] | None = None,
            choices: tuple[str, ...] | None = None, max_len: int = 1024) -> str:
        if default is not None and not self.has(key):
            return default
        value = self.get(key)
        if not isinstance(value, str) or len(value) > max_len:
            raise self.error(key, f"expected a string of at most {max_len} characters, got {_kind(value)}")
        if pattern is not None and pattern.fullmatch(value) is None:
            raise self.error(key, f"{value[:60]!r} is not allowed here")
        if choices is not None and value not in choices:
            raise self.error(key, f"{value[:60]!r} is not one of {', '.join(choices)}")
        return value

    def bool(self, key: str, default: bool | None = None) -> bool:
        if default is not None and not self.has(key):
            return default
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def int(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        if default is not None and not self.has(key):
            return default
        return _int(self.get(key), lo, hi, lambda m: self.error(key, m))

    def float(self, key: str, lo: float, hi: float, default: float | None = None, optional: bool = False) -> float | None:
        if (default is not None or optional) and not self.has(key):
            return default
        return _float(self.get(key), lo, hi, lambda m: self.error(key, m))

    def list(self, key: str, max_len: int, default: list[Any] | None = None) -> list[Any]:
        if default is not None and not self.has(key):
            return default
        value = self.get(key)
        if not isinstance(value, list) or len(value) > max_len:
            raise self.error(key, f"expected a list of at most {max_len} items, got {_kind(value)}")
        return value

    def strings(self, key: str, max_len: int, default: list[str] | None = None) -> tuple[str, ...]:
        items = self.list(key, max_len, default)
        for i, item in enumerate(items):
            if not isinstance(item, str) or len(item) > 1024:
                raise self.error(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
        return tuple(items)

    def mapping(self, key: str) -> dict[str, Any]:
        """A free-form object (backend details, options): checked to be an object with string keys only."""
        if not self.has(key):
            return {}
        value = self.get(key)
        if not isinstance(value, dict):
            raise self.error(key, f"expected an object, got {_kind(value)}")
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value!r}"[:40]
    if isinstance(value, str):
        return f"{value[:40]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__


def _int(value: Any, lo: int, hi: int, error: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise error(f"expected an integer in [{lo}, {hi}], got {_kind(value)}")
    return value


def _float(value: Any, lo: float, hi: float, error: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise error(f"expected a number in [{lo:g}, {hi:g}], got {_kind(value)}")
    return float(value)


# -------------------------------------------------------------- records
@dataclass(frozen=True)
class FileEntry:
    """One file of the archive: ``sha256`` (64 lower-case hex digits, FIPS 180-4) and ``size`` in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True)
class TensorSpec:
    """A network input or output.

    Attributes:
        name: tensor name in the model.
        shape: dims; ``int`` > 0 for static axes, ``str`` for dynamic ones (e.g. ``"height"``).
        dtype: ``float32``, ``int64``, ``int32``, ...
        layout: ``NCHW`` (the only layout archives use).
        kind: outputs only: ``scores`` (``[1, C, h, w]`` float) or ``labels`` (``[1, 1, h, w]`` integer).
    """

    name: str
    shape: Tuple[Any, ...]
    dtype: str
    layout: str
    kind: Optional[str] = None

    def to_doc(self) -> dict[str, Any]:
        """The manifest's JSON form (inverse of parsing)."""
        doc: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}
        if self.kind is not None:
            doc["kind"] = self.kind
        return doc

    @property
    def static_hw(self) -> Optional[Tuple[int, int]]:
        """``(H, W)`` when both spatial dims are fixed integers, else None."""
        h, w = self.shape[2], self.shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None


@dataclass(frozen=True)
class Model:
    """``manifest.model``: what the network takes and gives, its classes and colours."""

    name: str
    version: str
    description: str
    license: str
    classes: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]
    input: TensorSpec
    output: TensorSpec
    with_argmax: bool
    variants: Tuple[Tuple[int, int], ...] = ()

    def to_doc(self) -> dict[str, Any]:
        """The manifest's ``model`` section (inverse of :meth:`from_doc`)."""
        inp = self.input.to_doc()
        if self.variants:
            inp["variants"] = [list(v) for v in self.variants]
        return {"name": self.name, "version": self.version, "description": self.description, "license": self.license,
                "classes": list(self.classes), "palette": [list(rgb) for rgb in self.palette], "input": inp,
                "output": self.output.to_doc(), "with_argmax": self.with_argmax}

    @classmethod
    def from_doc(cls, value: Any, source: str = MANIFEST_NAME) -> Model:
        """Validate a manifest's ``model`` section on its own (e.g. the build's reference model).

        Raises:
            ArchiveError: a missing key or a value of the wrong type or range.
        """
        return _model(_Doc(value, "model", source))


@dataclass(frozen=True)
class Tolerance:
    """Golden-check limits: ``|out - ref| <= atol + rtol * |ref|``, a minimum label agreement in [0, 1], and
    (int8 profiles) a minimum IoU of every class against the reference labels over the golden set."""

    atol: float
    rtol: float
    min_label_agreement: float
    min_class_iou: Optional[float] = None


@dataclass(frozen=True)
class DeploySettings:
    """``target.deploy``: the install's latency budget (ms, None = none) and how many release slots to keep."""

    latency_budget_ms: Optional[float] = None
    keep_releases: int = 3


@dataclass(frozen=True)
class Target:
    """``manifest.target``: the profile the archive was built for (the keys the runtime and installer use)."""

    name: str
    description: str
    precision: str
    os: str
    arch: str
    python: str
    tolerance: Tolerance
    backend_options: Mapping[str, Any]
    deploy: DeploySettings


@dataclass(frozen=True)
class Variant:
    """One static-shape model of ``backend.variants``: ``(H, W)``, its files and its backend details."""

    shape: Tuple[int, int]
    net: str
    weights: str
    details: Mapping[str, Any]


@dataclass(frozen=True)
class Backend:
    """``manifest.backend``.

    Attributes:
        name: runner name (``onnxruntime``, ``openvino``, ...).
        net, weights: model files (listed in ``files``; ``weights`` may be "").
        requirement: pip requirement of the backend library on the device.
        variants: static-shape variants, first one = ``net``.
        fallback: the profile's explicit fallback backend, or None.
        options: the fallback's runner options (fallback sections only).
        details: the whole section as written (the runner reads its own keys from it).
    """

    name: str
    net: str
    weights: str
    requirement: str
    variants: Tuple[Variant, ...]
    fallback: Optional["Backend"]
    options: Mapping[str, Any]
    details: Mapping[str, Any]


#: golden outputs larger than this many elements are stored as this many samples (:class:`GoldenSample`)
GOLDEN_SAMPLES = 16384
#: the sampling step: Knuth's multiplicative-hash prime (2^32 / golden ratio), coprime with any output size
#: below it, so the samples are distinct and spread over every class plane and row
GOLDEN_STEP = 2654435761


@dataclass(frozen=True)
class GoldenSample:
    """How a golden output was sampled: element ``(i * step) mod N`` of the flattened ``shape`` (N elements),
    for ``i`` in ``0 .. count - 1``, in that order. Integer arithmetic only: the same on every numpy."""

    shape: Tuple[int, ...]
    count: int
    step: int

    def indices(self) -> Any:
        """The flat indices, ``(count,)`` int64."""
        import numpy as np

        n = int(np.prod(self.shape, dtype=np.int64))
        return np.arange(self.count, dtype=np.int64) * self.step % n

    def to_doc(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "count": self.count, "step": self.step}


@dataclass(frozen=True)
class Golden:
    """One golden image: the input image, the fp32 reference output (``.npy``) and label map (``.png``).

    ``sample`` None: the ``.npy`` holds the whole output; else it holds the ``(count,)`` samples of it
    (:class:`GoldenSample`; archives stay small whatever the output size).
    """

    image: str
    output: str
    labels: str
    sample: Optional[GoldenSample] = None

    def to_doc(self) -> dict[str, Any]:
        """The manifest's JSON form of one ``golden`` entry."""
        doc: dict[str, Any] = {"image": self.image, "output": self.output, "labels": self.labels}
        if self.sample is not None:
            doc["sample"] = self.sample.to_doc()
        return doc


@dataclass(frozen=True)
class RuntimeInfo:
    """``manifest.runtime``: the runtime version and the pip requirements (and bundled wheels) it needs."""

    version: str
    requirements: Tuple[str, ...]
    wheels: Tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        """The manifest's ``runtime`` section."""
        doc: dict[str, Any] = {"version": self.version, "requirements": list(self.requirements)}
        if self.wheels:
            doc["wheels"] = list(self.wheels)
        return doc


_REQUIREMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?\s*([<>=!~]=?[A-Za-z0-9.*+!_-]+\s*,?\s*)*", re.ASCII)


@dataclass(frozen=True)
class Manifest(Mapping):  # type: ignore[type-arg]
    """A validated ``manifest.json``.

    The typed attributes are what the runtime, the installer and the host
    read. The object is also a read-only :class:`~collections.abc.Mapping`
    over the validated document, for the host's report-only sections
    (``provenance``, ``toolchain``, ``quantization``, ``build_check``, ``cross_build``).

    Build one with :meth:`parse` (bytes) or :meth:`from_doc` (a parsed object).
    """

    schema_version: int
    release_version: str
    model: Model
    target: Target
    backend: Backend
    golden: Tuple[Golden, ...]
    runtime: RuntimeInfo
    files: Mapping[str, FileEntry]
    doc: Mapping[str, Any] = field(repr=False, compare=False)

    # Mapping over the document (read-only)
    def __getitem__(self, key: str) -> Any:
        return self.doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.doc)

    def __len__(self) -> int:
        return len(self.doc)

    @property
    def total_bytes(self) -> int:
        """Sum of the listed file sizes (the unpacked size, manifest and signature aside)."""
        return sum(f.size for f in self.files.values())

    @property
    def name(self) -> str:
        """``<model>-<target>``."""
        return f"{self.model.name}-{self.target.name}"

    @classmethod
    def parse(cls, data: bytes, source: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate ``manifest.json`` bytes.

        Raises:
            ArchiveError: not JSON, over the limits, a wrong schema version, a
                missing key or a value of the wrong type or range (one line
                naming the key).
        """
        return cls.from_doc(load_json(data, source, LIMITS.manifest_bytes), source)

    @classmethod
    def from_doc(cls, value: Any, source: str = MANIFEST_NAME) -> Manifest:
        """Validate an already parsed manifest object (see :meth:`parse`)."""
        d = _Doc(value, "", source)
        version = d.raw("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ArchiveError(
                f"{source}: schema_version {str(version)[:20]!r} is not {SCHEMA_VERSION}; "
                "use the edgeseg runtime shipped inside this archive (runtime/)"
            )
        files = _files(d)
        model = _model(d.obj("model"))
        manifest = cls(
            schema_version=SCHEMA_VERSION,
            release_version=_release(d),
            model=model,
            target=_target(d.obj("target")),
            backend=_backend(d.obj("backend"), files, model),
            golden=_golden(d, files),
            runtime=_runtime(d.obj("runtime")),
            files=files,
            doc=d.value,
        )
        return manifest


def _files(d: _Doc) -> dict[str, FileEntry]:
    raw = d.get("files")
    if not isinstance(raw, dict):
        raise d.error("files", f"expected an object, got {_kind(raw)}")
    if len(raw) > LIMITS.files:
        raise d.error("files", f"{len(raw):,} files, over the limit of {LIMITS.files:,}")
    out: dict[str, FileEntry] = {}
    dirs: set[str] = set()
    for rel, meta in raw.items():
        check_rel_path(rel, f"{d.source}: files")
        if rel in UNLISTED:
            raise d.error("files", f"{rel} must not list itself")
        entry = _Doc(meta, f"files[{rel[:80]!r}]", d.source)
        out[rel] = FileEntry(sha256=entry.str("sha256", pattern=_SHA256_RE), size=entry.int("size", 0, 1 << 50))
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    if PIPELINE_NAME in out and out[PIPELINE_NAME].size > LIMITS.document_bytes:
        raise d.error("files", f"{PIPELINE_NAME} is listed at {out[PIPELINE_NAME].size:,} bytes, over the limit of "
                      f"{LIMITS.document_bytes:,}")
    clash = dirs & out.keys()
    if clash:
        raise d.error("files", f"{sorted(clash)[0]!r} is listed as a file and used as a folder")
    total = sum(f.size for f in out.values())
    if total > LIMITS.total_bytes:
        raise d.error("files", f"the listed files add up to {total / 1e9:.1f} GB, over the limit of "
                      f"{LIMITS.total_bytes / 1e9:.1f} GB ($EDGESEG_MAX_ARCHIVE_BYTES raises it)")
    return out


def _release(d: _Doc) -> str:
    rel = d.obj("release")
    assert rel is not None
    version = rel.get("version")
    try:
        parse_version(version)
    except ArchiveError as exc:
        raise rel.error("version", str(exc)) from None
    return version


def _tensor(d: _Doc, output: bool) -> TensorSpec:
    shape = d.list("shape", 4)
    if len(shape) != 4:
        raise d.error("shape", f"expected 4 dims [N, C, H, W], got {len(shape)}")
    dims: list[Any] = []
    for i, dim in enumerate(shape):
        if isinstance(dim, str) and _NAME_RE.fullmatch(dim):
            dims.append(dim)
        else:
            dims.append(_int(dim, 1, 1 << 20, lambda m, i=i: d.error(f"shape[{i}]", m + " or an axis name")))
    kind = d.str("kind", choices=("scores", "labels")) if output else None
    return TensorSpec(
        name=d.str("name", max_len=256),
        shape=tuple(dims),
        dtype=d.str("dtype", choices=("float32", "float16", "int64", "int32", "uint8")),
        layout=d.str("layout", choices=("NCHW",)),
        kind=kind,
    )


def _model(d: _Doc | None) -> Model:
    assert d is not None
    classes = d.strings("classes", LIMITS.classes)
    if not classes:
        raise d.error("classes", "no classes")
    palette = []
    for i, rgb in enumerate(d.list("palette", LIMITS.classes)):
        if not isinstance(rgb, list) or len(rgb) != 3:
            raise d.error(f"palette[{i}]", f"expected [R, G, B], got {_kind(rgb)}")
        palette.append(tuple(_int(v, 0, 255, lambda m, i=i: d.error(f"palette[{i}]", m)) for v in rgb))
    inp, out = d.obj("input"), d.obj("output")
    assert inp is not None and out is not None
    variants = []
    for i, shape in enumerate(inp.list("variants", 64, default=[])):
        if not isinstance(shape, list) or len(shape) != 2:
            raise inp.error(f"variants[{i}]", f"expected [H, W], got {_kind(shape)}")
        variants.append(tuple(_int(v, 1, LIMITS.net_side, lambda m, i=i: inp.error(f"variants[{i}]", m)) for v in shape))
    input_spec, output_spec = _tensor(inp, False), _tensor(out, True)
    if output_spec.kind == "scores" and output_spec.shape[1] != len(classes) and isinstance(output_spec.shape[1], int):
        raise out.error("shape", f"{output_spec.shape[1]} score channels for {len(classes)} classes")
    return Model(
        name=d.str("name", pattern=_NAME_RE),
        version=d.str("version", max_len=128),
        description=d.str("description", default="", max_len=4096),
        license=d.str("license", default="", max_len=4096),
        classes=classes,
        palette=tuple(palette),  # type: ignore[arg-type]
        input=input_spec,
        output=output_spec,
        with_argmax=d.bool("with_argmax", default=output_spec.kind == "labels"),
        variants=tuple(variants),  # type: ignore[arg-type]
    )


def _tolerance(d: _Doc) -> Tolerance:
    return Tolerance(
        atol=d.float("atol", 0.0, 1e6),  # type: ignore[arg-type]
        rtol=d.float("rtol", 0.0, 1e6, default=0.0),  # type: ignore[arg-type]
        min_label_agreement=d.float("min_label_agreement", 0.0, 1.0),  # type: ignore[arg-type]
        min_class_iou=d.float("min_class_iou", 0.0, 1.0, optional=True),
    )


def _target(d: _Doc | None) -> Target:
    assert d is not None
    platform = d.obj("platform")
    tolerance = d.obj("tolerance")
    deploy = d.obj("deploy", optional=True)
    assert platform is not None and tolerance is not None
    settings = DeploySettings()
    if deploy is not None:
        settings = DeploySettings(
            latency_budget_ms=deploy.float("latency_budget_ms", 1e-6, 1e9, optional=True),
            keep_releases=deploy.int("keep_releases", 1, 1000, default=3),
        )
    return Target(
        name=d.str("name", pattern=re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)),
        description=d.str("description", default="", max_len=4096),
        precision=d.str("precision", choices=("fp32", "fp16", "int8")),
        os=platform.str("os", max_len=32),
        arch=platform.str("arch", max_len=32),
        python=platform.str("python", default="3", max_len=16),
        tolerance=_tolerance(tolerance),
        backend_options=d.mapping("backend_options"),
        deploy=settings,
    )


def _listed(d: _Doc, key: str, files: Mapping[str, FileEntry], *, optional: bool = False, folder: bool = False) -> str:
    """A reference to a listed file (``folder``: or to a folder of listed files, e.g. a CoreML ``.mlpackage``)."""
    value = d.str(key, default="" if optional else None)
    if value == "" and optional:
        return ""
    check_rel_path(value, f"{d.source}: {_join(d.path, key)}")
    if value not in files and not (folder and any(f.startswith(value + "/") for f in files)):
        raise d.error(key, f"{value!r} is not a file listed in the manifest")
    return value


def _backend(d: _Doc | None, files: Mapping[str, FileEntry], model: Model, fallback: bool = False) -> Backend:
    assert d is not None
    variants = []
    for i, raw in enumerate(d.list("variants", 64, default=[])):
        v = _Doc(raw, _join(d.path, f"variants[{i}]"), d.source)
        shape = v.list("shape", 2)
        if len(shape) != 2:
            raise v.error("shape", "expected [H, W]")
        hw = tuple(_int(s, 1, LIMITS.net_side, lambda m: v.error("shape", m)) for s in shape)
        variants.append(Variant(shape=hw, net=_listed(v, "net", files, folder=True),  # type: ignore[arg-type]
                                weights=_listed(v, "weights", files, optional=True, folder=True), details=v.value))
    fb = d.obj("fallback", optional=True) if not fallback else None
    return Backend(
        name=d.str("name", choices=BACKEND_NAMES),
        net=_listed(d, "net", files, folder=True),
        weights=_listed(d, "weights", files, optional=True, folder=True),
        requirement=d.str("requirement", default="", pattern=_TEXT_RE, max_len=256),
        variants=tuple(variants),
        fallback=_backend(fb, files, model, fallback=True) if fb is not None else None,
        options=d.mapping("options"),
        details=d.value,
    )


def _golden(d: _Doc, files: Mapping[str, FileEntry]) -> tuple[Golden, ...]:
    out = []
    for i, raw in enumerate(d.list("golden", 1000)):
        g = _Doc(raw, f"golden[{i}]", d.source)
        sample = None
        sdoc = g.obj("sample", optional=True)
        if sdoc is not None:
            shape = sdoc.list("shape", 8)
            dims = tuple(_int(v, 1, LIMITS.net_pixels * LIMITS.classes, lambda m: sdoc.error("shape", m)) for v in shape)
            total = math.prod(dims)
            sample = GoldenSample(shape=dims, count=sdoc.int("count", 1, min(total, 1 << 24)),
                                  step=sdoc.int("step", 1, 1 << 32))
            if math.gcd(sample.step, total) != 1:
                raise sdoc.error("step", "must be coprime with the output's size (distinct samples)")
        out.append(Golden(image=_listed(g, "image", files), output=_listed(g, "output", files),
                          labels=_listed(g, "labels", files), sample=sample))
    return tuple(out)


def _runtime(d: _Doc | None) -> RuntimeInfo:
    assert d is not None
    reqs = d.strings("requirements", 64)
    for i, req in enumerate(reqs):
        if _REQUIREMENT_RE.fullmatch(req) is None:
            raise d.error(f"requirements[{i}]", f"{req[:60]!r} is not a pip requirement")
    return RuntimeInfo(version=d.str("version", max_len=64), requirements=reqs, wheels=d.strings("wheels", 1000, default=[]))


# -------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class PipelineSpec:
    """What the runtime reads from ``pipeline.json`` (MMDeploy SDK schema), validated.

    Attributes:
        size: ``(W, H)`` of the ``Resize`` transform in pixels, or None (no resize).
        keep_ratio: True to fit inside ``size`` keeping the aspect ratio.
        mean, std: ``Normalize`` per channel in network channel order, in the image's units (0..255 for
            8-bit, 0..65535 for 16-bit); ``std`` non-zero; as many as the read mode has channels.
        to_rgb: True when the network takes RGB (False: BGR); read for 3-channel ``RGB`` images only.
        num_classes: ``ResizeMask`` class count C.
        with_argmax: True when the network outputs labels.
        pad_divisor: ``Pad`` ``size_divisor``: H and W padded up to multiples of it (None: no Pad).
        pad_size: ``Pad`` ``size`` ``(W, H)``: padded up to exactly this (None: no fixed-size Pad).
        pad_value: ``Pad`` ``pad_val`` in network-input units (the Pad comes after Normalize).
        image_mode: how images are read (``LoadImageFromFile`` ``mode``, one of
            :data:`edgeseg_runtime.images.READ_MODES`; without it ``color_type`` ``grayscale`` is ``L`` and
            anything else ``RGB``, as in archives before it).
        slide_crop, slide_stride: ``(H, W)`` window and step of sliding-window inference (``ResizeMask``
            ``params`` ``"mode": "slide"``, ``crop_size``, ``stride``: MMSegmentation's ``test_cfg``); None:
            "whole" inference.
        min_side, max_side: ``Resize`` without ``size`` (edgeseg's extension for dynamic H/W models; the
            MMDeploy SDK has no equivalent): the image keeps its own size, scaled keeping the ratio so its short
            side is at least ``min_side`` and its long side at most ``max_side`` (``max_side`` wins), as
            PaddleOCR's ``DetResizeForTest`` ``limit_type`` min/max.
    """

    size: Optional[Tuple[int, int]]
    keep_ratio: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    to_rgb: bool
    num_classes: int
    with_argmax: bool
    image_mode: str = "RGB"
    pad_divisor: Optional[int] = None
    pad_size: Optional[Tuple[int, int]] = None
    pad_value: float = 0.0
    slide_crop: Optional[Tuple[int, int]] = None
    slide_stride: Optional[Tuple[int, int]] = None
    min_side: Optional[int] = None
    max_side: Optional[int] = None

    def static_input(self) -> Optional[Tuple[int, int]]:
        """The ``(W, H)`` network input this pipeline makes from every image, or None when it depends on the image."""
        if self.slide_crop is not None:
            return self.slide_crop[1], self.slide_crop[0]
        if self.pad_size is not None:
            return self.pad_size
        if self.size is None or self.keep_ratio:  # no Resize, keep-ratio, or min/max sides: the image decides
            return None
        d = self.pad_divisor or 1
        return -(-self.size[0] // d) * d, -(-self.size[1] // d) * d

    @classmethod
    def parse(cls, data: bytes, source: str = PIPELINE_NAME) -> PipelineSpec:
        """Parse and validate ``pipeline.json`` bytes (see :meth:`from_doc`)."""
        return cls.from_doc(load_json(data, source), source)

    @classmethod
    def from_doc(cls, value: Any, source: str = PIPELINE_NAME) -> PipelineSpec:
        """Validate a parsed ``pipeline.json`` document.

        Raises:
            ArchiveError: ``<source> is not a valid MMDeploy segmentation
                pipeline (<key>: <why>)``: no Transform or ResizeMask task, or
                a value of the wrong type or range (Resize side outside
                1..``net_side``, mean/std not three finite numbers, std 0, ...).
        """
        try:
            return cls._from_doc(value)
        except ArchiveError as exc:
            raise ArchiveError(f"{source} is not a valid MMDeploy segmentation pipeline ({exc})") from None

    @classmethod
    def _from_doc(cls, value: Any) -> PipelineSpec:
        top = _Doc(value, "", "")
        source = ""
        pipe = top.obj("pipeline")
        assert pipe is not None
        tasks = pipe.list("tasks", 64)
        if not all(isinstance(t, dict) for t in tasks):
            raise pipe.error("tasks", "every task must be an object")
        transform = next((i for i, t in enumerate(tasks) if t.get("module") == "Transform"), None)
        post = next((i for i, t in enumerate(tasks) if t.get("component") == "ResizeMask"), None)
        if transform is None or post is None:
            raise pipe.error("tasks", "needs a Transform task and a ResizeMask post-processing task")
        size: tuple[int, int] | None = None
        keep_ratio, to_rgb, normalized = False, True, False
        image_mode = "RGB"
        mean: tuple[float, ...] = (0.0, 0.0, 0.0)
        std: tuple[float, ...] = (1.0, 1.0, 1.0)
        pad_divisor: int | None = None
        pad_size: tuple[int, int] | None = None
        pad_value = 0.0
        min_side: int | None = None
        max_side: int | None = None
        tdoc = _Doc(tasks[transform], f"pipeline.tasks[{transform}]", source)
        for i, raw in enumerate(tdoc.list("transforms", 64)):
            step = _Doc(raw, f"{tdoc.path}.transforms[{i}]", source)
            kind = step.str("type", max_len=64)
            if kind == "LoadImageFromFile":
                if step.has("mode"):
                    image_mode = step.str("mode", choices=tuple(READ_MODE_CHANNELS))
                elif step.str("color_type", default="color", max_len=16) == "grayscale":
                    image_mode = "L"
            elif kind == "Resize":
                keep_ratio = step.bool("keep_ratio", default=False)
                if step.has("min_side") or step.has("max_side"):  # edgeseg's dynamic H/W within limits
                    if step.has("size") or not keep_ratio:
                        raise step.error("min_side", "min_side/max_side keep the ratio and take no size")
                    min_side = step.int("min_side", 1, LIMITS.net_side) if step.has("min_side") else None
                    max_side = step.int("max_side", 1, LIMITS.net_side) if step.has("max_side") else None
                    if min_side and max_side and min_side > max_side:
                        raise step.error("min_side", f"{min_side} is larger than max_side {max_side}")
                else:
                    size = _wh(step, "size")
            elif kind == "Normalize":
                channels = READ_MODE_CHANNELS[image_mode]
                mean = _numbers(step, "mean", channels, -1e6, 1e6)
                std = _numbers(step, "std", channels, 1e-6, 1e6)
                to_rgb = step.bool("to_rgb", default=False)
                normalized = True
            elif kind == "Pad":
                if not normalized:
                    raise step.error("type", "a Pad before Normalize is not supported (pad_val is in network-input units)")
                if step.has("size_divisor"):
                    pad_divisor = step.int("size_divisor", 1, 1024)
                if step.has("size"):
                    pad_size = _wh(step, "size")
                if pad_divisor is None and pad_size is None:
                    raise step.error("size_divisor", "a Pad needs size_divisor or size")
                raw_val = step.raw("pad_val", 0.0)
                if isinstance(raw_val, dict):  # mmseg 1.x writes {"img": v, "seg": 255}
                    raw_val = raw_val.get("img", 0.0)
                pad_value = _float(raw_val, -1e6, 1e6, lambda m: step.error("pad_val", m))
        pdoc = _Doc(tasks[post], f"pipeline.tasks[{post}]", source).obj("params")
        assert pdoc is not None
        with_argmax = pdoc.bool("with_argmax")
        crop = stride = None
        mode = pdoc.str("mode", default="whole", choices=("whole", "slide"))
        if mode == "slide":
            crop, stride = _wh(pdoc, "crop_size"), _wh(pdoc, "stride")  # [H, W] here, as mmseg's test_cfg
            if stride[0] > crop[0] or stride[1] > crop[1]:
                raise pdoc.error("stride", "a stride larger than the crop leaves pixels no window covers")
            if with_argmax:
                raise pdoc.error("mode", "slide inference averages scores; the model outputs labels (with_argmax)")
            if pad_divisor is not None or pad_size is not None:
                raise pdoc.error("mode", "slide inference pads its windows itself; drop the Pad transform")
            if min_side or max_side:
                raise pdoc.error("mode", "slide inference runs fixed windows; drop Resize min_side/max_side")
        if len(mean) != READ_MODE_CHANNELS[image_mode]:  # no Normalize: identity for the mode's channels
            mean, std = (0.0,) * READ_MODE_CHANNELS[image_mode], (1.0,) * READ_MODE_CHANNELS[image_mode]
        return cls(size=size, keep_ratio=keep_ratio, mean=mean, std=std, to_rgb=to_rgb, image_mode=image_mode,
                   num_classes=pdoc.int("num_classes", 1, LIMITS.classes), with_argmax=with_argmax,
                   pad_divisor=pad_divisor, pad_size=pad_size, pad_value=pad_value, slide_crop=crop, slide_stride=stride,
                   min_side=min_side, max_side=max_side)

    def check_model(self, model: Model, source: str = PIPELINE_NAME) -> None:
        """Refuse a pipeline that cannot feed ``model`` or read its output (checked when an archive is opened).

        Raises:
            ArchiveError: class count or argmax differ from the manifest; a
                static-shape model without static-shape variants whose Resize
                does not stretch to exactly its input size.
        """
        if self.num_classes != len(model.classes):
            raise ArchiveError(f"{source}: ResizeMask num_classes {self.num_classes} but the model has "
                               f"{len(model.classes)} classes")
        if self.with_argmax != model.with_argmax:
            raise ArchiveError(f"{source}: ResizeMask with_argmax is {str(self.with_argmax).lower()} but the model "
                               f"outputs {model.output.kind}")
        hw = model.input.static_hw
        if hw is not None and not model.variants and self.static_input() != (hw[1], hw[0]):
            got = ("Resize within sides" if self.min_side or self.max_side else "no Resize") if self.size is None else f"Resize to {self.size[0]}x{self.size[1]}" + (
                " keeping the ratio" if self.keep_ratio else "")
            if self.pad_size or self.pad_divisor:
                got += f", Pad to {'x'.join(map(str, self.pad_size)) if self.pad_size else f'/{self.pad_divisor}'}"
            raise ArchiveError(f"{source}: {got}, but the model takes a fixed {hw[1]}x{hw[0]} (WxH) input")
        if self.pad_size is not None and self.size is not None and (
                self.size[0] > self.pad_size[0] or self.size[1] > self.pad_size[1]):
            raise ArchiveError(f"{source}: Resize to {self.size[0]}x{self.size[1]} does not fit the Pad size "
                               f"{self.pad_size[0]}x{self.pad_size[1]}")


def _wh(step: _Doc, key: str) -> tuple[int, int]:
    """A two-number size (``[W, H]``, or ``[H, W]`` where the schema says so) within the runtime's network limits."""
    wh = step.list(key, 2)
    if len(wh) != 2:
        raise step.error(key, "expected [W, H]")
    size = tuple(_int(v, 1, LIMITS.net_side, lambda m: step.error(key, m)) for v in wh)
    if size[0] * size[1] > LIMITS.net_pixels:
        raise step.error(key, f"{size[0]}x{size[1]} is over the limit of {LIMITS.net_pixels:,} network pixels")
    return size  # type: ignore[return-value]


#: channels of each image read mode (:data:`edgeseg_runtime.images.READ_MODES`; this module imports no Pillow)
READ_MODE_CHANNELS = {"RGB": 3, "L": 1, "LA": 2, "RGBA": 4, "I;16": 1, "F": 1}


def _numbers(step: _Doc, key: str, n: int, lo: float, hi: float) -> tuple[float, ...]:
    """``n`` finite numbers in [lo, hi] (one per channel)."""
    values = step.list(key, 16)
    if len(values) != n:
        raise step.error(key, f"expected {n} numbers (one per channel of the image), got {len(values)}")
    return tuple(_float(v, lo, hi, lambda m: step.error(key, m)) for v in values)


# ---------------------------------------------------------------------------------------------- device side
# What the on-device installer (edgeseg_runtime.agent) answers, read back by the host (edgeseg.deploy.device)
# with Record.from_dict, which checks every field's type:
#
#     DeviceState      versions, stored files, uploads in progress, free space, problems
#     InstallResult    installed | unchanged, with the health check (Health)
#     RollbackResult   rolled back
#     RecoverResult    clean | finished | discarded | repaired
#     PruneResult      the slots removed
#     Journal          the install in progress (R/journal.json) and its phase
#
# Annotations use typing's Optional/Tuple/Dict on purpose: Record.from_dict resolves them with
# typing.get_type_hints at run time, which on Python 3.9 cannot evaluate "X | None".

InstallStatus = Literal["installed", "unchanged", "staged"]
RecoverStatus = Literal["clean", "finished", "discarded", "repaired"]
#: ``staged``: a health-checked slot waits for its commit (the Mender update module: ArtifactInstall, then ArtifactCommit)
JournalPhase = Literal["assemble", "dependencies", "health", "staged", "switch", "prune"]
JOURNAL_PHASES = get_args(JournalPhase)

R = TypeVar("R", bound="Record")
_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return _HINTS[cls]


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (JSON lists become tuples); ValueError naming ``where``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {str(value)[:40]!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value, where)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")
    return value


class Record:
    """Base of the records: ``to_dict()`` (JSON-ready) and ``from_dict()`` (validated)."""

    def to_dict(self) -> Dict[str, Any]:
        """The record as plain JSON types (nested records as objects, tuples as lists)."""
        return _plain(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls: type[R], doc: Any, where: str = "") -> R:
        """Build and check a record from parsed JSON.

        Raises:
            ValueError: not an object, a missing or unknown key, or a value of the wrong type (one line).
        """
        name = where or cls.__name__
        if not isinstance(doc, dict):
            raise ValueError(f"{name}: expected an object, got {type(doc).__name__}")
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(doc) - set(fields)
        if unknown:
            raise ValueError(f"{name}: unknown key {min(unknown)!r}")
        values = {}
        for key, f in fields.items():
            if key not in doc:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                    raise ValueError(f"{name}.{key}: missing")
                continue
            values[key] = _convert(hints[key], doc[key], f"{name}.{key}")
        return cls(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Release(Record):
    """A release link (``current`` / ``previous``): its slot, version, manifest sha256 and target.

    ``broken`` is True when the link names a slot that is missing or has no
    readable manifest (``version`` and ``target`` are then None when unknown).
    """

    version: Optional[str]
    slot: str
    manifest_sha256: Optional[str]
    target: Optional[str] = None
    broken: bool = False


@dataclass(frozen=True)
class Part(Record):
    """An upload in ``incoming/<sha256>-<size>.<session>.part``.

    ``received`` bytes are there; ``complete`` when it has all ``size`` bytes
    and they hash to ``sha256`` (ready for an install to take); ``corrupt`` when
    it has ``size`` bytes or more that do not (the next install or ``recover``
    deletes it and the host sends the file again).
    """

    name: str
    sha256: str
    size: int
    received: int
    complete: bool = False
    corrupt: bool = False
    age_s: float = 0.0


@dataclass(frozen=True)
class LockHolder(Record):
    """Who holds ``R/lock`` (what its file says; only for messages)."""

    pid: int
    command: str
    since: float

    def describe(self) -> str:
        """``since 2025-01-02 10:11:12 UTC (pid 42, install)``."""
        import time

        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since)) if self.since > 0 else "an unknown time"
        return f"since {when} (pid {self.pid}, {self.command})"


@dataclass(frozen=True)
class Journal(Record):
    """``R/journal.json``: the install in progress, the phase it started, the version it replaces.

    ``undo``: a commit that a Mender rollback may take back (``ArtifactCommit`` cut, then
    ``ArtifactRollback``): ``previous`` and ``floor`` are the ``previous`` link's version and
    ``version_floor`` from before the switch.
    """

    phase: JournalPhase
    version: Optional[str] = None
    manifest: Optional[str] = None
    old: Optional[str] = None
    undo: bool = False
    previous: Optional[str] = None
    floor: Optional[str] = None


@dataclass(frozen=True)
class DeviceState(Record):
    """What the host reads before an upload (``agent state``; takes no lock, never changes anything).

    Attributes:
        agent, python, arch: installer version, the device's Python and machine.
        root: the install root.
        current, previous: the release links (None = no link).
        releases: installed slot versions, oldest first.
        store: sha256 of the received files.
        partials: bytes received per sha256 (largest upload in progress).
        parts: every upload in ``incoming/``.
        free_bytes: free space under the root.
        read_only: the root's file system is mounted read-only.
        trusted_keys: names of ``trusted_keys/*.pem`` (None: no ``cryptography`` here).
        journal: the install in progress (None = none, or unreadable: see ``journal_error``).
        journal_error: why ``journal.json`` could not be read (``recover`` discards it).
        version_floor: the highest release version ever installed here (anti-rollback).
        lock: the holder of ``R/lock`` while a state-changing command runs.
        problems: one line each for what needs attention (``edgeseg status`` shows them).
    """

    agent: str
    python: str
    arch: str
    root: str
    current: Optional[Release]
    previous: Optional[Release]
    releases: Tuple[str, ...]
    store: Tuple[str, ...]
    partials: Dict[str, int]
    parts: Tuple[Part, ...]
    free_bytes: int
    read_only: bool
    trusted_keys: Optional[Tuple[str, ...]]
    journal: Optional[Journal]
    journal_error: Optional[str]
    version_floor: Optional[str]
    lock: Optional[LockHolder]
    problems: Tuple[str, ...]

    @property
    def version(self) -> Optional[str]:
        """The current release version (None when nothing usable is current)."""
        return self.current.version if self.current and not self.current.broken else None


@dataclass(frozen=True)
class Health(Record):
    """The install's health check: verdict of ``verify`` (and of ``bench`` against the latency budget)."""

    passed: bool
    verdict: str
    seconds: float = 0.0
    latency_ms: Optional[float] = None


@dataclass(frozen=True)
class InstallResult(Record):
    """``agent install``: ``installed`` (switched) or ``unchanged`` (that manifest was already current).

    ``staged``: health-checked and waiting for its commit (:meth:`edgeseg_runtime.install.InstallRoot.stage_archive`).
    """

    status: InstallStatus
    version: str
    previous: Optional[str]
    key_id: str
    health: Optional[Health] = None


@dataclass(frozen=True)
class RollbackResult(Record):
    """``agent rollback``: ``previous`` made current again."""

    status: Literal["rolled back"]
    version: str
    previous: Optional[str]


@dataclass(frozen=True)
class RecoverResult(Record):
    """``agent recover``: what it did (``notes``: one line per repair) and the current version after it."""

    status: RecoverStatus
    version: Optional[str]
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneResult(Record):
    """``agent prune``: the slot versions removed."""

    removed: Tuple[str, ...]


@dataclass(frozen=True)
class GoldenImage(Record):
    """One golden image of ``verify --json`` (:class:`edgeseg_runtime.verify.ImageCheck`)."""

    image: str
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float
    passed: bool


@dataclass(frozen=True)
class VerifyOutcome(Record):
    """``edgeseg verify --json``: the verdict, and the figures when the check ran (a refusal has only the verdict)."""

    passed: bool
    verdict: str
    archive: Optional[str] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    tolerance: Dict[str, float] = dataclasses.field(default_factory=dict)
    images: Tuple[GoldenImage, ...] = ()
    signature: Optional[str] = None
    worst_class: Optional[str] = None  # int8 archives (tolerance min_class_iou): the gated class and its IoU
    worst_class_iou: Optional[float] = None


@dataclass(frozen=True)
class BenchOutcome(Record):
    """``edgeseg bench --json``: median latencies in ms (:class:`edgeseg_runtime.bench.BenchResult`)."""

    archive: str
    image_size: Tuple[int, ...]
    input_shape: Tuple[int, ...]
    runs: int
    bare_ms: float
    preprocess_ms: float
    infer_ms: float
    postprocess_ms: float
    end_to_end_ms: float
    decode_ms: float
    encode_ms: float
    overhead: float
