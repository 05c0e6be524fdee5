"""Writing a :class:`~edgeseg.compare.Comparison` as ``report.json``, ``report.md`` and ``report.html``.

* ``report.json``: the canonical data (:meth:`Comparison.to_dict`, schema ``edgeseg.compare`` v1).
* ``report.md``: the summary table in the layout of MMSegmentation's model-zoo
  tables (Method, Backend, Precision, Shape, Size, Mem, Latency/FPS, Device,
  mIoU, Δ vs fp32), per-class IoU, and the gate's verdict.
* ``report.html``: one self-contained page (plots embedded as base64 PNG data
  URIs, no external files or scripts): the table, per-class IoU bars per
  target, latency vs mIoU, and for each target its worst images as a grid of
  input / reference / target / disagreement. Plots are drawn with matplotlib
  (``pip install 'edgeseg[report]'``); without it the page has the tables only
  and says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeseg_runtime.images import load_image, overlay

from .compare import Comparison, TargetResult, _labels

__all__ = ["write_report", "render_markdown", "render_html", "render_console", "summary_rows", "SUMMARY_COLUMNS",
           "CONSOLE_COLUMNS"]

#: classes shown in the IoU plot at most (those whose IoU varies most across targets)
MAX_PLOT_CLASSES = 30
#: images shown in the worst-images grid per target
WORST_IMAGES = 3
#: height in pixels of each tile of the worst-images grid
TILE_HEIGHT = 200
#: the summary table's columns (keys of :func:`summary_rows`), in the model-zoo order
SUMMARY_COLUMNS = ("method", "backend", "precision", "shape", "size", "mem", "latency", "device", "miou", "delta",
                   "agreement", "max_abs_diff", "gate")
#: the columns ``edgeseg compare`` prints on the terminal
CONSOLE_COLUMNS = ("method", "backend", "precision", "latency", "device", "miou", "delta", "agreement", "gate")


def write_report(comparison: Comparison, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir`` (default: the comparison's folder,
    which ``report.json``'s ``labels_dir`` paths are relative to).

    Returns:
        ``{"json": path, "md": path, "html": path}``.
    """
    out = Path(out_dir) if out_dir is not None else comparison.out_dir
    out.mkdir(parents=True, exist_ok=True)
    doc = comparison.to_dict()
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(comparison), encoding="utf-8")
    paths["html"].write_text(render_html(comparison), encoding="utf-8")
    return paths


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.2f} MB"


def _f(value: float, fmt: str = ".2f") -> str:
    return "n/a" if value != value else format(value, fmt)


def summary_rows(c: Comparison, columns: Sequence[str] = SUMMARY_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (one row per target), with ``columns`` (keys of :data:`SUMMARY_COLUMNS`).

    Raises:
        KeyError: an unknown column key.
    """
    head = {"method": "Method", "backend": "Backend", "precision": "Precision", "shape": "Shape", "size": "Size",
            "mem": "Mem", "latency": "Latency (ms) / FPS", "device": "Device",
            "miou": "mIoU" if c.dataset.has_masks else "mIoU vs fp32", "delta": "Δ vs fp32", "agreement": "Agreement",
            "max_abs_diff": "Max abs diff", "gate": "Gate"}
    rows = [_summary_row(r) for r in c.results]
    return [head[k] for k in columns], [[row[k] for k in columns] for row in rows]


def _summary_row(r: TargetResult) -> dict[str, str]:
    i = r.info
    diff = r.score_diff
    if r.error:
        latency = miou = delta = agreement = max_diff = "n/a"
    else:
        latency = f"{_f(r.latency.p50)} / {_f(r.latency.fps, '.1f')}"
        miou = _f(r.miou)
        delta = "ref" if r.is_reference else _f(r.delta_miou, "+.2f")
        agreement = _f(100 * r.vs_reference.pixel_accuracy) + "%" if r.vs_reference else "n/a"
        max_diff = _f(diff.max_abs, ".2g") if diff is not None and diff.count else r.score_note or "n/a"
    return {
        "method": i.model, "backend": f"{i.backend} ({r.label})", "precision": i.precision,
        "shape": "x".join(str(v) for v in i.input_shape[2:]), "size": _mb(i.model_bytes),
        "mem": _mb(r.peak_memory_bytes), "latency": latency,
        "device": r.device if r.device != "host" else f"host ({r.run['machine']})" if r.run else "host",
        "miou": miou, "delta": delta, "agreement": agreement, "max_abs_diff": max_diff,
        "gate": "ref" if r.is_reference else ("pass" if r.passed else "FAIL"),
    }


def render_console(c: Comparison, columns: Sequence[str] = CONSOLE_COLUMNS) -> str:
    """The summary table as aligned plain text (what ``edgeseg compare`` prints), ``columns`` of :func:`summary_rows`."""
    head, rows = summary_rows(c, columns)
    widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [head, *rows])


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[cell.replace("|", "\\|") for cell in row] for row in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def _iou_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    basis = "ground truth" if c.dataset.has_masks else "fp32 labels"
    head = [f"Target (IoU vs {basis})", *c.classes]
    rows = []
    for r in c.results:
        scores = r.vs_ground_truth or r.vs_reference
        if scores is None:
            continue
        rows.append([r.label, *("n/a" if v != v else f"{100 * v:.2f}" for v in scores.iou)])
    return head, rows


def _gate_text(c: Comparison) -> str:
    bounds = []
    if c.max_drop is not None:
        bounds.append(f"drop ≤ {c.max_drop:g}")
    if c.max_gain is not None:
        bounds.append(f"gain ≤ {c.max_gain:g}")
    if not bounds and all(not r.error for r in c.results):
        return "Gate: not set (give --max-drop / --max-gain, in mIoU points)."
    verdict = "PASS" if c.passed else "FAIL"
    text = f"Gate ({', '.join(bounds) or 'every target must run'} mIoU points vs fp32): **{verdict}**"
    return text + "".join(f"\n- {line}" for line in c.failures())


def _dataset_text(c: Comparison) -> str:
    d = c.dataset
    masks = f"masks ({d.layout} layout" + (", reduce-zero-label" if d.reduce_zero_label else "") + \
        (f", label map {','.join(f'{k}={v}' for k, v in d.label_map.items())}" if d.label_map else "") + ")"
    return (
        f"{len(d)} images from `{d.source}`, {masks if d.has_masks else 'no masks: scored against the fp32 labels'}; "
        f"ignore index 255; reference `{c.reference.label}` (fp32 ONNX Runtime). Latency: median of {c.runs} runs after "
        f"{c.warmup} warm-up runs of pre-processing + inference + post-processing; Mem: peak RSS of the runtime process."
    )


def render_markdown(c: Comparison) -> str:
    """``report.md``: summary table, per-class IoU, gate verdict."""
    head, rows = summary_rows(c)
    ihead, irows = _iou_rows(c)
    parts = [
        f"# edgeseg comparison: {c.reference.info.model}",
        "",
        f"{_dataset_text(c)} Created {c.created}.",
        "",
        _md_table(head, rows),
        "",
        _gate_text(c),
        "",
        "## Per-class IoU",
        "",
        _md_table(ihead, irows),
        "",
    ]
    errors = [f"- `{r.label}` ({r.info.path}): {r.error}" for r in c.results if r.error]
    if errors:
        parts += ["## Targets that did not run", "", *errors, ""]
    others = [r.label for r in c.results if r.info.source_sha256 != c.reference.info.source_sha256]
    if others:
        parts += [f"Note: {', '.join(others)} come from another source model than the reference (other sha256).", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------ plots
def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clf()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _iou_plot(plt: Any, c: Comparison) -> str | None:
    ran = [r for r in c.results if (r.vs_ground_truth or r.vs_reference) is not None]
    if not ran:
        return None
    ious = np.array([(r.vs_ground_truth or r.vs_reference).iou for r in ran], dtype=np.float64)  # type: ignore[union-attr]
    classes = np.arange(len(c.classes))
    if len(classes) > MAX_PLOT_CLASSES:
        spread = np.nan_to_num(np.nanmax(ious, 0) - np.nanmin(ious, 0), nan=-1.0)
        classes = np.sort(np.argsort(-spread, kind="stable")[:MAX_PLOT_CLASSES])
    x = np.arange(len(classes), dtype=np.float64)
    width = 0.8 / len(ran)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) * len(ran) + 2), 3.8))
    for k, r in enumerate(ran):
        ax.bar(x + (k - (len(ran) - 1) / 2) * width, 100 * np.nan_to_num(ious[k, classes]), width, label=r.label)
    slanted = len(classes) > 6
    ax.set_xticks(x, [c.classes[i] for i in classes], rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_ylabel("IoU (%) vs " + ("ground truth" if c.dataset.has_masks else "fp32 labels"))
    ax.set_ylim(0, 105)
    ax.set_title("Per-class IoU per target")
    ax.legend(fontsize="small", ncols=min(4, len(ran)))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _scatter_plot(plt: Any, c: Comparison) -> str | None:
    ran = [r for r in c.results if r.run and r.vs_reference is not None]
    if not ran:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in ran:
        lat = r.latency.p50
        ax.scatter([lat], [r.miou], s=60, marker="*" if r.is_reference else "o")
        ax.annotate(f"{r.label}" + (f" @{r.device}" if r.device != "host" else ""), (lat, r.miou),
                    textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.set_xlabel("latency p50 (ms, pre + inference + post)")
    ax.set_ylabel("mIoU " + ("vs ground truth" if c.dataset.has_masks else "vs fp32 labels"))
    ax.set_title("Latency vs mIoU")
    ax.grid(alpha=0.3)
    return _png(fig)


def _size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(W, H) of a tile TILE_HEIGHT pixels high for an image of this shape."""
    h, w = shape[:2]
    return max(1, round(w * TILE_HEIGHT / h)), TILE_HEIGHT


def _tile(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(_size(rgb.shape), Image.Resampling.BILINEAR))


def disagreement(rgb: np.ndarray, labels: np.ndarray, reference: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """The image dimmed to grey with pixels whose label differs from the reference in red.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        labels, reference: ``(H, W)`` label maps.
        size: ``(W, H)`` to shrink to; a shrunk pixel is red when any pixel it
            covers disagrees (box filter), so a few differing pixels stay visible.

    Returns:
        ``(H, W, 3)`` uint8, or ``size`` when given.
    """
    diff = Image.fromarray(((labels != reference) * 255).astype(np.uint8))
    img = Image.fromarray(rgb)
    if size is not None:
        diff, img = diff.resize(size, Image.Resampling.BOX), img.resize(size, Image.Resampling.BILINEAR)
    grey = (0.35 * np.asarray(img).mean(axis=2, keepdims=True)).repeat(3, axis=2)
    grey[np.asarray(diff) > 0] = (255, 0, 0)
    return grey.astype(np.uint8)


def _worst_plot(plt: Any, c: Comparison, r: TargetResult) -> str | None:
    if not r.per_image or r.run_dir is None or c.reference.run_dir is None:
        return None
    worst = sorted(range(len(r.per_image)), key=lambda i: r.per_image[i]["agreement"])[:WORST_IMAGES]
    palette = r.info.palette
    fig, axes = plt.subplots(len(worst), 4, figsize=(12, 2.9 * len(worst)), squeeze=False, layout="constrained")
    for row, i in enumerate(worst):
        image = c.dataset.images[i]
        rgb = load_image(image)
        ref = _labels(c.reference.run_dir, image.stem)  # PNG only (a device's file is not trusted to be one)
        got = _labels(r.run_dir, image.stem)
        tiles = [_tile(rgb), _tile(overlay(rgb, ref, palette)), _tile(overlay(rgb, got, palette)),
                 disagreement(rgb, got, ref, _size(rgb.shape))]
        titles = [image.name, f"reference {c.reference.label}", r.label,
                  f"disagreement ({100 * (1 - r.per_image[i]['agreement']):.2f}% px)"]
        for ax, tile, title in zip(axes[row], tiles, titles, strict=True):
            ax.imshow(tile)
            ax.set_title(title, fontsize="small")
            ax.axis("off")
    fig.suptitle(f"{r.label}: worst images by agreement with the reference")
    return _png(fig)


def render_html(c: Comparison) -> str:
    """``report.html``: one self-contained page (tables, embedded plots)."""
    e = html.escape
    head, rows = summary_rows(c)
    ihead, irows = _iou_rows(c)

    def table(h: list[str], body: list[list[str]]) -> str:
        out = "<table><thead><tr>" + "".join(f"<th>{e(x)}</th>" for x in h) + "</tr></thead><tbody>"
        for row in body:
            cls = ' class="fail"' if row[-1] == "FAIL" else ""
            out += f"<tr{cls}>" + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>"
        return out + "</tbody></table>"

    figures: list[tuple[str, str | None]] = []
    plt = _matplotlib()
    if plt is not None:
        figures.append(("Per-class IoU", _iou_plot(plt, c)))
        figures.append(("Latency vs mIoU", _scatter_plot(plt, c)))
        for r in c.results:
            if not r.is_reference and not r.error:
                figures.append((f"Worst images: {r.label}" + (f" on {r.device}" if r.device != "host" else ""),
                                _worst_plot(plt, c, r)))
        plt.close("all")
    gate = e(_gate_text(c)).replace("**", "").replace("\n", "<br>")
    body = [
        f"<h1>edgeseg comparison: {e(c.reference.info.model)}</h1>",
        f"<p>{e(_dataset_text(c))} Created {e(c.created)}.</p>",
        table(head, rows),
        f'<p class="{"pass" if c.passed else "fail"}">{gate}</p>',
        "<h2>Per-class IoU</h2>",
        table(ihead, irows),
    ]
    if plt is None:
        body.append("<p>No plots: matplotlib is not installed (pip install 'edgeseg[report]').</p>")
    for title, png in figures:
        if png:
            body.append(f'<figure><img alt="{e(title)}" src="data:image/png;base64,{png}"><figcaption>{e(title)}</figcaption></figure>')
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f0f0f0}"
        "tr.fail td{background:#fde0e0}p.fail{color:#b00}p.pass{color:#070}figure{margin:1.5em 0}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>edgeseg comparison: {e(c.reference.info.model)}</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
