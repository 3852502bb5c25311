"""Figures of an audit report: PNG bytes drawn from one analysis of a results.json.

Every public function takes ONE element of ``results["analyses"]`` (``schemas/results.schema.json``)
and returns the bytes of a PNG; :func:`png_data_uri` embeds them in HTML.

Choices:

* Matplotlib draws on a :class:`~matplotlib.figure.Figure` with its own Agg canvas, never through
  ``pyplot``: no global figure registry to leak into, no GUI backend picked, nothing to close but the
  figure itself (cleared after saving). Matplotlib is imported inside the functions, so importing this
  module stays cheap for code that never draws.
* Output is byte-for-byte deterministic for the same input: matplotlib's default style (not the user's
  matplotlibrc), the bundled DejaVu Sans font, a fixed size and dpi, and no "Software" (version) chunk
  in the PNG. The style is set with ``matplotlib.style.context``, which changes the process-wide
  rcParams for the duration of a call: do not draw from several threads at once.
* Figures are 8 inches wide at 100 dpi (800 pixels) and grow in height with the number of groups
  (1 to ~20), so labels keep a readable size; constrained layout keeps long group labels (``sex=F|race=Black``)
  from overlapping the plots without changing the pixel size.
* Colours are the Okabe-Ito palette (safe for the common kinds of colour blindness), yellow left out
  because it is unreadable as a line on white. Beyond seven groups the colours repeat with another line
  style. Target FMRs get one marker shape (and colour, where groups do not own the colours), the same
  in every figure; the heat map uses viridis (perceptually uniform, readable in grey scale).
* A rate of 0 (no error seen) has no place on a log or normal-deviate axis; it is never dropped: a
  separate "0" column (FMR vs target), the edge of the plot (DET), a grey cell reading "0" (heat map).
* Anything undefined in the results (JSON null: a group without impostor or genuine pairs, an empty
  cross-group cell, a missing histogram) is skipped or marked "n/a" / "no pairs"; it never raises.
* Titles and axis labels use plain words for readers who are not biometrics specialists.
* Text is drawn literally (``text.parse_math`` off): labels come from user data, and a ``$`` in one must
  neither start a formula nor make the mathtext parser raise.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

Analysis = Mapping[str, Any]

WIDTH = 8.0  # inches
DPI = 100
#: Okabe-Ito without yellow, in an order where neighbours contrast well.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
LINESTYLES = ("-", "--", ":")
#: One per target FMR (operating point), largest target first as in the results.
OP_MARKERS = ("o", "s", "^", "D", "v", "P")
OP_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#000000")
OP_LINESTYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
GENUINE_COLOUR, IMPOSTOR_COLOUR = "#0072B2", "#D55E00"
ZERO_COLOUR = "#D9D9D9"  # neutral grey: outside the viridis range, so a measured 0 cannot pass for a small rate
#: Rates are clipped to this before the normal-deviate transform (0 and 1 map to infinity).
PROBIT_EPS = 1e-7

_RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib: the same glyphs on every machine
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # Group labels and attribute names are user data: "$" must print as "$", never start mathtext, whose
    # parser raises on a label such as "$\frac{$" and would kill the audit (and TeX is never wanted).
    "text.parse_math": False,
    "text.usetex": False,
}


# ---------------------------------------------------------------- drawing plumbing


@contextmanager
def _figure(height: float, width: float = WIDTH) -> Iterator[Figure]:
    """A fresh figure on its own Agg canvas, drawn under the fixed report style."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # after_reset: start from matplotlib's defaults, not whatever matplotlibrc the user has
    with matplotlib.style.context(_RC, after_reset=True):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        try:
            yield fig
        finally:
            fig.clear()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # no Software chunk: it holds the matplotlib version, which would change the bytes on an upgrade
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src=...>`` in a self-contained HTML report."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _group_style(i: int) -> tuple[str, str]:
    """Colour and line style of the i-th group: colours first, then line styles, so 21 groups stay distinct."""
    return PALETTE[i % len(PALETTE)], LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]


def _op_style(k: int) -> tuple[str, str]:
    """Colour and marker of the k-th operating point (target FMR)."""
    return OP_COLOURS[k % len(OP_COLOURS)], OP_MARKERS[k % len(OP_MARKERS)]


def _op_linestyle(k: int) -> str | tuple[int, tuple[int, ...]]:
    return OP_LINESTYLES[k % len(OP_LINESTYLES)]


def _legend(fig: Figure, handles: Sequence[Artist], ncols: int, title: str | None = None) -> None:
    """A figure legend below the plots, so it never hides data."""
    if handles:
        fig.legend(handles=list(handles), loc="outside lower center", ncols=max(1, min(ncols, len(handles))),
                   frameon=False, title=title, title_fontsize=9)


# ---------------------------------------------------------------- reading the analysis (null-tolerant)


def _num(x: Any) -> float | None:
    """A finite number, or None for JSON null, NaN, infinity or anything that is not a number."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _interval(x: Any) -> tuple[float, float] | None:
    if not isinstance(x, Sequence) or len(x) != 2:
        return None
    lo, hi = _num(x[0]), _num(x[1])
    return None if lo is None or hi is None else (min(lo, hi), max(lo, hi))


def _floats(x: Any) -> np.ndarray:
    """A list of numbers as a float array, NaN where null."""
    if not isinstance(x, Sequence):
        return np.empty(0)
    return np.array([np.nan if (v := _num(e)) is None else v for e in x], dtype=float)


def _labels(analysis: Analysis) -> list[str]:
    return [str(g.get("group")) for g in analysis.get("groups") or []]


def _ops(analysis: Analysis) -> list[Mapping[str, Any]]:
    return list(analysis.get("operating_points") or [])


def _aligned(items: Any, labels: Sequence[str]) -> list[Mapping[str, Any] | None]:
    """Entries of a per-group list in the order of ``labels`` (None where a group has no entry)."""
    by = {str(it.get("group")): it for it in items or [] if isinstance(it, Mapping)}
    return [by.get(lab) for lab in labels]


def _target_words(t: float | None) -> str:
    """A target rate in words: 0.001 -> '1 in 1,000'."""
    if t is None or t <= 0:
        return "n/a"
    inv = 1.0 / t
    if inv >= 2 and abs(inv - round(inv)) <= 1e-6 * inv:
        return f"1 in {round(inv):,}"
    return f"{100 * t:.3g}%"


def _compact(n: float | None) -> str:
    """12345 -> '12k', 4390258 -> '4.4M': counts in panel titles."""
    if n is None:
        return "n/a"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{suffix}" if v < 10 else f"{v:.0f}{suffix}"
    return f"{n:.0f}"


def _percent(p: float) -> str:
    """0.00001 -> '0.001%': positional, no exponent, no trailing zeros."""
    return str(np.format_float_positional(100 * p, precision=6, trim="-")) + "%"


# ---------------------------------------------------------------- one row per group


def _rows_height(n: int, per_row: float, extra: float) -> float:
    return extra + per_row * max(n, 1)


def _group_rows(ax: Axes, labels: Sequence[str]) -> None:
    """One horizontal row per group, the first group at the top, light rules between rows."""
    n = len(labels)
    ax.set_yticks(range(n), labels)
    ax.set_ylim(max(n, 1) - 0.5, -0.5)
    for r in range(1, n):
        ax.axhline(r - 0.5, color="#EEEEEE", lw=0.8, zorder=0)
    ax.tick_params(axis="y", length=0)


def _dodge(k: int, m: int, width: float = 0.7) -> float:
    """Vertical offset of the k-th of m items sharing a group's row."""
    step = min(width / max(m, 1), 0.25)
    return (k - (m - 1) / 2) * step


def _na(ax: Axes, x: float, row: float, text: str = "n/a") -> None:
    ax.text(x, row, text, va="center", ha="left", color="#555555", fontsize=9, style="italic")


def _target_handles(ops: Sequence[Mapping[str, Any]], kind: str) -> list[Line2D]:
    """Legend entries, one per target FMR: 'marker' (coloured marker), 'bar' (coloured square) or 'line'."""
    from matplotlib.lines import Line2D

    out = []
    for k, op in enumerate(ops):
        colour, marker = _op_style(k)
        label = f"promised {_target_words(_num(op.get('target_fmr')))}"
        if kind == "marker":
            out.append(Line2D([], [], color=colour, marker=marker, lw=1.2, label=label))
        elif kind == "bar":
            out.append(Line2D([], [], color=colour, marker="s", ms=10, ls="none", label=label))
        else:
            out.append(Line2D([], [], color="black", ls=_op_linestyle(k), lw=1.2,
                              label=f"threshold for {label} (match: score at or above)"))
    return out


# ---------------------------------------------------------------- figures


def _times(v: float) -> str:
    """A multiple of the target as a tick label: 0.01 -> '0.01×', 1000 -> '1,000×'."""
    return f"{v:,.0f}×" if v >= 1 else f"{np.format_float_positional(v, trim='-')}×"


def fmr_vs_target(analysis: Analysis) -> bytes:
    """Each group's false match rate as a multiple of the promised (target) rate, at every target FMR.

    Log x axis; lines are the group's FMR interval divided by the target. A rate of 0 (no false match
    seen), which a log axis cannot show, sits in a separate grey "0" column on the left; a group without
    impostor pairs reads "n/a".
    """
    from matplotlib.lines import Line2D

    labels, ops = _labels(analysis), _ops(analysis)
    counts = _aligned(analysis.get("counts"), labels)
    # (group, k, x, interval) per drawable point; x may be 0, the interval may be missing
    points: list[tuple[int, int, float | None, tuple[float, float] | None]] = []
    for k, op in enumerate(ops):
        t = _num(op.get("target_fmr"))
        if t is None or t <= 0:
            continue
        for i, g in enumerate(_aligned(op.get("groups"), labels)):
            x = None if g is None else _num(g.get("fmr_vs_target"))
            ci = None if g is None else _interval(g.get("fmr_ci"))
            if x is not None or ci is not None:
                points.append((i, k, x, None if ci is None else (ci[0] / t, ci[1] / t)))
    positive = [v for _, _, x, ci in points for v in (x, *(ci or ())) if v is not None and v > 0]
    lo_dec = min(-1, math.floor(math.log10(min(positive, default=1.0))))  # always show 0.1x to 10x at least
    hi_dec = max(1, math.ceil(math.log10(max(positive, default=1.0))))
    has_zero = any(v == 0 for _, _, x, ci in points for v in (x, *(ci or ())))
    # 0 has no place on a log axis: it gets its own grey column left of the smallest decade, when needed
    zero = 10.0 ** (lo_dec - 0.7)

    with _figure(_rows_height(len(labels), 0.42, 2.4)) as fig:
        ax = fig.add_subplot()
        _group_rows(ax, labels)
        ax.set_xscale("log")
        left = zero / 10**0.3 if has_zero else 10.0 ** (lo_dec - 0.2)
        ax.set_xlim(left, 10.0 ** (hi_dec + 0.2))
        if has_zero:
            ax.axvspan(left, 10.0 ** (lo_dec - 0.35), color="#EFEFEF", lw=0, zorder=0)
        ax.axvline(1.0, color="black", lw=1.2, zorder=1)
        for i, k, x, ci in points:
            colour, marker = _op_style(k)
            row = i + _dodge(k, len(ops))
            if ci is not None:  # a lower bound of 0 (rule of 3) starts in the "0" column
                ax.plot([ci[0] or zero, ci[1] or zero], [row, row], color=colour, lw=1.4, zorder=2)
            if x is not None:
                ax.plot([x or zero], [row], marker=marker, color=colour, ms=7, zorder=3)
        drawn = {i for i, _, _, _ in points}
        for i, c in enumerate(counts):
            if i not in drawn:
                none = c is not None and c.get("impostor_pairs") == 0
                _na(ax, left, i, "  n/a (no impostor pairs in this group)" if none else "  n/a")
        decades = [10.0**d for d in range(lo_dec, hi_dec + 1)]
        ax.set_xticks([zero, *decades] if has_zero else decades,
                      ["0", *map(_times, decades)] if has_zero else list(map(_times, decades)))
        minor = [m * d for d in decades[:-1] for m in (2.0, 5.0)]
        # label 2x and 5x too when there are few decades: they are the values people read off
        ax.set_xticks(minor, list(map(_times, minor)) if hi_dec - lo_dec <= 2 else [], minor=True)
        ax.tick_params(axis="x", which="minor", labelsize=8, labelcolor="#555555")
        ax.grid(axis="x", which="both", color="#E4E4E4", lw=0.6, zorder=0)
        fig.suptitle("False matches in each group, compared with the promised rate")
        ax.set_xlabel("Group's false match rate ÷ promised rate (log scale)\n"
                      "horizontal lines: uncertainty intervals")
        handles = _target_handles(ops, "marker")
        handles.append(Line2D([], [], color="black", lw=1.2, label="1× = as promised"))
        _legend(fig, handles, 4)
        return _png(fig)


def _short_labels(labels: Sequence[str]) -> tuple[list[str], str]:
    """Labels without attribute names when all groups share them: (['F | Black', ...], ' (sex | race)').

    Only for the heat map, whose labels run along both axes; the attribute names go in the axis titles.
    """
    parts = [[p.split("=", 1) for p in lab.split("|")] for lab in labels]
    keys = {tuple(kv[0] for kv in p) for p in parts}
    if len(keys) != 1 or any(len(kv) != 2 for p in parts for kv in p):
        return list(labels), ""
    return [" | ".join(kv[1] for kv in p) for p in parts], f" ({' | '.join(keys.pop())})"


def _cell_text(v: float, n: int) -> str:
    """An FMR for a heat-map cell, shorter when cells are small: 0.00233 -> '2.3e-3' (or '2e-3')."""
    mant, exp = f"{v:.{1 if n <= 10 else 0}e}".split("e")  # keep in step with cell_chars
    return f"{mant}e{int(exp)}"


def cross_group_heatmap(analysis: Analysis, op_index: int = 0) -> bytes:
    """The false match rate of each pair of groups at one operating point, as a heat map of log10 FMR.

    Cells with no false match (FMR = 0, log undefined) are grey and read "0"; cells without any
    impostor pair (null) are hatched. Raises IndexError when ``op_index`` names no operating point.
    """
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch, Rectangle

    ops = _ops(analysis)
    if not -len(ops) <= op_index < len(ops):
        raise IndexError(f"operating point {op_index} requested; the analysis has {len(ops)}")
    op = ops[op_index]
    cross = op.get("cross_group_fmr") or {}
    labels = [str(g) for g in cross.get("groups") or _labels(analysis)]
    n = len(labels)
    rows = list(cross.get("matrix") or [])
    m = np.full((n, n), np.nan)
    for i in range(min(n, len(rows))):
        r = _floats(rows[i])[:n]
        m[i, : len(r)] = r
    logm = np.full_like(m, np.nan)
    np.log10(m, out=logm, where=m > 0)
    finite = logm[np.isfinite(logm)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-6.0, 0.0)
    if vmax - vmin < 1:  # a one-colour matrix would hide the scale: widen to a decade
        mid = (vmin + vmax) / 2
        vmin, vmax = mid - 0.5, mid + 0.5
    short, attrs = _short_labels(labels)
    # size the figure to the square matrix left over beside the labels and colour bar, so a large
    # matrix is not a small square floating in white space
    label_in = 0.075 * max((len(lab) for lab in short), default=1)  # 9 pt DejaVu Sans, about 0.075 in a char
    side = float(np.clip(WIDTH - label_in - 1.8, 2.0, 1.2 + 0.9 * n))
    tilt = n > 2
    cell_chars = 6 if n <= 10 else 4
    fontsize = float(np.clip(side / max(n, 1) * 72 * 0.85 / (0.6 * cell_chars), 5.5, 10))

    with _figure(side + (0.6 * label_in if tilt else 0.3) + 2.2) as fig:
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))  # NaN: transparent
        norm = Normalize(vmin, vmax)
        im = ax.imshow(logm, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                if np.isnan(v):
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="#AAAAAA",
                                           hatch="///", lw=0))
                    if n <= 8:
                        ax.text(j, i, "no pairs", ha="center", va="center", fontsize=fontsize * 0.85,
                                color="#444444", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
                    continue
                if v == 0:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=ZERO_COLOUR, lw=0))
                    text, colour = "0", "black"
                else:
                    r, g, b, _ = cmap(norm(logm[i, j]))
                    text, colour = _cell_text(v, n), "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
        ax.set_xticks(range(n), short, rotation=45 if tilt else 0, ha="right" if tilt else "center",
                      rotation_mode="anchor")
        ax.set_yticks(range(n), short)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel(f"Group{attrs} of the other face\n(diagonal: both faces from the same group)")
        ax.set_ylabel(f"Group{attrs} of one face")
        bar = fig.colorbar(im, ax=ax, shrink=0.8, aspect=25)
        bar.set_label("log10 FMR  (−3 = 1 false match in 1,000)")
        thr = _num(op.get("threshold"))
        fig.suptitle(f"False match rate between groups at threshold {'n/a' if thr is None else f'{thr:.3f}'}\n"
                     f"(the threshold set for a promised {_target_words(_num(op.get('target_fmr')))} overall)")
        key = []  # explain only the special cells this matrix has
        if (m == 0).any():
            key.append(Patch(facecolor=ZERO_COLOUR, label="0: no false match seen"))
        if np.isnan(m).any():
            key.append(Patch(facecolor="white", edgecolor="#AAAAAA", hatch="///",
                             label="no pairs of faces from these groups"))
        _legend(fig, key, 2)
        return _png(fig)


def _probit(p: np.ndarray) -> np.ndarray:
    """Normal deviate of each rate (the DET axes), clipped so that 0 and 1 stay finite."""
    inv = np.vectorize(NormalDist().inv_cdf, otypes=[float])
    return np.asarray(inv(np.clip(p, PROBIT_EPS, 1 - PROBIT_EPS)), dtype=float)


_DET_TICKS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)


def _det_limits(curve: np.ndarray, marks: np.ndarray) -> tuple[float, float]:
    """Axis range as rates: from the decade of the smallest non-zero rate (at least down to 1%) up to 50%,
    or further up when an operating point lies above it (curves run to 100% there, which says nothing)."""
    both = np.concatenate([curve, marks])
    pos = both[np.isfinite(both) & (both > 0)]
    lo = 10.0 ** math.floor(math.log10(max(float(pos.min()), PROBIT_EPS))) if pos.size else 1e-4
    top = marks[np.isfinite(marks)]
    hi = max(0.5, float(top.max()) if top.size else 0.5)
    return min(lo, 1e-2), next((t for t in _DET_TICKS if t >= hi - 1e-12), _DET_TICKS[-1])


def _det_axis(ax: Axes, which: str, lims: tuple[float, float]) -> None:
    ticks = [t for t in _DET_TICKS if lims[0] <= t <= lims[1]]
    pos = [float(p) for p in _probit(np.array(ticks))]
    lo, hi = (float(p) for p in _probit(np.array(lims)))
    pad = 0.03 * (hi - lo)
    labels = [_percent(t) for t in ticks]
    if which == "x":
        # the lowest decades lie close together on a probit axis: tilt their long labels apart
        ax.set_xticks(pos, labels, rotation=30 if lims[0] < 1e-5 else 0, ha="right" if lims[0] < 1e-5 else "center",
                      rotation_mode="anchor")
        ax.set_xlim(lo - pad, hi + pad)
    else:
        ax.set_yticks(pos, labels)
        ax.set_ylim(lo - pad, hi + pad)


def det_curves(analysis: Analysis) -> bytes:
    """Detection error trade-off (DET) curves per group on normal-deviate axes, with the operating points.

    Each curve is the group's FMR against its FNMR as the threshold moves; markers are the group's
    rates at each target FMR's global threshold. Groups without a curve are listed in the legend.
    """
    from matplotlib.lines import Line2D

    labels, ops = _labels(analysis), _ops(analysis)
    curves: list[tuple[np.ndarray, np.ndarray] | None] = []
    for pg in _aligned(analysis.get("per_group"), labels):
        det = pg.get("det") if pg is not None else None
        fmr, fnmr = (_floats(det.get("fmr")), _floats(det.get("fnmr"))) if isinstance(det, Mapping) else (
            np.empty(0), np.empty(0))
        k = min(len(fmr), len(fnmr))
        keep = np.isfinite(fmr[:k]) & np.isfinite(fnmr[:k])
        curves.append((fmr[:k][keep], fnmr[:k][keep]) if keep.any() else None)
    marks = []  # (group, op, fmr, fnmr)
    for k, op in enumerate(ops):
        for i, g in enumerate(_aligned(op.get("groups"), labels)):
            x, y = (None, None) if g is None else (_num(g.get("fmr")), _num(g.get("fnmr")))
            if x is not None and y is not None:
                marks.append((i, k, x, y))
    xlim = _det_limits(np.concatenate([np.empty(0)] + [c[0] for c in curves if c]), np.array([m[2] for m in marks]))
    ylim = _det_limits(np.concatenate([np.empty(0)] + [c[1] for c in curves if c]), np.array([m[3] for m in marks]))
    eers = [None if pg is None else _num(pg.get("eer")) for pg in _aligned(analysis.get("per_group"), labels)]

    texts = [f"{lab}  (no curve: too few pairs)" if c is None else
             f"{lab}  ({'n/a' if eer is None else f'{100 * eer:.3g}%'})"
             for lab, c, eer in zip(labels, curves, eers, strict=True)]
    # as many legend columns as the longest entry allows (about 0.07 in a character at 9 pt, plus the line)
    ncols = int(np.clip(WIDTH // (0.07 * max(map(len, texts), default=1) + 0.8), 1, 3))
    with _figure(6.6 + 0.22 * math.ceil(max(len(labels), 1) / ncols)) as fig:
        ax = fig.add_subplot()
        handles: list[Line2D] = []
        for i, (text, c) in enumerate(zip(texts, curves, strict=True)):
            colour, ls = _group_style(i)
            handles.append(Line2D([], [], color=colour, ls=ls, lw=1.8, label=text))
            if c is not None:
                # rates of 0 run along the axis edge, like the markers, instead of vanishing below it
                ax.plot(_probit(np.maximum(c[0], xlim[0])), _probit(np.maximum(c[1], ylim[0])), color=colour, ls=ls,
                        lw=1.8, zorder=2)
        for i, k, x, y in marks:
            colour, _ = _group_style(i)
            # a rate of 0 sits on the axis edge (clip_on off) rather than off the plot
            ax.plot(_probit(np.array([max(x, xlim[0])])), _probit(np.array([max(y, ylim[0])])),
                    marker=_op_style(k)[1], color=colour, mec="black", mew=0.8, ms=7, ls="none", zorder=3,
                    clip_on=False)
        _det_axis(ax, "x", xlim)
        _det_axis(ax, "y", ylim)
        ax.grid(color="#DDDDDD", lw=0.6)
        ax.set_xlabel("False match rate: different people accepted as the same person\n"
                      "(normal-deviate scales; a rate of 0 is drawn on the edge of the plot)")
        ax.set_ylabel("False non-match rate: the same person rejected")
        fig.suptitle("Trade-off between the two kinds of error, per group (lower left is better)")
        if ops:
            ax.legend(handles=[Line2D([], [], color="#555555", marker=_op_style(k)[1], ls="none", ms=7,
                                      label=f"at the threshold for {_target_words(_num(op.get('target_fmr')))}")
                               for k, op in enumerate(ops)], loc="upper right", framealpha=0.9)
        _legend(fig, handles, ncols, "Group (equal error rate: where both kinds of error are equally common)")
        return _png(fig)


def _histogram(pg: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(edges, genuine, impostor) counts of a group, or None when missing or malformed."""
    h = pg.get("score_histogram") if pg is not None else None
    if not isinstance(h, Mapping):
        return None
    edges, gen, imp = _floats(h.get("edges")), _floats(h.get("genuine")), _floats(h.get("impostor"))
    if len(edges) < 2 or len(gen) != len(edges) - 1 or len(imp) != len(gen) or not np.isfinite(edges).all():
        return None
    return edges, np.nan_to_num(gen), np.nan_to_num(imp)


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray | None:
    total = counts.sum()
    return counts / (total * np.diff(edges)) if total > 0 else None


def score_distributions(analysis: Analysis) -> bytes:
    """Genuine and impostor score densities per group (one small panel each), with the global thresholds.

    Linear y (the bulk of each distribution; the far impostor tail is the FMR figures' job). A group
    without a histogram, or with no pairs in it, gets an empty panel reading "no pairs".
    """
    from matplotlib.patches import Patch

    labels, ops = _labels(analysis), _ops(analysis)
    hists = [_histogram(pg) for pg in _aligned(analysis.get("per_group"), labels)]
    thresholds = [(k, t) for k, op in enumerate(ops) if (t := _num(op.get("threshold"))) is not None]
    # x range: where any group has pairs, and every threshold, so panels share one readable axis
    spans: list[float] = [t for _, t in thresholds]
    for h in hists:
        if h is not None:
            used = np.flatnonzero((h[1] + h[2]) > 0)
            if used.size:
                spans += [float(h[0][used[0]]), float(h[0][used[-1] + 1])]
    x_lo, x_hi = (min(spans), max(spans)) if spans else (0.0, 1.0)
    pad = 0.03 * (x_hi - x_lo) or 0.05

    n = max(len(labels), 1)
    ncols = 1 if n == 1 else 2 if n <= 4 else 3  # 4 columns would cut long labels like sex=M|race=Black
    nrows = math.ceil(n / ncols)
    with _figure(1.9 + (2.4 if nrows == 1 else 1.8) * nrows) as fig:
        axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
        for a, ax in enumerate(axes):
            if a >= len(labels):
                ax.set_visible(False)
                if a >= ncols:  # the panel above is the last of its column: it needs the x labels
                    axes[a - ncols].tick_params(labelbottom=True)
                    axes[a - ncols].set_xlabel("Similarity score")
                continue
            if a >= len(axes) - ncols:
                ax.set_xlabel("Similarity score")
            h = hists[a]
            gen = _density(h[1], h[0]) if h is not None else None
            imp = _density(h[2], h[0]) if h is not None else None
            ax.set_yticks([])
            ax.spines["left"].set_visible(False)
            if h is None or (gen is None and imp is None):
                ax.set_title(labels[a], fontsize=10)
                ax.text(0.5, 0.5, "no pairs", transform=ax.transAxes, ha="center", va="center", color="#555555",
                        style="italic")
                continue
            for dens, colour in ((imp, IMPOSTOR_COLOUR), (gen, GENUINE_COLOUR)):
                if dens is not None:
                    ax.stairs(dens, h[0], color=colour, lw=1.3, fill=False, zorder=2)
                    ax.stairs(dens, h[0], color=colour, alpha=0.15, fill=True, lw=0, zorder=1)
            for k, t in thresholds:
                ax.axvline(t, color="black", ls=_op_linestyle(k), lw=1.0, zorder=3)
            ax.set_title(f"{labels[a]}\n{_compact(h[1].sum())} genuine · {_compact(h[2].sum())} impostor",
                         fontsize=9)
            ax.set_ylim(bottom=0)
        axes[0].set_xlim(x_lo - pad, x_hi + pad)
        if not labels:
            axes[0].set_visible(True)
            axes[0].text(0.5, 0.5, "no groups", transform=axes[0].transAxes, ha="center", va="center")
        fig.suptitle("How similar the system finds pairs of faces, per group")
        fig.supylabel("Share of pairs (each curve's area is 1)", fontsize=10)
        _legend(fig, [Patch(facecolor=GENUINE_COLOUR, alpha=0.6, label="genuine pairs (same person)"),
                            Patch(facecolor=IMPOSTOR_COLOUR, alpha=0.6, label="impostor pairs (different people)"),
                            *_target_handles(ops, "line")], 2)
        return _png(fig)


def _bar_rows(ax: Axes, labels: Sequence[str], values: Sequence[Sequence[float | None]],
              texts: Sequence[Sequence[str]], colours: Sequence[str], na: Sequence[str]) -> None:
    """Horizontal bars, one set per series (values[s][group]), each annotated at its end; "n/a" rows."""
    _group_rows(ax, labels)
    for s, series in enumerate(values):
        off, height = _dodge(s, len(values)), min(0.7 / max(len(values), 1), 0.6)
        for i, v in enumerate(series):
            if v is None:
                continue
            ax.barh(i + off, v, height=height, color=colours[s], zorder=2)
            # offset in points, not data units: readable whatever the axis range
            ax.annotate(texts[s][i], (v, i + off), xytext=(3 if v >= 0 else -3, 0), textcoords="offset points",
                        va="center", ha="left" if v >= 0 else "right", fontsize=8 if len(values) > 1 else 9)
    for i in range(len(labels)):
        if all(series[i] is None for series in values):
            _na(ax, 0.0, i, f"  {na[i]}")
    ax.axvline(0, color="black", lw=1.0, zorder=3)
    ax.grid(axis="x", color="#DDDDDD", lw=0.6, zorder=0)


def _shift_text(v: float | None) -> str:
    if v is None:
        return ""
    if v == 0 or abs(v) >= 0.0005:
        return f"{v:+.3f}"
    return str(np.format_float_positional(v, precision=1, unique=False, fractional=False, sign=True))  # not "-0.000"


def threshold_shift(analysis: Analysis) -> bytes:
    """Per group and target FMR: the threshold the group alone would need minus the global threshold.

    Positive: the group gets more false matches than promised at the shared threshold, and would need a
    stricter one; negative: fewer. Undefined shifts (no impostor pairs) are skipped.
    """
    labels, ops = _labels(analysis), _ops(analysis)
    values: list[list[float | None]] = []
    for op in ops:
        groups = _aligned(op.get("groups"), labels)
        values.append([None if g is None else _num(g.get("threshold_shift")) for g in groups])
    drawn = [abs(v) for series in values for v in series if v is not None]
    lim = 1.35 * max(drawn, default=0.0) or 0.01

    with _figure(_rows_height(len(labels), 0.3 + 0.12 * len(ops), 2.6)) as fig:
        ax = fig.add_subplot()
        _bar_rows(ax, labels, values, [[_shift_text(v) for v in s] for s in values],
                  [_op_style(k)[0] for k in range(len(ops))], ["n/a"] * len(labels))
        ax.set_xlim(-lim, lim)
        fig.suptitle("How far each group's own threshold is from the shared threshold")
        # the axis is symmetric about 0, so the two hints sit either side of the zero line
        ax.set_xlabel("Threshold the group alone would need to keep the promised rate,\n"
                      "minus the shared threshold (similarity score units)\n"
                      "← fewer false matches than promised  |  more false matches than promised →")
        _legend(fig, _target_handles(ops, "bar"), 4)
        return _png(fig)


def enrolment(analysis: Analysis) -> bytes:
    """Failure-to-enrol rate per group (images where no usable face was found), annotated "3 of 120"."""
    from matplotlib.ticker import PercentFormatter

    labels = _labels(analysis)
    rates: list[float | None] = []
    texts: list[str] = []
    for c in _aligned(analysis.get("counts"), labels):
        failed = None if c is None else _num(c.get("failed_to_enrol"))
        images = None if c is None else _num(c.get("images"))
        ok = failed is not None and images is not None and images > 0
        rates.append(failed / images if ok and failed is not None and images is not None else None)
        texts.append(f"{failed:,.0f} of {images:,.0f}" if ok else "")
    top = max((r for r in rates if r is not None), default=0.0)

    with _figure(_rows_height(len(labels), 0.32, 1.8)) as fig:
        ax = fig.add_subplot()
        _bar_rows(ax, labels, [rates], [texts], [PALETTE[0]], ["n/a (no images)"] * len(labels))
        ax.set_xlim(0, 1.3 * top if top > 0 else 0.01)  # room for the "3 of 120" text; 0-1% when all enrol
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
        fig.suptitle("Images where no face could be enrolled, per group")
        ax.set_xlabel("Failure-to-enrol rate (share of the group's images)")
        return _png(fig)
