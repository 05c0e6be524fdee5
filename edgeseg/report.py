"""Writing a :class:`~edgeseg.compare.Comparison` as ``report.json``, ``report.md`` and ``report.html``.

* ``report.json``: the canonical data (:meth:`Comparison.to_dict`, schema ``edgeseg.compare`` v1).
* ``report.md``: the summary table in the layout of MMSegmentation's model-zoo
  tables (Method, Backend, Precision, Shape, Size, Mem, Latency/FPS, Device,
  mIoU, Δ vs fp32), per-class IoU (one row per class, one column per target),
  and the gate's verdict.
* ``report.html``: one self-contained page (plots embedded as base64 PNG data
  URIs, no external files or scripts) whose tables wrap within the page: the
  tables, a per-class IoU heat map (:func:`iou_figure`), latency vs mIoU
  (:func:`scatter_figure`), and for each target its worst images as a grid of
  input / reference / target / disagreement. Plots are drawn with matplotlib
  (``pip install 'edgeseg[report]'``); without it the page has the tables only
  and says so.

The Shape column gives the network input's H x W; a dynamic (symbolic) dim is
shown as its axis letter (``HxW``, ``256xW``) whatever the graph names it
(``p2o.DynamicDimension.1``, ``unk__123``): the names are in the HTML cell's
tooltip, in a note under the Markdown table, and in ``report.json``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeseg_runtime.images import load_image, overlay

from .compare import Comparison, TargetResult, _labels, same_source

__all__ = ["write_report", "render_markdown", "render_html", "render_console", "summary_rows", "SUMMARY_COLUMNS",
           "CONSOLE_COLUMNS", "shape_text", "shape_title", "iou_figure", "scatter_figure"]

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
#: axis letters of the NCHW network input, shown for its dynamic dims
_AXES = "NCHW"
#: a console column is not wrapped narrower than this (characters)
_MIN_CONSOLE_WIDTH = 6


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


def _dynamic(dim: int | str | None) -> bool:
    return not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0)


def shape_text(shape: Sequence[int | str | None]) -> str:
    """The Shape column: ``H x W`` of an ``[N, 3, H, W]`` network input (``"256x512"``).

    A dynamic dim (a ``dim_param`` name such as ``p2o.DynamicDimension.1`` or
    ``unk__123``, ``"?"``, None, or a value <= 0) is shown as its axis letter:
    ``"HxW"``, ``"256xW"``. A shape that is not 4-D is joined whole, dynamic
    dims as ``"?"``.
    """
    dims = list(shape)
    if len(dims) != 4:
        return "x".join("?" if _dynamic(d) else str(d) for d in dims)
    return "x".join(_AXES[k] if _dynamic(d) else str(d) for k, d in enumerate(dims) if k >= 2)


def shape_title(shape: Sequence[int | str | None]) -> str:
    """The whole input shape with the names of its dynamic dims, for a tooltip or a note:
    ``"input 1x3xHxW (H = p2o.DynamicDimension.1, W = unk__123)"``; no parenthesis when every dim is static."""
    dims = list(shape)
    letters = _AXES if len(dims) == 4 else "?" * len(dims)
    text = "x".join(letters[k] if _dynamic(d) else str(d) for k, d in enumerate(dims))
    names = [f"{letters[k]} = {d}" for k, d in enumerate(dims) if _dynamic(d) and len(dims) == 4]
    return f"input {text}" + (f" ({', '.join(names)})" if names else "")


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
        "shape": shape_text(i.input_shape), "size": _mb(i.model_bytes),
        "mem": _mb(r.peak_memory_bytes), "latency": latency,
        "device": r.device if r.device != "host" else f"host ({r.run['machine']})" if r.run else "host",
        "miou": miou, "delta": delta, "agreement": agreement, "max_abs_diff": max_diff,
        "gate": "ref" if r.is_reference else ("pass" if r.passed else "FAIL"),
    }


def render_console(c: Comparison, columns: Sequence[str] = CONSOLE_COLUMNS, width: int | None = None) -> str:
    """The summary table as aligned plain text (what ``edgeseg compare`` prints), ``columns`` of :func:`summary_rows`.

    Args:
        width: the widest line in characters (None = the terminal's, ``$COLUMNS``,
            else 120); the widest columns' cells wrap onto more lines to fit,
            between words first, down to 6 characters a column (9 columns: 70).

    A note follows the table when a row comes from another source model than the reference.
    """
    head, rows = summary_rows(c, columns)
    width = width if width is not None else shutil.get_terminal_size((120, 24)).columns
    note = _other_sources_note(c)
    return "\n".join(_aligned([head, *rows], width) + ([textwrap.fill(note, max(40, width))] if note else []))


def _aligned(rows: list[list[str]], width: int) -> list[str]:
    """Rows of cells as text lines at most ``width`` wide where the columns allow (cells wrapped within their column)."""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    words = [max(max(map(len, row[k].split()), default=0) for row in rows) for k in range(len(rows[0]))]
    for floor in (words, [_MIN_CONSOLE_WIDTH] * len(widths)):  # wrap between words first, then within them
        while sum(widths) + 2 * (len(widths) - 1) > width:
            k = max(range(len(widths)), key=lambda j: widths[j] - floor[j])
            if widths[k] <= max(floor[k], _MIN_CONSOLE_WIDTH):
                break
            widths[k] -= 1
    lines = []
    for row in rows:
        cells = [textwrap.wrap(cell, w) or [""] for cell, w in zip(row, widths, strict=True)]
        for n in range(max(len(cell) for cell in cells)):
            lines.append("  ".join((cell[n] if n < len(cell) else "").ljust(w)
                                   for cell, w in zip(cells, widths, strict=True)).rstrip())
    return lines


def _other_sources_note(c: Comparison) -> str:
    """A line naming the rows built from another source model than the reference ("" when none)."""
    others = [r.label for r in c.results if not same_source(r.info, c.reference.info)]
    if not others:
        return ""
    return (f"Note: {', '.join(others)} come from another source model than the reference {c.reference.label} "
            "(compared with --allow-other-sources): their Δ and gate measure the difference between models.")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[cell.replace("|", "\\|") for cell in row] for row in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def _iou_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU in %: one row per class, one column per target that ran (a page holds 150 classes this way)."""
    basis = "ground truth" if c.dataset.has_masks else "fp32 labels"
    ran = [(r, r.vs_ground_truth or r.vs_reference) for r in c.results]
    ran = [(r, scores) for r, scores in ran if scores is not None]
    head = [f"Class (IoU % vs {basis})", *(r.label for r, _ in ran)]
    rows = [[name, *("n/a" if s.iou[k] != s.iou[k] else f"{100 * s.iou[k]:.2f}" for _, s in ran)]
            for k, name in enumerate(c.classes)]
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
        *_shape_notes(c),
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
    note = _other_sources_note(c)
    if note:
        parts += [note, ""]
    return "\n".join(parts)


def _shape_notes(c: Comparison) -> list[str]:
    """Markdown lines naming the dynamic dims of the Shape column (none when every input is static)."""
    seen: dict[str, list[str]] = {}
    for r in c.results:
        if any(_dynamic(d) for d in r.info.input_shape):
            seen.setdefault(shape_title(r.info.input_shape), []).append(f"`{r.label}`")
    if not seen:
        return []
    return ["Shape: H x W of the network input; a letter is a dynamic dim. "
            + "; ".join(f"{', '.join(labels)}: {title}" for title, labels in seen.items()) + ".", ""]


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


def iou_figure(plt: Any, c: Comparison) -> Any:
    """Per-class IoU as an annotated heat map: one row per class, one column per target that ran.

    Each cell gives the IoU in % (two decimals, so 98.74 never reads as 100)
    and, with masks, its difference from the reference's IoU in points; the
    colour is that difference (red = below the fp32 reference, blue = above,
    white = equal; each side of the scale reaches the largest difference that
    way, at least 0.5 points, logarithmically past 0.25 points so that a drop of
    one point stays visible beside one of fifteen), keyed by a colour bar
    outside the cells. Without masks the IoU is against the reference's labels
    (the reference itself would be 100 everywhere and gets no column). With more
    than :data:`MAX_PLOT_CLASSES` classes, those with the largest differences
    are shown, in class order.

    Args:
        plt: ``matplotlib.pyplot``.
        c: the comparison.

    Returns:
        A matplotlib ``Figure`` (``fig.axes[0]`` the cells, ``fig.axes[1]`` the
        colour bar, below the cells for up to 6 classes, else right of them), or
        None when no target other than the reference ran.
    """
    ran = [r for r in c.results if (r.vs_ground_truth or r.vs_reference) is not None]
    if not c.dataset.has_masks:
        ran = [r for r in ran if not r.is_reference]
    if not ran:
        return None
    ious = 100 * np.array([(r.vs_ground_truth or r.vs_reference).iou for r in ran], dtype=np.float64)  # type: ignore[union-attr]
    ref = c.reference
    if c.dataset.has_masks and ref.vs_ground_truth is not None:
        delta = ious - 100 * np.asarray(ref.vs_ground_truth.iou, dtype=np.float64)
    else:
        delta = ious - 100.0  # IoU vs the reference's own labels: the reference is 100
    classes = np.arange(len(c.classes))
    if len(classes) > MAX_PLOT_CLASSES:
        worst = np.nan_to_num(np.nanmax(np.abs(delta), axis=0, initial=0.0, where=~np.isnan(delta)), nan=0.0)
        classes = np.sort(np.argsort(-worst, kind="stable")[:MAX_PLOT_CLASSES])
    cells, diffs = ious[:, classes].T, delta[:, classes].T  # (classes, targets)
    low = min(-0.5, float(np.nanmin(diffs, initial=0.0)))
    high = max(0.5, float(np.nanmax(diffs, initial=0.0)))
    with_delta = c.dataset.has_masks
    rows, cols = cells.shape
    name_width = max(len(c.classes[i]) for i in classes)
    label_width = max(len(r.label) + 6 * r.is_reference for r in ran)
    col_w = max(0.75, 0.075 * label_width, 1.15 if with_delta else 0.7)
    below = rows <= 6  # a short map gets its colour bar below, a tall one right of it
    fig, ax = plt.subplots(figsize=(0.5 + 0.08 * name_width + col_w * cols + (0 if below else 1.1),
                                    1.5 + 0.36 * rows + (0.9 if below else 0)), layout="constrained")
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    norm = _delta_norm(low, high)
    image = ax.imshow(np.ma.masked_invalid(diffs), cmap=cmap, norm=norm, aspect="auto")
    for y in range(rows):
        for x in range(cols):
            iou, d = cells[y, x], diffs[y, x]
            if np.isnan(iou):
                text, colour = "n/a", "black"
            else:
                known = not np.isnan(d)
                shift = with_delta and not ran[x].is_reference and known and round(float(d), 2) != 0
                text = f"{iou:.2f}" + (f" ({d:+.2f})" if shift else "")
                r_, g_, b_, _ = cmap(norm(d)) if known else (1.0, 1.0, 1.0, 1.0)
                colour = "white" if 0.299 * r_ + 0.587 * g_ + 0.114 * b_ < 0.5 else "black"
            ax.text(x, y, text, ha="center", va="center", fontsize=8.5, color=colour)
    ax.set_xticks(np.arange(cols), [r.label + (" (ref)" if r.is_reference else "") for r in ran], fontsize="small")
    ax.xaxis.tick_top()
    ax.tick_params(axis="x", rotation=20 if cols > 3 else 0)
    for label in ax.get_xticklabels():
        label.set_ha("left" if cols > 3 else "center")
    ax.set_yticks(np.arange(rows), [c.classes[i] for i in classes], fontsize="small")
    ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    basis = "ground truth" if c.dataset.has_masks else "the fp32 reference's labels"
    shown = f"; {rows} of {len(c.classes)} classes, largest differences" if rows < len(c.classes) else ""
    ax.set_title(f"Per-class IoU (%) vs {basis}{shown}", fontsize="medium")
    bar = fig.colorbar(image, ax=ax, location="bottom" if below else "right", shrink=0.6 if below else 0.9,
                       aspect=30 if below else 25, pad=0.02)
    ticks = [v for v in _DELTA_TICKS if low <= v <= high and not (v == -0.5 and low <= -1 or v == 0.5 and high >= 1)]
    bar.set_ticks(ticks, labels=[f"{v:+g}" if v else "0" for v in ticks])
    bar.set_label("Δ IoU vs the fp32 reference (points): red below, blue above", fontsize="small")
    return fig


#: the colour bar's ticks (points of IoU), those within the differences' range
_DELTA_TICKS = (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10, 20, 50)
#: below this many points the heat map's colour is linear in the difference, above it logarithmic
_DELTA_LINEAR = 0.25


def _delta_norm(low: float, high: float) -> Any:
    """A matplotlib norm of IoU differences in points: ``low`` (< 0) -> 0, 0 -> 0.5, ``high`` (> 0) -> 1, each side
    growing with ``log1p(|d| / 0.25)``."""
    from matplotlib.colors import FuncNorm  # plt is given: matplotlib is installed

    g_low, g_high = np.log1p(-low / _DELTA_LINEAR), np.log1p(high / _DELTA_LINEAR)

    def forward(d: Any) -> Any:
        d = np.asarray(d, dtype=np.float64)
        g = np.log1p(np.abs(d) / _DELTA_LINEAR)
        return 0.5 + 0.5 * np.where(d >= 0, g / g_high, -g / g_low)

    def inverse(y: Any) -> Any:
        y = np.asarray(y, dtype=np.float64)
        return np.where(y >= 0.5, _DELTA_LINEAR * np.expm1((y - 0.5) * 2 * g_high),
                        -_DELTA_LINEAR * np.expm1((0.5 - y) * 2 * g_low))

    return FuncNorm((forward, inverse), vmin=low, vmax=high)


def scatter_figure(plt: Any, c: Comparison) -> Any:
    """Latency p50 (ms) against mIoU (points), one marker per target that ran, the reference a star.

    Each point is labelled right of the axes with its target, latency and mIoU,
    joined to it by a leader line; the labels are stacked in the order of their
    points' mIoU and spread apart so that none overlaps another (the figure
    grows with the number of targets). The latency axis is logarithmic when
    the slowest target is over 10 times the fastest.

    Args:
        plt: ``matplotlib.pyplot``.
        c: the comparison.

    Returns:
        A matplotlib ``Figure`` whose first axes' texts are the labels, or None when no target ran.
    """
    ran = [r for r in c.results if r.run and r.vs_reference is not None]
    if not ran:
        return None
    lat = np.array([r.latency.p50 for r in ran], dtype=np.float64)
    miou = np.array([r.miou for r in ran], dtype=np.float64)
    fontsize, line = 8.0, 8.0 * 1.6 / 72  # label height with spacing, inches
    axes_h = max(3.0, len(ran) * line * 1.1)
    fig = plt.figure(figsize=(9.5, axes_h + 1.1))
    ax = fig.add_axes((0.85 / 9.5, 0.65 / (axes_h + 1.1), 5.2 / 9.5, axes_h / (axes_h + 1.1)))
    log = bool(lat.min() > 0 and lat.max() / lat.min() > 10)
    if log:
        ax.set_xscale("log")
        lo, hi = np.log10(lat.min()), np.log10(lat.max())
        pad = max(0.05, 0.08 * (hi - lo))
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    else:
        lo, hi = float(lat.min()), float(lat.max())
        pad = max(0.08 * (hi - lo), 0.05 * hi, 0.01)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    finite = miou[np.isfinite(miou)]
    ylo, yhi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    ypad = max(0.1 * (yhi - ylo), 0.05)
    ax.set_ylim(ylo - ypad, yhi + ypad)
    colours = plt.get_cmap("tab10" if len(ran) <= 10 else "tab20").colors
    wanted = (np.nan_to_num(miou, nan=ylo) - (ylo - ypad)) / (yhi - ylo + 2 * ypad)  # axes fraction of each point
    xs = np.log10(np.maximum(lat, 1e-9)) if log else lat
    places = _spread(wanted, line / axes_h, -xs)
    for k, r in enumerate(ran):
        colour = colours[k % len(colours)]
        ax.scatter([lat[k]], [miou[k]], s=90 if r.is_reference else 45, marker="*" if r.is_reference else "o",
                   facecolors="none" if not r.is_reference else colour, edgecolors=colour, linewidths=1.4, zorder=3)
        name = r.label + (" (ref)" if r.is_reference else "") + (f" @{r.device}" if r.device != "host" else "")
        ax.annotate(f"{name}: {lat[k]:.2f} ms, {miou[k]:.2f}", (lat[k], miou[k]), xytext=(1.04, places[k]),
                    textcoords="axes fraction", va="center", ha="left", fontsize=fontsize, color=colour,
                    annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6, "alpha": 0.6, "shrinkA": 0, "shrinkB": 4},
                    zorder=2)
    ax.set_xlabel("latency p50 (ms, pre + inference + post" + ("; log scale)" if log else ")"))
    ax.set_ylabel("mIoU " + ("vs ground truth" if c.dataset.has_masks else "vs fp32 labels"))
    ax.set_title("Latency vs mIoU (up and left is better)", fontsize="medium")
    ax.grid(alpha=0.3)
    return fig


def _spread(wanted: np.ndarray, gap: float, tie: np.ndarray) -> np.ndarray:
    """Positions in [0, 1] near ``wanted`` and at least ``gap`` apart, in the order of ``wanted`` (within half a gap,
    of ``tie``: with ``-x``, of points level with each other the leftmost gets the highest label, so that their
    leader lines do not cross)."""
    order = np.lexsort((tie, np.round(wanted / (gap / 2))))
    n = len(wanted)
    gap = min(gap, 1.0 / max(n, 1))
    pos = np.clip(wanted[order].astype(np.float64), gap / 2, 1 - gap / 2)
    for k in range(1, n):  # push up
        pos[k] = max(pos[k], pos[k - 1] + gap)
    if n and pos[-1] > 1 - gap / 2:  # then back down from the top
        pos[-1] = 1 - gap / 2
        for k in range(n - 2, -1, -1):
            pos[k] = min(pos[k], pos[k + 1] - gap)
    out = np.empty(n)
    out[order] = pos
    return out


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


#: the page's CSS: a table wraps its cells between words (never within one) to fit the page; one that cannot fit
#: even so (a phone) scrolls within its own box, so the page itself is never wider than the window
_STYLE = (
    "body{font-family:sans-serif;margin:2em auto;padding:0 1.5em;max-width:1400px}"
    "div.table{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:1em 0;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:4px 6px;text-align:right;overflow-wrap:break-word}th{background:#f0f0f0}"
    "td:first-child,th:first-child{text-align:left}"
    "td[title]{text-decoration:underline dotted;cursor:help}"
    "tr.fail td{background:#fde0e0}p.fail{color:#b00}p.pass{color:#070}p,h1,h2{overflow-wrap:anywhere}"
    "figure{margin:1.5em 0}img{max-width:100%;height:auto}"
)
def _html_table(head: list[str], body: list[list[str]], titles: list[dict[int, str]] | None = None) -> str:
    """A table in a box that keeps it within the page; ``titles[row][col]``: a cell's tooltip."""
    e = html.escape

    def cell(value: str, tip: str | None) -> str:
        return f'<td title="{e(tip)}">{e(value)}</td>' if tip else f"<td>{e(value)}</td>"

    out = '<div class="table"><table><thead><tr>' + "".join(f"<th>{e(x)}</th>" for x in head) + "</tr></thead><tbody>"
    for n, row in enumerate(body):
        cls = ' class="fail"' if row[-1] == "FAIL" else ""
        tips = titles[n] if titles else {}
        out += f"<tr{cls}>" + "".join(cell(x, tips.get(k)) for k, x in enumerate(row)) + "</tr>"
    return out + "</tbody></table></div>"


def render_html(c: Comparison) -> str:
    """``report.html``: one self-contained page (tables that wrap within the page, embedded plots).

    The Shape cells of dynamic inputs carry the dims' full names as a tooltip (``title``).
    """
    e = html.escape
    head, rows = summary_rows(c)
    ihead, irows = _iou_rows(c)
    shape_col = SUMMARY_COLUMNS.index("shape")
    tips = [{shape_col: shape_title(r.info.input_shape)} if any(_dynamic(d) for d in r.info.input_shape) else {}
            for r in c.results]

    figures: list[tuple[str, str | None]] = []
    plt = _matplotlib()
    if plt is not None:
        for title, make in (("Per-class IoU", iou_figure), ("Latency vs mIoU", scatter_figure)):
            fig = make(plt, c)
            figures.append((title, _png(fig) if fig is not None else None))
        for r in c.results:
            if not r.is_reference and not r.error:
                figures.append((f"Worst images: {r.label}" + (f" on {r.device}" if r.device != "host" else ""),
                                _worst_plot(plt, c, r)))
        plt.close("all")
    gate = e(_gate_text(c)).replace("**", "").replace("\n", "<br>")
    body = [
        f"<h1>edgeseg comparison: {e(c.reference.info.model)}</h1>",
        f"<p>{e(_dataset_text(c))} Created {e(c.created)}.</p>",
        _html_table(head, rows, tips),
        *(f"<p>{e(line)}</p>" for line in [_other_sources_note(c)] if line),
        f'<p class="{"pass" if c.passed else "fail"}">{gate}</p>',
        "<h2>Per-class IoU</h2>",
        _html_table(ihead, irows),
    ]
    if plt is None:
        body.append("<p>No plots: matplotlib is not installed (pip install 'edgeseg[report]').</p>")
    for title, png in figures:
        if png:
            body.append(f'<figure><img alt="{e(title)}" src="data:image/png;base64,{png}"><figcaption>{e(title)}</figcaption></figure>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>edgeseg comparison: {e(c.reference.info.model)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
