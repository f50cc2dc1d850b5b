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


def scores_figure(summary: pd.DataFrame, colors: Mapping[str, str] | None = None, scores: pd.DataFrame | None = None):
    """Grouped bars: one group per benchmark, one bar per run; error bars = seed std (>1 seed) or lm-eval stderr.
    With ``scores`` given, each seed's score is drawn as a dot on its bar."""
    runs = list(dict.fromkeys(summary["run"]))
    benches = list(dict.fromkeys(summary["benchmark"]))
    colors = dict(colors or run_colors(runs))
    look = summary.set_index(["run", "benchmark"])
    with _rc():
        fig = _figure((max(5.0, 1.2 + 0.45 * len(runs) * len(benches)), 3.6))
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(runs))
        x = np.arange(len(benches))
        for i, run in enumerate(runs):
            means = [look["mean"].get((run, b), np.nan) for b in benches]
            err = [look["spread"].get((run, b), np.nan) for b in benches]
            err = np.nan_to_num(np.asarray(err, dtype=float))
            n = int(look["n_seeds"].get((run, benches[0]), 1))
            xs = x - 0.4 + width * (i + 0.5)
            ax.bar(
                xs, means, width * 0.92, yerr=err, color=colors[run], edgecolor="black", linewidth=0.4,
                error_kw={"elinewidth": 1, "capsize": 2.5, "ecolor": "black"},
                label=f"{run} ({n} seeds)" if n > 1 else run,
            )  # fmt: skip
            if scores is not None:
                prim = scores[scores["primary"] & (scores["run"] == run)] if "primary" in scores else scores
                for j, b in enumerate(benches):
                    vals = prim.loc[prim["benchmark"] == b, "value"].to_numpy()
                    if len(vals) > 1:
                        ax.scatter(
                            np.full(len(vals), xs[j]), vals, s=9, color="white", edgecolor="black",
                            linewidth=0.5, zorder=3,
                        )  # fmt: skip
        ax.set_xticks(x, [label(b) for b in benches])
        ax.set_ylabel("accuracy")
        ax.set_title("Benchmark scores per run")
        ax.set_ylim(0, min(1.0, max(0.05, float(np.nanmax(summary["mean"] + summary["spread"].fillna(0))) * 1.15)))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        multi = (summary["n_seeds"] > 1).any()
        single = (summary["n_seeds"] <= 1).any()
        note = "error bars: " + (
            "std over seeds (runs with >1 seed),\nelse lm-eval standard error"
            if multi and single
            else "std over seeds" if multi else "lm-eval standard error"
        )
        if scores is not None and multi:
            note += "\ndots: individual seeds"
        leg = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title=note, title_fontsize=8)
        leg._legend_box.align = "left"
    return fig


def retention_vs_gain_figure(
    retention: pd.DataFrame,
    colors: Mapping[str, str] | None = None,
    target: str | None = None,
    z: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
):
    """The study's central picture: x = target (GSM8K) change vs base, y = mean retention change vs base.
    One point per run with error bars of ``z`` combined standard errors; base at the origin; dashed zero lines.
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
        label(c[: -len("_change")]) for c in retention.columns if c.endswith("_change") and c != "retention_change"
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
        for y, text in levels:
            ax.axhline(y, color="0.55", lw=0.8, ls=":", zorder=1)
            ax.annotate(
                text, (0, y), xycoords=("axes fraction", "data"), xytext=(3, 2), textcoords="offset points",
                fontsize=7.5, color="0.35", va="bottom", ha="left",
            )  # fmt: skip
        ax.set_xlim(lo_x - px, hi_x + px)
        ax.set_ylim(lo_y - py, hi_y + py)
        ax.set_xlabel(f"{label(target)} accuracy change vs base  (→ better)")
        ax.set_ylabel(f"mean retention change vs base\n({' & '.join(retention_names)}; ↑ less forgetting)")
        ax.set_title("Gain against retention")
        ax.grid(alpha=0.25)
        ax.set_axisbelow(True)
        err_note = "error bars: ±1 combined std. error" if z == 1 else f"error bars: ±{z:g} combined std. errors"
        ax.text(0.99, 0.01, err_note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="0.35")
        _place_labels(
            fig,
            ax,
            [(0.0, 0.0, "base")] + [(xs[i], ys[i], runs[i]) for i in range(len(runs))],
            [(0.0, 0.0)] + [(xe[i], ye[i]) for i in range(len(runs))],
        )
    return fig


def _place_labels(fig, ax, points, errors=None):
    """Put each label next to its point: try close offsets first, then farther ones with a thin leader line, and
    take the first that overlaps no earlier label or marker and stays inside the axes (else the least overlap)."""
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
    placed = [t.get_window_extent(renderer) for t in ax.texts]  # texts already there (threshold notes)

    def overlap(a, b):
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return max(w, 0) * max(h, 0)

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


def training_curves_figure(
    metrics: pd.DataFrame,
    colors: Mapping[str, str] | None = None,
    runs=None,
    signals: Mapping[str, str | None] | None = None,
):
    """One column per run: loss on top and, below it, what the run's signal type logs (``signals``: run -> signal
    type; ``teacher_kl``: KL to the teacher, ``reward``: mean reward, ``nll`` or unknown: no second panel);
    x = optimiser step; a smoothed line over the faint raw values, one line per seed."""
    runs = list(runs) if runs is not None else list(dict.fromkeys(metrics["run"]))
    runs = [r for r in runs if r != BASE and (metrics["run"] == r).any()]
    colors = dict(colors or run_colors(runs))
    seconds = {r: SIGNAL_PANEL.get((signals or {}).get(r)) for r in runs}
    has_second = any(seconds.values())
    nrows = 2 if has_second else 1
    ncols = max(1, len(runs))
    styles = ["-", "--", ":", "-."]
    with _rc():
        fig = _figure((max(4.0, 2.9 * ncols), 2.5 * nrows + 0.3))
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex="col")
        if not runs:
            axes[0][0].text(0.5, 0.5, "no trained runs", ha="center", va="center", transform=axes[0][0].transAxes)
        for j, run in enumerate(runs):
            sub = metrics[metrics["run"] == run]
            seeds = list(dict.fromkeys(sub["seed"]))
            keys = [("loss", "training loss")] + ([seconds[run]] if seconds[run] else [])
            for i, (key, ylabel) in enumerate(keys):
                ax = axes[i][j]
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.25)
                if i == 0:
                    ax.set_title(run, color=colors[run], fontweight="bold")
                if key not in sub or sub[key].isna().all():
                    ax.text(0.5, 0.5, f"(no '{key}' logged)", ha="center", va="center", transform=ax.transAxes,
                            fontsize=8.5, color="0.4")  # fmt: skip
                    continue
                for k, seed in enumerate(seeds):
                    s = sub[sub["seed"] == seed].sort_values("step")
                    y = s[key].astype(float)
                    ax.plot(s["step"], y, color=colors[run], alpha=0.25, lw=0.8)
                    ax.plot(
                        s["step"], _smooth(y, len(y)), color=colors[run], lw=1.8, ls=styles[k % len(styles)],
                        label=f"seed {seed}",
                    )  # fmt: skip
                if len(seeds) > 1 and i == 0:
                    ax.legend(frameon=False, fontsize=8)
            if has_second and not seconds[run]:
                ax = axes[1][j]
                ax.set_axis_off()
                signal = (signals or {}).get(run)
                note = "(nll: the loss\nis the signal)" if signal == "nll" else f"(signal: {signal or 'unknown'})"
                ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=8.5, color="0.4")
                axes[0][j].set_xlabel("optimiser step")
                axes[0][j].tick_params(labelbottom=True)
            else:
                axes[nrows - 1][j].set_xlabel("optimiser step")
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
