"""The figures: ``results/{experiment}/figures/{name}.png|.pdf`` for ``scores``, ``retention_vs_gain`` and ``training_curves``.

Colours and markers are fixed per run by its position in the config's run order (base always grey), so a run looks
the same in every figure. No pyplot: figures are drawn on their own Agg canvas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from statepost.io import atomic_file

from .load import BASE, label
from .load import benchmark as benchmark_facts

FIGURES = ("scores", "retention_vs_gain", "training_curves")
FIGURE_FORMATS = ("png", "pdf")
FIGURE_DPI = 200

# Okabe-Ito (colour-blind safe) without black/yellow first, then tab10 for long run lists. Base is always grey.
BASE_COLOR = "#6e6e6e"
PALETTE = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
    "#8c564b", "#bcbd22", "#17becf", "#9467bd", "#F0E442", "#1f77b4",
)  # fmt: skip
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")

# The second training-curve panel per signal type: (metrics.jsonl key, axis label); nll has none (loss is the signal).
SIGNAL_PANEL = {"teacher_kl": ("kl", "KL to teacher"), "reward": ("reward", "mean reward")}


def run_colors(runs: Iterable[str]) -> dict[str, str]:
    """A fixed colour per run, keyed by position in the config's run order (base is always grey)."""
    colors, i = {}, 0
    for run in runs:
        if run == BASE:
            colors[run] = BASE_COLOR
        else:
            colors[run] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors


def run_markers(runs: Iterable[str]) -> dict[str, str]:
    markers, i = {}, 0
    for run in runs:
        if run == BASE:
            markers[run] = "*"
        else:
            markers[run] = MARKERS[i % len(MARKERS)]
            i += 1
    return markers


_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,
    "savefig.bbox": "tight",
}


def _figure(figsize):
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global figure registry, no GUI backend
    return fig


def _rc():
    return matplotlib.rc_context(_RC)


def metric_label(benchmark: str, metric: str | None = None) -> str:
    """How an axis names a benchmark's metric: its label and lm-eval metric key (default: the primary one,
    from ``workflow/tasks/benchmarks.yaml``), e.g. ``GSM8K exact match (strict-match)``, ``MMLU acc``."""
    name, _, filt = (metric or benchmark_facts(benchmark).primary_metric).partition(",")
    return f"{label(benchmark)} {name.replace('_', ' ')}" + (f" ({filt})" if filt and filt != "none" else "")


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels, at most ``max_cols`` per row, rows filled as evenly as possible."""
    rows = max(1, math.ceil(n / max_cols))
    return rows, max(1, math.ceil(n / rows))


# How a run's seeds differ in every figure that draws them on one axis: the k-th seed's line style.
SEED_STYLES = ("-", "--", ":", "-.")

# A bar lower than this fraction of its axis is drawn as a marker at its value, with the value written above it.
LOW_BAR = 0.02


def scores_figure(summary: pd.DataFrame, colors: Mapping[str, str] | None = None, scores: pd.DataFrame | None = None):
    """One panel per benchmark (y: its primary metric, named from the summary's ``metric``), one bar per run;
    error bars = seed std (>1 seed) or lm-eval stderr. With ``scores`` given, each seed's score is drawn as a dot on
    its bar. A bar too low to see (a score of 0) is drawn as a line in the run's colour with its value above."""
    runs = list(dict.fromkeys(summary["run"]))
    benches = list(dict.fromkeys(summary["benchmark"]))
    colors = dict(colors or run_colors(runs))
    look = summary.set_index(["run", "benchmark"])
    prim = None if scores is None else scores[scores["primary"]] if "primary" in scores else scores
    n_seeds = {run: int(look["n_seeds"].get((run, benches[0]), 1)) for run in runs}
    ticks = [f"{run} ({n_seeds[run]} seeds)" if n_seeds[run] > 1 else run for run in runs]
    nrows, ncols = _grid(len(benches), 3)
    with _rc():
        fig = _figure((ncols * max(2.6, 0.9 + 0.42 * len(runs)), 3.3 * nrows + 0.4))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        x = np.arange(len(runs))
        for ax, b in zip(axes, benches):
            means = np.array([look["mean"].get((run, b), np.nan) for run in runs], dtype=float)
            err = np.nan_to_num(np.array([look["spread"].get((run, b), np.nan) for run in runs], dtype=float))
            seeds = {run: prim.loc[(prim["run"] == run) & (prim["benchmark"] == b), "value"].to_numpy(float)
                     for run in runs} if prim is not None else {}  # fmt: skip
            top = np.nanmax([*(means + err), *(v.max() for v in seeds.values() if len(v)), 0.0])
            ymax = min(1.0, max(0.05, float(top) * 1.18))
            ax.bar(
                x, means, 0.75, yerr=err, color=[colors[r] for r in runs], edgecolor="black", linewidth=0.4,
                error_kw={"elinewidth": 1, "capsize": 2.5, "ecolor": "black"},
            )  # fmt: skip
            for i, run in enumerate(runs):
                if len(seeds.get(run, ())) > 1:
                    ax.scatter(np.full(len(seeds[run]), x[i]), seeds[run], s=9, color="white", edgecolor="black",
                               linewidth=0.5, zorder=3)  # fmt: skip
                if not np.isfinite(means[i]):
                    ax.text(x[i], 0.01 * ymax, "n/a", ha="center", va="bottom", fontsize=7.5, color="0.35")
                elif means[i] < LOW_BAR * ymax:  # a zero score: a visible line at its value, and the value
                    ax.hlines(means[i], x[i] - 0.375, x[i] + 0.375, colors=colors[run], linewidth=3, zorder=3,
                              clip_on=False)  # fmt: skip
                    ax.annotate(f"{means[i]:.3f}", (x[i], means[i] + err[i]), xytext=(0, 3), textcoords="offset points",
                                ha="center", va="bottom", fontsize=7.5)  # fmt: skip
            metric = look["metric"].get((runs[0], b)) if "metric" in look else None
            ax.set_ylabel(metric_label(b, metric))
            ax.set_title(label(b))
            ax.set_xticks(x, ticks, rotation=40, ha="right", rotation_mode="anchor")
            ax.set_ylim(0, ymax)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        for ax in axes[len(benches):]:
            ax.set_axis_off()
        multi = (summary["n_seeds"] > 1).any()
        single = (summary["n_seeds"] <= 1).any()
        note = "error bars: " + (
            "std over seeds (runs with >1 seed), else lm-eval standard error"
            if multi and single
            else "std over seeds" if multi else "lm-eval standard error"
        )
        if prim is not None and multi:
            note += "; dots: individual seeds"
        fig.suptitle("Benchmark scores per run (primary metric)", fontsize=11)
        fig.supxlabel(note, fontsize=8, color="0.35")
    return fig


def retention_vs_gain_figure(
    retention: pd.DataFrame,
    colors: Mapping[str, str] | None = None,
    target: str | None = None,
    z: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
):
    """The study's central picture: x = target (GSM8K) change vs base, y = mean retention change vs base.
    One point per run with error bars of ``z`` standard errors of the change (paired over the items where the
    per-sample logs allow; the note says so); base at the origin; dashed zero lines.
    With ``thresholds``, dotted lines mark the claims' "little forgetting" and "substantial loss" levels.
    ``target`` defaults to the benchmark of the table's ``{target}_gain`` column."""
    if target is None:
        target = next(c for c in retention.columns if c.endswith("_gain"))[: -len("_gain")]
    runs = list(retention["run"])
    colors = dict(colors or run_colors([BASE] + runs))
    markers = run_markers([BASE] + runs)
    xs = retention[f"{target}_gain"].to_numpy(float)
    ys = retention["retention_change"].to_numpy(float)
    xe = z * np.nan_to_num(retention[f"{target}_gain_unc"].to_numpy(float))
    ye = z * np.nan_to_num(retention["retention_change_unc"].to_numpy(float))
    retention_names = [
        metric_label(c[: -len("_change")])
        for c in retention.columns
        if c.endswith("_change") and c != "retention_change"
    ]
    with _rc():
        fig = _figure((5.6, 4.4))
        ax = fig.add_subplot()
        ax.axhline(0, color="0.4", lw=0.9, ls="--", zorder=1)
        ax.axvline(0, color="0.4", lw=0.9, ls="--", zorder=1)
        ax.scatter([0], [0], marker=markers[BASE], s=130, color=colors.get(BASE, BASE_COLOR), edgecolor="black",
                   linewidth=0.5, zorder=4)  # fmt: skip
        for i, run in enumerate(runs):
            ax.errorbar(
                xs[i], ys[i], xerr=xe[i], yerr=ye[i], fmt=markers[run], ms=8, color=colors[run],
                mec="black", mew=0.5, ecolor=colors[run], elinewidth=1.2, capsize=3, zorder=3,
            )  # fmt: skip
        # limits: include origin, every point and its error bars, with room for labels
        lo_x = min(0.0, np.nanmin(xs - xe)) if len(xs) else -0.01
        hi_x = max(0.0, np.nanmax(xs + xe)) if len(xs) else 0.01
        lo_y = min(0.0, np.nanmin(ys - ye)) if len(ys) else -0.01
        hi_y = max(0.0, np.nanmax(ys + ye)) if len(ys) else 0.01
        levels = []
        if thresholds:
            levels = [
                (-thresholds["little_forgetting"], f"little forgetting (−{thresholds['little_forgetting']:g})"),
                (-thresholds["substantial_loss"], f"substantial loss (−{thresholds['substantial_loss']:g})"),
            ]
            lo_y = min([lo_y] + [y for y, _ in levels])
        px = max(hi_x - lo_x, 0.01) * 0.18
        py = max(hi_y - lo_y, 0.01) * 0.18
        for y, _ in levels:
            ax.axhline(y, color="0.55", lw=0.8, ls=":", zorder=1)
        ax.set_xlim(lo_x - px, hi_x + px)
        ax.set_ylim(lo_y - py, hi_y + py)
        ax.set_xlabel(f"{metric_label(target)} change vs base  (→ better)")
        ax.set_ylabel(f"mean retention change vs base\n({' & '.join(retention_names)}; ↑ less forgetting)")
        ax.set_title("Gain against retention")
        ax.grid(alpha=0.25)
        ax.set_axisbelow(True)
        paired = [c for c in retention.columns if c.endswith("_paired")]
        how = "paired over the items" if paired and retention[paired].all(axis=None) else "some unpaired"
        err_note = f"error bars: ±{z:g} std. error{'s' if z != 1 else ''} ({how})"
        ax.text(0.99, 0.01, err_note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="0.35")
        _place_labels(
            fig,
            ax,
            [(0.0, 0.0, "base")] + [(xs[i], ys[i], runs[i]) for i in range(len(runs))],
            [(0.0, 0.0)] + [(xe[i], ye[i]) for i in range(len(runs))],
            notes=levels,
        )
    return fig


def _place_labels(fig, ax, points, errors=None, notes=()):
    """Put each label next to its point: try close offsets first, then farther ones with a thin leader line, and
    take the first that overlaps no earlier label or marker and stays inside the axes (else the least overlap).
    ``notes`` ((y, text): a threshold line's note) go first, at the left or right end of their line, above or below
    it: wherever they cross the fewest markers and error bars."""
    near = [(8, 5), (8, -5), (-8, 5), (-8, -5), (0, 10), (0, -12)]
    far = [
        (round(d * math.cos(a)), round(d * math.sin(a)))
        for d in (24, 42, 62)
        for a in np.deg2rad([45, 135, 225, 315, 90, 270, 0, 180, 20, 160, 200, 340])
    ]
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    axbox = ax.get_window_extent(renderer)
    r = 6 * fig.dpi / 72  # half-size (pixels) of the box a marker occupies
    marks = [
        Bbox.from_extents(px - r, py - r, px + r, py + r)
        for px, py in (ax.transData.transform((x, y)) for x, y, _ in points if np.isfinite(x) and np.isfinite(y))
    ]
    bars = []  # error bars as thin boxes: a label may cross one, at a lower cost than covering a marker
    for (x, y, _), (xe, ye) in zip(points, errors or []):
        if np.isfinite(x) and np.isfinite(y):
            for (x0, y0), (x1, y1) in (((x - xe, y), (x + xe, y)), ((x, y - ye), (x, y + ye))):
                (a0, b0), (a1, b1) = ax.transData.transform([(x0, y0), (x1, y1)])
                bars.append(Bbox.from_extents(min(a0, a1) - 1, min(b0, b1) - 1, max(a0, a1) + 1, max(b0, b1) + 1))
    placed = [t.get_window_extent(renderer) for t in ax.texts]  # texts already there (the error-bar note)

    def overlap(a, b):
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return max(w, 0) * max(h, 0)

    def note(text, y, side, dy):
        return ax.annotate(
            text, (side, y), xycoords=("axes fraction", "data"), xytext=(3 - 6 * side, dy),
            textcoords="offset points", fontsize=7.5, color="0.35", ha="right" if side else "left",
            va="bottom" if dy > 0 else "top",
        )  # fmt: skip

    for y, text in notes:
        best = None
        for side, dy in ((0, 2), (1, 2), (0, -2), (1, -2)):  # left end above the line, right end, then below
            ann = note(text, y, side, dy)
            ann.get_window_extent(renderer)  # positions the text for this renderer
            bb = Text.get_window_extent(ann, renderer).padded(1)
            cost = sum(overlap(bb, o) for o in placed + marks + bars)
            ann.remove()
            if best is None or cost < best[0]:
                best = (cost, side, dy, bb)
            if cost == 0:
                break
        note(text, y, best[1], best[2])
        placed.append(best[3])

    def make(text, x, y, dx, dy, leader):
        return ax.annotate(
            text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=9, zorder=5,
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
            arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 1, "shrinkB": 5} if leader else None,
        )  # fmt: skip

    for x, y, text in points:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        best = None
        for dx, dy in near + far:
            ann = make(text, x, y, dx, dy, leader=(dx, dy) not in near)
            ann.get_window_extent(renderer)  # positions the text (and leader) for this renderer
            # the label's own box (Annotation.get_window_extent would include the leader line)
            bb = Text.get_window_extent(ann, renderer).padded(2)
            cost = sum(overlap(bb, o) for o in placed + marks) + 0.3 * sum(overlap(bb, o) for o in bars)
            if not (axbox.contains(bb.x0, bb.y0) and axbox.contains(bb.x1, bb.y1)):
                cost += 1e6
            ann.remove()
            if best is None or cost < best[0]:
                best = (cost, dx, dy, bb)
            if cost == 0:
                break
        _, dx, dy, bb = best
        make(text, x, y, dx, dy, leader=(dx, dy) not in near)
        placed.append(bb)


def _smooth(y: pd.Series, n: int) -> pd.Series:
    window = max(1, n // 20)
    return y.rolling(window, center=True, min_periods=1).mean()


# metrics.jsonl's mark of a step without an update (statepost/train/loop.py: no completion token carried signal);
# its loss is a placeholder 0, not a measurement.
SKIPPED = "skipped_update"


def logged(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows that logged a value for ``key``: not null, and for ``loss`` not a skipped step (whose 0 is a
    placeholder). Other keys of a skipped step (a reward, measured before the update was skipped) are kept."""
    keep = rows[key].notna() if key in rows else pd.Series(False, index=rows.index)
    if key == "loss" and SKIPPED in rows:
        keep &= ~rows[SKIPPED].fillna(0).astype(bool)
    return rows[keep]


def training_curves_figure(
    metrics: pd.DataFrame,
    colors: Mapping[str, str] | None = None,
    runs=None,
    signals: Mapping[str, str | None] | None = None,
    max_cols: int = 3,
):
    """A grid of runs, at most ``max_cols`` per row: each run's loss on top and, below it, what its signal type logs
    (``signals``: run -> signal type; ``teacher_kl``: KL to the teacher, ``reward``: mean reward, ``nll`` or
    unknown: no second panel); x = optimiser step; a smoothed line over the faint raw values, one line per seed.
    Steps without a value are left out (not drawn as 0); skipped steps (no update) are ticks along the loss axis."""
    runs = list(runs) if runs is not None else list(dict.fromkeys(metrics["run"]))
    runs = [r for r in runs if r != BASE and (metrics["run"] == r).any()]
    colors = dict(colors or run_colors(runs))
    seconds = {r: SIGNAL_PANEL.get((signals or {}).get(r)) for r in runs}
    per_run = 2 if any(seconds.values()) else 1  # panels per run, stacked
    grid_rows, ncols = _grid(len(runs), max_cols)
    styles = SEED_STYLES
    with _rc():
        fig = _figure((max(4.0, 3.3 * ncols), (2.3 * per_run + 0.35) * grid_rows + 0.4))
        grid = fig.add_gridspec(grid_rows * per_run, ncols)
        if not runs:
            ax = fig.add_subplot(grid[:, :])
            ax.text(0.5, 0.5, "no trained runs", ha="center", va="center", transform=ax.transAxes)
        for j, run in enumerate(runs):
            sub = metrics[metrics["run"] == run]
            seeds = list(dict.fromkeys(sub["seed"]))
            top, col = (j // ncols) * per_run, j % ncols
            keys = [("loss", "training loss")] + ([seconds[run]] if seconds[run] else [])
            if len(keys) == per_run:  # a panel per key, stacked, one x-axis
                block = [fig.add_subplot(grid[top, col])]
                block += [fig.add_subplot(grid[top + i, col], sharex=block[0]) for i in range(1, per_run)]
                for ax in block[:-1]:
                    ax.tick_params(labelbottom=False)
            else:  # loss only (nll: the loss is the signal) in a grid with second panels: the loss takes the height
                block = [fig.add_subplot(grid[top : top + per_run, col])]
                signal = (signals or {}).get(run)
                note = "nll: the loss is the signal" if signal == "nll" else f"signal: {signal or 'unknown'}"
                keys = [("loss", f"training loss\n({note})")]
            block[0].set_title(run, color=colors[run], fontweight="bold")
            block[-1].set_xlabel("optimiser step")
            for ax, (key, ylabel) in zip(block, keys):
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.25)
                if logged(sub, key).empty:
                    ax.text(0.5, 0.5, f"(no '{key}' logged)", ha="center", va="center", transform=ax.transAxes,
                            fontsize=8.5, color="0.4")  # fmt: skip
                    continue
                for k, seed in enumerate(seeds):
                    s = logged(sub[sub["seed"] == seed], key).sort_values("step")
                    y = s[key].astype(float)
                    ax.plot(s["step"], y, color=colors[run], alpha=0.25, lw=0.8)
                    ax.plot(
                        s["step"], _smooth(y, len(y)), color=colors[run], lw=1.8, ls=styles[k % len(styles)],
                        label=f"seed {seed}",
                    )  # fmt: skip
                skipped = sub.loc[sub[SKIPPED].fillna(0).astype(bool), "step"] if SKIPPED in sub else []
                if key == "loss" and len(skipped):  # a tick per skipped step along the bottom of the loss axis
                    ax.plot(skipped, np.zeros(len(skipped)), ls="none", marker="|", ms=8, mew=1.2, color="0.3",
                            transform=ax.get_xaxis_transform(), label=f"skipped step (no update): {len(skipped)}")
                if len(seeds) > 1 or (key == "loss" and len(skipped)):
                    ax.legend(frameon=False, fontsize=7.5)
        fig.suptitle("Training curves (thin: raw per step; thick: moving average)", fontsize=11)
    return fig


def save_figure(fig, figures_dir, name: str) -> list[Path]:
    """Write ``{name}.png`` (200 dpi) and ``{name}.pdf`` atomically."""
    paths = []
    for fmt in FIGURE_FORMATS:
        path = Path(figures_dir) / f"{name}.{fmt}"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=FIGURE_DPI, bbox_inches="tight")
        paths.append(path)
    return paths
