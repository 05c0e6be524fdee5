"""MMSegmentation 1.x models in: a config (and checkpoint) → a PyTorch module and an edgeseg model spec.

Install with ``pip install 'edgeseg[mmseg]'`` (``mmengine>=0.10.7,<0.11``,
``mmcv-lite>=2.1,<2.2``, ``mmsegmentation>=1.2.2,<1.3``, ``ftfy``, ``regex``;
measured with 0.10.7 / 2.1.0 / 1.2.2, DESIGN.md §7). mmengine 0.10 imports
``pkg_resources``: with setuptools 81 or newer the import fails, said in one line. The configs ship in the
mmsegmentation wheel under ``mmseg/.mim/configs/`` (:func:`config_path` finds
them by name).

* **Export wrapper** (:class:`WholeInference`): MMDeploy's "whole" mode,
  ``EncoderDecoder.encode_decode(inputs, batch_img_metas)``, which runs the
  backbone, neck and decode head and resizes the logits to the input size
  (mmseg ``BaseDecodeHead.predict_by_feat``). Input ``(1, 3, H, W)`` float32
  normalized, output ``(1, C, H, W)`` float32 logits. ``SyncBN`` becomes ``BN``
  (``mmengine.model.revert_sync_batchnorm``). Source: MMDeploy
  ``mmdeploy/codebase/mmseg/models/segmentors/base.py`` (``base_segmentor__forward``).
* **Spec** from the config: input size (``crop_size`` or the data
  preprocessor's ``size``, or the ``input_size`` argument), ``mean``/``std``
  and ``bgr_to_rgb`` of ``SegDataPreProcessor``, classes and palette of the
  dataset (``DATASETS.get(dataset_type).METAINFO``; a checkpoint's
  ``meta.dataset_meta`` wins).
* **mmcv-lite has no compiled ops** (``mmcv._ext``), and ``from mmseg.apis
  import init_model`` imports ``mmcv.ops``, which loads them. While mmseg is
  imported, :func:`_mmcv_ext_stand_in` puts a module in ``sys.modules`` whose
  every attribute is a function raising :class:`CompiledOpMissing`; it is
  removed right after (the ops modules keep their reference). PSANet's
  ``PSAMask`` gets a plain-PyTorch forward (:func:`psamask`, checked
  element for element against mmcv's CPU kernel), which also exports as
  standard ONNX (the compiled op exports as the custom ``mmcv::MMCVPSAMask``).
  A model that calls another compiled op then fails with a clear
  ConversionError naming the op; CCNet's criss-cross attention is plain
  PyTorch in mmcv 2.x and exports.
  Nothing is stubbed when a full mmcv with ops is installed.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, ConversionError, ToolchainError
from .spec import ModelSpec, load_spec

__all__ = ["load_mmseg", "config_path", "configs_dir", "CompiledOpMissing", "WholeInference", "psamask"]


class CompiledOpMissing(RuntimeError):
    """A model called one of mmcv's compiled ops, which mmcv-lite does not have."""


@contextlib.contextmanager
def _mmcv_ext_stand_in() -> Iterator[None]:
    """``mmcv._ext`` for the duration of the mmseg import, when mmcv has no compiled extension (see module doc)."""
    if "mmcv._ext" in sys.modules or importlib.util.find_spec("mmcv") is None:
        yield
        return
    try:
        importlib.import_module("mmcv._ext")
        yield
        return
    except ImportError:
        pass
    stub = types.ModuleType("mmcv._ext")
    stub.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)

    def missing(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*_a: Any, **_k: Any) -> Any:
            raise CompiledOpMissing(name)

        return op

    stub.__getattr__ = missing  # type: ignore[attr-defined]  # PEP 562: every op name resolves
    sys.modules["mmcv._ext"] = stub
    try:
        yield
    finally:
        sys.modules.pop("mmcv._ext", None)


def psamask(x: Any, psa_type: str, mask_size: tuple[int, int]) -> Any:
    """mmcv's ``PSAMask`` op in plain PyTorch: one ``gather`` with an index fixed by the sizes.

    ``x``: ``(N, h_mask * w_mask, H, W)`` float; returns ``(N, H*W, H, W)``. For feature position ``p = (h, w)``
    and mask position ``(i, j)``, the value ``x[n, i*w_mask + j, h, w]`` goes to position ``q = (h + i - (h_mask-1)//2,
    w + j - (w_mask-1)//2)`` when it lies inside the feature map: ``out[n, q, p]`` ("collect") or ``out[n, p, q]``
    ("distribute"); every other element is 0. Source: mmcv ``ops/csrc/pytorch/cpu/psamask.cpp``
    (``psamask_collect_forward`` / ``psamask_distribute_forward``), from PSANet (Zhao et al., ECCV 2018).
    The index is ``(H*W)^2`` int64 (32 MB for a 32x64 feature map), a constant of the exported graph.
    """
    import numpy as np
    import torch

    n, c, h, w = (int(v) for v in x.shape)
    hm, wm = mask_size
    assert c == hm * wm, f"PSAMask: {c} channels for a {hm}x{wm} mask"
    qh, qw, ph, pw = np.meshgrid(np.arange(h), np.arange(w), np.arange(h), np.arange(w), indexing="ij")
    i, j = qh - ph + (hm - 1) // 2, qw - pw + (wm - 1) // 2  # the mask position that lands p's value on q
    valid = (i >= 0) & (i < hm) & (j >= 0) & (j < wm)
    index = torch.from_numpy(np.where(valid, i * wm + j, 0).reshape(h * w, h * w).astype(np.int64))
    keep = torch.from_numpy(valid.reshape(h * w, h * w).astype(np.float32)).to(x.dtype)
    flat = x.reshape(n, c, h * w)
    out = torch.gather(flat, 1, index.unsqueeze(0).expand(n, -1, -1)) * keep  # out[n, q, p] = flat[n, m(q, p), p]
    if psa_type == "distribute":
        out = out.transpose(1, 2)
    return out.reshape(n, h * w, h, w)


def _plain_psamask(model: Any) -> int:
    """Give every mmcv ``PSAMask`` module of ``model`` the plain-PyTorch forward (:func:`psamask`); returns how many.

    mmcv-lite has no compiled ``psamask_forward``, and the compiled op exports as the custom ONNX op
    ``mmcv::MMCVPSAMask``, which no backend here has.
    """
    count = 0
    for module in model.modules():
        if type(module).__name__ == "PSAMask" and type(module).__module__.startswith("mmcv."):
            module.forward = types.MethodType(lambda self, x: psamask(x, self.psa_type, tuple(self.mask_size)), module)
            count += 1
    return count


def _mmseg() -> dict[str, Any]:
    """Import the mmseg pieces edgeseg uses (once)."""
    try:
        with _mmcv_ext_stand_in(), contextlib.redirect_stdout(sys.stderr):
            from mmengine import Config
            from mmengine.model import revert_sync_batchnorm
            from mmseg.apis import init_model
            from mmseg.registry import DATASETS
            from mmseg.utils import register_all_modules
    except ImportError as exc:
        if exc.name == "pkg_resources":  # setuptools 81 removed it; mmengine 0.10 imports it (a range, not a pin)
            raise ToolchainError("mmengine imports pkg_resources, which setuptools 81 removed; "
                                 "pip install 'setuptools<81' in this environment") from None
        raise ToolchainError(f"MMSegmentation is not installed ({exc}); pip install 'edgeseg[mmseg]'") from None
    register_all_modules()
    return {"Config": Config, "init_model": init_model, "DATASETS": DATASETS, "revert": revert_sync_batchnorm}


def configs_dir() -> Path:
    """``mmseg/.mim/configs`` inside the installed mmsegmentation wheel.

    Raises:
        ToolchainError: mmsegmentation not installed.
    """
    spec = importlib.util.find_spec("mmseg")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError("MMSegmentation is not installed; pip install 'edgeseg[mmseg]'")
    return Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs"


def config_path(config: str | Path) -> Path:
    """A config file: a path, or a name/stem found under :func:`configs_dir` (``bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024``).

    Raises:
        ConfigError: not found.
    """
    path = Path(config)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".py")
    found = sorted(configs_dir().glob(f"*/{stem}.py"))
    if not found:
        raise ConfigError(f"no MMSegmentation config {config!r} (a file, or a name under {configs_dir()})")
    return found[0]


class WholeInference:
    """Factory for the export wrapper (built lazily so ``import edgeseg.mmseg`` needs no torch)."""

    def __new__(cls, segmentor: Any) -> Any:  # noqa: D102
        import torch

        class MMSegWholeInference(torch.nn.Module):
            """``(1, 3, H, W)`` normalized float32 → ``(1, C, H, W)`` float32 logits (mmseg ``encode_decode``)."""

            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: Any) -> Any:
                shape = tuple(x.shape[2:])
                try:
                    return self.model.encode_decode(x, [{"img_shape": shape, "ori_shape": shape, "pad_shape": shape}])
                except CompiledOpMissing as exc:
                    raise ConversionError(
                        f"this model calls mmcv's compiled op {exc.args[0]!r}, which mmcv-lite does not have; "
                        "install mmcv with its ops (a source build) to export it"
                    ) from None

        return MMSegWholeInference(segmentor).eval()


def load_mmseg(
    config: str | Path, checkpoint: str | Path | None = None, *, input_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> tuple[Any, ModelSpec]:
    """Build an MMSegmentation model and its edgeseg spec.

    Args:
        config: config file or name (:func:`config_path`).
        checkpoint: ``.pth`` weights; None = random initialization (the spec says so).
        input_size: ``(H, W)`` to export at; None = the config's ``crop_size``.
        num_classes: override the decode heads' class count (random-weight runs only).

    Returns:
        ``(module, spec)``: :class:`WholeInference` module in eval mode, and the model spec.

    Raises:
        ToolchainError: mmseg not installed, or the config needs MMDetection and it is not.
        ConfigError: config or checkpoint not found, or a config without a data preprocessor.
        ConversionError: building the model failed (first line of the error).
    """
    mm = _mmseg()
    path = config_path(config)
    cfg = mm["Config"].fromfile(str(path))
    if "mmdet." in cfg.pretty_text and importlib.util.find_spec("mmdet") is None:
        raise ToolchainError(f"{path.name} is built from MMDetection modules (mmdet.*), which are not installed; "
                             "pip install MMDetection 3.x (mmdet) to build it")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"checkpoint {checkpoint} does not exist")
    if num_classes is not None:
        for key in ("decode_head", "auxiliary_head"):
            heads = cfg.model.get(key)
            for head in heads if isinstance(heads, list) else [heads] if heads else []:
                head["num_classes"] = num_classes
    import torch

    try:
        # random weights are seeded (reproducible builds) without touching the caller's generator
        with contextlib.redirect_stdout(sys.stderr), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = mm["init_model"](cfg, str(checkpoint) if checkpoint else None, device="cpu")
        model = mm["revert"](model).eval()
        _plain_psamask(model)
    except Exception as exc:  # mmseg raises assorted errors from its registries
        raise ConversionError(f"MMSegmentation could not build {path.name}: {str(exc).strip().splitlines()[0]}") from None
    pre = cfg.model.get("data_preprocessor") or cfg.get("data_preprocessor")
    if not pre:
        raise ConfigError(f"{path.name} has no data_preprocessor (mean/std); give a spec with --spec")
    size = input_size or tuple(cfg.get("crop_size") or pre.get("size") or (512, 512))
    meta = getattr(model, "dataset_meta", None) or {}
    if not meta.get("classes"):
        meta = dict(mm["DATASETS"].get(cfg.dataset_type).METAINFO) if cfg.get("dataset_type") else {}
    classes = list(meta.get("classes", []))
    n_out = _num_classes(model)
    if len(classes) != n_out:
        classes = [f"class{i}" for i in range(n_out)]
        meta["palette"] = None
    palette = [list(map(int, c)) for c in meta["palette"]] if meta.get("palette") else None
    spec = load_spec(None, {
        "name": model_name(path.stem),
        "version": "1.0.0",
        "description": f"MMSegmentation {path.stem} ({'weights ' + Path(checkpoint).name if checkpoint else 'random weights'})",
        "license": "Apache-2.0 (MMSegmentation config)",
        "input": {"layout": "NCHW", "size": [int(size[0]), int(size[1])], "color": "RGB" if pre.get("bgr_to_rgb") else "BGR",
                  "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]], "keep_ratio": False},
        "output": {"kind": "logits", "layout": "NCHW", "classes": classes, **({"palette": palette} if palette else {})},
    })
    return WholeInference(model), spec


def model_name(config_stem: str) -> str:
    """The model name in an MMSegmentation config name: the ``{algorithm}_{components}`` before the training
    settings (``{gpus}xb{batch}-{schedule}``), per mmseg's config naming convention
    (``docs/en/user_guides/1_config.md``): ``fast_scnn_8xb4-160k_cityscapes-512x1024`` → ``fast_scnn``,
    ``pspnet_r50-d8_4xb2-40k_cityscapes-512x1024`` → ``pspnet_r50-d8``; a name without settings stays whole."""
    tokens = config_stem.split("_")
    cut = next((i for i, t in enumerate(tokens) if i and re.match(r"\d+xb\d+", t)), len(tokens))
    name = re.sub(r"[^a-z0-9_-]+", "-", "_".join(tokens[:cut]).lower()).strip("-_")
    return name or "mmseg"


def _num_classes(model: Any) -> int:
    head = model.decode_head[-1] if isinstance(model.decode_head, (list, tuple)) or hasattr(model.decode_head, "__getitem__") \
        else model.decode_head
    return int(getattr(head, "out_channels", None) or head.num_classes)
