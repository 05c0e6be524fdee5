"""A starting model spec written from a model file (``edgeseg spec init``).

What the graph says is written as fact (``# from the graph``); what it cannot say (colour order,
normalisation, class names, the size of a dynamic input) is a guess marked ``# GUESS``, to be checked
against the model's own documentation before a build. The draft is a valid spec: ``edgeseg build
--spec`` takes it as it is, and the build then checks it against the graph again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .export import source_kind, spec_defaults, tensor_dims
from .spec import load_spec

__all__ = ["draft_spec", "write_draft"]

#: a final op that already turns scores into probabilities
_PROBABILITY_OPS = {"Softmax", "Sigmoid", "LogSoftmax"}
#: ops that move values without changing them (an NHWC model's final Transpose)
_LAYOUT_OPS = {"Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze"}


def draft_spec(model: str | Path) -> str:
    """A model spec TOML for an ONNX file, every guess marked.

    Args:
        model: an ``.onnx`` file, or a ``.tflite`` file (drafted from the ONNX it converts to).

    Returns:
        TOML text that :func:`edgeseg.spec.load_spec` accepts.

    Raises:
        ConfigError: the file is missing, not ONNX, or its input/output is not a 4-D image tensor.
    """
    import onnx

    path = Path(model)
    facts = spec_defaults(path)
    if source_kind(path) == "tflite":  # drafted from the graph it converts to (NHWC, as TFLite's)
        from .tflite_import import tflite_to_onnx

        with tempfile.TemporaryDirectory(prefix="edgeseg-spec-") as tmp:
            proto = tflite_to_onnx(path, Path(tmp))
    else:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001  onnx raises DecodeError and friends: one line
            raise ConfigError(f"{path}: not a valid ONNX model ({str(exc).splitlines()[0][:120]})") from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ConfigError(f"{path}: {len(inputs)} inputs and {len(proto.graph.output)} outputs; the draft needs one "
                          "of each (write the spec by hand, naming input.name and output.name)")
    in_dims, out_dims = tensor_dims(inputs[0]), tensor_dims(proto.graph.output[0])
    if len(in_dims) != 4 or len(out_dims) != 4:
        raise ConfigError(f"{path}: input {in_dims} and output {out_dims}; a 4-D image input and output are needed")
    given = facts.get("input", {})
    layout = given.get("layout")
    nchw = layout != "NHWC"
    channels = in_dims[1] if nchw else in_dims[3]
    hw = in_dims[2:4] if nchw else in_dims[1:3]
    static = all(isinstance(d, int) for d in hw)
    out_layout = facts.get("output", {}).get("layout", layout or "NCHW")
    out_c = out_dims[1] if out_layout == "NCHW" else out_dims[3]
    producer = {o: n for n in proto.graph.node for o in n.output}
    last = producer.get(proto.graph.output[0].name)
    while last is not None and last.op_type in _LAYOUT_OPS and last.input:  # look through layout-only ops
        last = producer.get(last.input[0])
    integer = proto.graph.output[0].type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                                         onnx.TensorProto.DOUBLE)
    lines = [f"# Model spec drafted by 'edgeseg spec init' from {path.name}.",
             "# '# from the graph' is what the model says; '# GUESS' is not known from the file: check it against the",
             "# model's documentation (its training pipeline's normalisation, colour order and classes) before a build.",
             f'name = "{facts["name"]}"   # from the file name', 'version = "0.1.0"   # GUESS: your release version', "",
             "[input]"]
    lines.append(f'layout = "{layout or "NCHW"}"   # ' + ("from the graph" if layout else "GUESS: the graph leaves it open"))
    if static:
        lines.append(f"size = [{hw[0]}, {hw[1]}]   # from the graph: the fixed [H, W]")
    else:
        lines += ["size = [512, 512]   # GUESS: the graph takes any H/W; the [H, W] its training used",
                  "keep_ratio = true   # GUESS: fit images inside size keeping their aspect",
                  "# min_side = 736   # or: each image at its own size, short side at least this (size: static builds)",
                  "size_divisor = 32   # GUESS: most encoder-decoders need sides in multiples of 32"]
    if channels == 1:
        lines += ['color = "GRAY"   # from the graph: one channel',
                  'dtype = "uint8"   # GUESS: "uint16" for 16-bit images (microscopy, thermal), then mean/std in 0..65535',
                  "mean = 0.0   # GUESS", "std = 255.0   # GUESS: x / 255"]
    elif channels == 3 or not isinstance(channels, int):
        lines += ['color = "RGB"   # GUESS: "BGR" for OpenCV-trained models (PaddlePaddle, many Caffe ports)',
                  "mean = [0.0, 0.0, 0.0]   # GUESS: ImageNet is [123.675, 116.28, 103.53]",
                  "std = [255.0, 255.0, 255.0]   # GUESS: x / 255; ImageNet is [58.395, 57.12, 57.375]"]
    else:
        lines += [f'color = "RAW"   # from the graph: {channels} channels, taken as the image file stores them',
                  f"channels = {channels}   # from the graph", "mean = 0.0   # GUESS", "std = 255.0   # GUESS"]
    lines += ["", "[output]", f'layout = "{out_layout}"   # ' + ("from the graph" if "output" in facts else "GUESS")]
    if integer:
        lines.append('kind = "labels"   # from the graph: an integer output holds class ids')
        n = None
    elif out_c == 1:
        lines += ['kind = "probability"   # from the graph: one channel (a sigmoid probability)',
                  "threshold = 0.5   # GUESS: the model's own post-processing threshold"]
        n = 2
    elif last is not None and last.op_type in _PROBABILITY_OPS:
        lines.append(f'kind = "probability"   # from the graph: it ends in {last.op_type}')
        n = out_c
    else:
        lines.append('kind = "logits"   # from the graph: no final Softmax/Sigmoid, scores are arg-maxed')
        n = out_c
    if n is None or not isinstance(n, int):
        lines.append('classes = ["background", "class1"]   # GUESS: one name per class id')
    elif n == 2:
        lines.append('classes = ["background", "foreground"]   # GUESS: names for class 0 and 1')
    else:
        names = ", ".join(f'"class{i}"' for i in range(n))
        lines.append(f"classes = [{names}]   # from the graph: {n} classes; GUESS: their names")
    text = "\n".join(lines) + "\n"
    _check_loads(text, path)
    return text


def _check_loads(text: str, source: Path) -> Any:
    """Check that a drafted spec loads (a bug here must not hand the user an invalid file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "spec.toml"
        draft.write_text(text, encoding="utf-8")
        try:
            return load_spec(draft)
        except ConfigError as exc:
            raise ConfigError(f"the spec drafted from {source.name} does not load ({exc}); write it by hand") from None


def write_draft(model: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write :func:`draft_spec` to ``out``, never over an existing file unless ``force``.

    Raises:
        ConfigError: ``out`` exists (and not ``force``), or see :func:`draft_spec`.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; choose another --out or pass --force to replace it")
    text = draft_spec(model)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
