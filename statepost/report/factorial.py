"""The states x signals factorial: effects as linear contrasts of per-item scores, with the verdicts' statistics.

Each cell of the design is a run; its per-item scores on a benchmark form a ``seeds x items`` array (every cell has
the same seeds and every model is scored on the same items). An effect is a contrast ``sum_c w_c X_c`` with weights
that sum to 0, so the base model cancels and an effect on the scores is the same effect on the changes against base.
Its standard error is the verdicts' (:func:`.statistics.paired_change` of the contrast against 0): the seed term over
the per-seed contrasts and the item term over the per-item contrasts averaged over seeds, with Satterthwaite degrees
of freedom. A cell's seed ``s`` pairs with every other cell's seed ``s``: one seed's runs share their init draw and
data order, whatever the design.

In the 2 x 2 grid (state source dataset / learner, signal NLL / teacher KL), with the cells' means ``DN, DK, LN, LK``:

* state source: ``(LN + LK)/2 - (DN + DK)/2`` (learner states minus dataset states, averaged over the signals);
* signal: ``(DK + LK)/2 - (DN + LN)/2`` (teacher KL minus NLL, averaged over the state sources);
* interaction: ``(LK - DK) - (LN - DN)`` (how much more the learner's states help under teacher KL than under NLL).

Over the on-policy fraction ``lambda`` of a mixed state source, the dose-response slope is the least-squares slope of
score on ``lambda``, also a contrast: ``w_j = (lambda_j - mean) / sum (lambda - mean)**2``.

Each effect is read on every quantity: GSM8K strict-match and flexible-extract, each retention benchmark's primary
metric, retention (the mean over the retention benchmarks, its standard error as the verdicts combine them), and
off-task drift (KL(model||base) on the diagnostics' probe states: one number per model, so a seed-only standard
error). The factorial rule writes ``tables/effects.{csv,md,tex,html}``, ``tables/factorial_cells.{csv,md,tex,html}``
(each run's change against base, and its training budget) and ``figures/{grid,dose_response}.{png,pdf}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from statepost.checks import factorial_runs, learner_frac
from statepost.io import DataError

from . import load
from .diagnostics import load_diagnostics
from .figures import BASE_COLOR, FIGURE_FORMATS, _figure, _rc, save_figure
from .statistics import mean_of_changes, paired_change, sem, t_isf
from .tables import TABLE_FORMATS, Table, write_table

STATE, SIGNAL = ("dataset", "learner"), ("nll", "teacher_kl")
GRID_EFFECTS = {  # effect -> {(state source, signal): weight}
    "state source": {("learner", "nll"): 0.5, ("learner", "teacher_kl"): 0.5,
                     ("dataset", "nll"): -0.5, ("dataset", "teacher_kl"): -0.5},
    "signal": {("dataset", "teacher_kl"): 0.5, ("learner", "teacher_kl"): 0.5,
               ("dataset", "nll"): -0.5, ("learner", "nll"): -0.5},
    "interaction": {("learner", "teacher_kl"): 1.0, ("dataset", "teacher_kl"): -1.0,
                    ("learner", "nll"): -1.0, ("dataset", "nll"): 1.0},
}  # fmt: skip


def contrast(cells: Mapping, weights: Mapping) -> dict:
    """``sum_c w_c X_c`` over ``cells`` (``{cell: seeds x items}``, the same shape each) with its paired standard
    error: :func:`.statistics.paired_change` of the combination against 0 (``delta``, ``seed_sem``, ``item_se``,
    ``uncertainty``, ``df``). The weights must sum to 0: a contrast, free of what every cell shares."""
    if not np.isclose(sum(weights.values()), 0.0):
        raise ValueError(f"contrast: weights {dict(weights)} sum to {sum(weights.values())}, not 0")
    missing = [c for c in weights if c not in cells]
    if missing:
        raise ValueError(f"contrast: no scores for {missing}")
    arrays = {c: np.asarray(cells[c], dtype=float) for c in weights}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"contrast: cells differ in shape (seeds x items): { {c: a.shape for c, a in arrays.items()} }")
    combo = sum(w * arrays[c] for c, w in weights.items())
    return paired_change(combo, np.zeros_like(combo))


def slope_weights(doses: Mapping) -> dict:
    """``{cell: dose}`` -> the least-squares slope's weights ``(dose - mean) / sum (dose - mean)**2``."""
    x = np.asarray(list(doses.values()), dtype=float)
    centred = x - x.mean()
    ss = float(centred @ centred)
    if ss == 0:
        raise ValueError(f"slope_weights: the doses {list(x)} do not vary")
    return {c: float(v / ss) for c, v in zip(doses, centred)}


TABLES = ("effects", "factorial_cells")
FIGURES = ("grid", "dose_response")
DRIFT = "off_task_kl_model_base"  # the diagnostics' off-task KL(model||base), per model
RETENTION = "retention"  # the mean over the retention benchmarks
SIGNAL_LABEL = {"nll": "NLL of a target token", "teacher_kl": "teacher KL", "reward": "reward"}
STATE_LABEL = {"dataset": "dataset states", "learner": "learner states"}


def output_paths(tables_dir, figures_dir) -> list[Path]:
    """Every file :func:`make_factorial` writes (for the factorial rule's output list)."""
    t, f = Path(tables_dir), Path(figures_dir)
    return [t / f"{n}.{e}" for n in TABLES for e in TABLE_FORMATS] + [f / f"{n}.{e}" for n in FIGURES for e in FIGURE_FORMATS]


class Design:
    """The factorial's runs: ``grid`` ``{state: {signal: run}}``, ``dose`` ``{run: lambda}``, ``beside`` runs, and the
    seeds every run has. ``runs`` is the config's ``runs`` (a run's lambda and signal are read there)."""

    def __init__(self, factorial: Mapping, runs: Mapping, seeds: Iterable[int]):
        self.grid = {(state, signal): run for state, row in factorial["grid"].items() for signal, run in row.items()}
        self.dose = {run: learner_frac(runs[run]) for run in factorial["dose"]}
        self.beside = list(factorial["beside"])
        self.seeds = [int(s) for s in seeds]
        self.runs = factorial_runs(factorial)
        self.signals = {run: runs[run]["signal"]["type"] for run in self.runs}
        self.sources = {run: runs[run]["states"]["source"] for run in self.runs}

        self.runs = factorial_runs(factorial)

    def models(self) -> dict[str, dict]:
        return {load.BASE: {"run": load.BASE}} | {
            f"{run}/seed{s}": {"run": run, "seed": s} for run in self.runs for s in self.seeds
        }


class Scores:
    """Per-item scores (``{(benchmark, metric): {run: seeds x items}}``, base repeated for every seed, so a change
    against base pairs each seed with it as the verdicts do), per-model drift and training budget."""

    def __init__(self, scores_dir, diagnostics_dir, models_dir, design: Design, benchmarks: Iterable[str]):
        self.design = design
        models = design.models()
        benchmarks = list(benchmarks)
        self.target, self.retention = load.target_and_retention(benchmarks)
        frame = load.load_scores(scores_dir, models, benchmarks)
        items = load.load_items(scores_dir, frame)
        facts = {b: load.benchmark(b) for b in benchmarks}
        self.quantities = [(self.target, m) for m in (facts[self.target].primary_metric, *facts[self.target].metrics)]
        self.quantities += [(b, facts[b].primary_metric) for b in self.retention]
        self.cells: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for bench, metric in self.quantities:
            base = items.get((load.BASE, bench, metric))
            rows = {run: [items.get((f"{run}/seed{s}", bench, metric)) for s in design.seeds] for run in design.runs}
            missing = [f"{r}/seed{s}" for r, got in rows.items() for s, x in zip(design.seeds, got) if x is None]
            if base is None or missing:
                raise DataError(f"factorial: no per-item scores ({bench}, {metric}) for {missing or ['base']}: the "
                                "effects are paired over items, from the samples logs beside the score files")
            self.cells[(bench, metric)] = {load.BASE: np.tile(base, (len(design.seeds), 1))} | {
                run: np.vstack(got) for run, got in rows.items()}  # fmt: skip
        diag = load_diagnostics(diagnostics_dir, models).set_index("model")[f"{DRIFT}"]
        self.drift = {run: np.array([diag[f"{run}/seed{s}"] for s in design.seeds]) for run in design.runs}
        self.drift[load.BASE] = np.zeros(len(design.seeds))  # the base's KL to itself
        metrics = load.load_metrics(models_dir, {m: i for m, i in models.items() if m != load.BASE})
        tokens = metrics.groupby(["run", "seed"])["completion_tokens"].sum()
        self.tokens = {run: float(tokens[run].mean()) for run in design.runs}
        self.steps = {run: float(metrics[metrics["run"] == run].groupby("seed")["step"].max().mean())
                      for run in design.runs}  # fmt: skip

    def label(self, bench: str, metric: str) -> str:
        """A quantity's short name: ``GSM8K strict``, ``GSM8K flexible``, ``TruthfulQA mc2``, ``MMLU``."""
        filt = metric.partition(",")[2]
        return load.label(bench) + (f" {filt.split('-')[0]}" if filt and filt != "none" else "")

    def effect(self, weights: Mapping) -> dict[str, dict]:
        """``{quantity label: {value, se, df}}`` of the contrast ``weights`` (``{run: w}``) on every quantity."""
        out = {}
        per_bench = {}
        for bench, metric in self.quantities:
            c = contrast(self.cells[(bench, metric)], weights)
            per_bench.setdefault(bench, c)  # a benchmark's primary metric comes first
            out[self.label(bench, metric)] = {"value": c["delta"], "se": c["uncertainty"], "df": c["df"]}
        if self.retention:
            mean = mean_of_changes([(c["delta"], c["uncertainty"], c["df"]) for c in map(per_bench.get, self.retention)])
            out["retention (mean)"] = dict(zip(("value", "se", "df"), mean))
        per_seed = sum(w * self.drift[run] for run, w in weights.items())
        out["off-task drift"] = {"value": float(per_seed.mean()), "se": sem(per_seed), "df": len(per_seed) - 1.0}
        return out

    def per_seed(self, run: str) -> dict[str, np.ndarray]:
        """``{quantity label: per-seed change against base}`` of one run (drift: its per-seed KL)."""
        out, per_bench = {}, {}
        for bench, metric in self.quantities:
            cells = self.cells[(bench, metric)]
            out[self.label(bench, metric)] = change = (cells[run] - cells[load.BASE]).mean(axis=1)
            per_bench.setdefault(bench, change)  # a benchmark's primary metric comes first
        if self.retention:
            out["retention (mean)"] = np.mean([per_bench[b] for b in self.retention], axis=0)
        out["off-task drift"] = self.drift[run]
        return out


def ci95(value: float, se: float, df: float) -> tuple[float, float]:
    """The two-sided 95% Student-t interval (normal where df is infinite; NaN where it is undefined)."""
    if not (math.isfinite(se) and df > 0):
        return float("nan"), float("nan")
    half = t_isf(0.025, df) * se  # the verdicts' t quantile
    return value - half, value + half


def effects_rows(scores: Scores) -> pd.DataFrame:
    """One row per effect and quantity: the grid's three effects and the slope over lambda."""
    design = scores.design
    effects = {name: {design.grid[c]: w for c, w in weights.items()} for name, weights in GRID_EFFECTS.items()}
    effects["slope over lambda (per unit)"] = slope_weights(design.dose)
    rows = []
    for name, weights in effects.items():
        for quantity, e in scores.effect(weights).items():
            low, high = ci95(e["value"], e["se"], e["df"])
            rows.append({"effect": name, "quantity": quantity, **e, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def cell_rows(scores: Scores) -> pd.DataFrame:
    """One row per run and quantity: its change against base (``value``, ``se``, ``df``, per-seed values), with its
    cell, lambda and training budget."""
    design = scores.design
    cell_of = {run: c for c, run in design.grid.items()}
    rows = []
    for run in design.runs:
        state, signal = cell_of.get(run, (design.sources[run], design.signals[run]))
        for quantity, e in scores.effect({run: 1.0, load.BASE: -1.0}).items():
            rows.append({"run": run, "state_source": state, "signal": signal, "lambda": design.dose.get(run),
                         "in_grid": run in cell_of, "quantity": quantity, **e,
                         "steps": scores.steps[run], "completion_tokens": scores.tokens[run]})  # fmt: skip
    return pd.DataFrame(rows)


def _pm(value: float, se: float, low: float | None = None, high: float | None = None, digits: int = 3) -> str:
    text = f"{value:+.{digits}f} ± {se:.{digits}f}"
    return text + (" *" if low is not None and (low > 0 or high < 0) else "")


def effects_table(rows: pd.DataFrame, scores: Scores) -> Table:
    quantities = list(dict.fromkeys(rows["quantity"]))
    display = []
    for effect, g in rows.groupby("effect", sort=False):
        shown = {"effect": effect}
        for r in g.itertuples():
            shown[r.quantity] = _pm(r.value, r.se, r.ci_low, r.ci_high, 4 if "drift" in r.quantity else 3)
        display.append(shown)
    display = pd.DataFrame(display, columns=["effect", *quantities])
    d = scores.design
    cells = ", ".join(f"({s}, {g}) = {run}" for (s, g), run in d.grid.items())
    note = (
        f"Effects of the states x signals factorial over {len(d.seeds)} seeds ({', '.join(map(str, d.seeds))}); cells: "
        f"{cells}. State source: learner minus dataset states, averaged over the two signals; signal: teacher KL "
        "minus the NLL of a target token, averaged over the two state sources; interaction: how much more learner "
        "states help under teacher KL than under NLL. "
        + f"Slope over lambda: the least-squares change per unit of lambda over {', '.join(d.dose)} (lambda "
        f"{', '.join(f'{v:g}' for v in d.dose.values())}). "
        + "Accuracy changes are positive = better (retention: the mean over the retention benchmarks); off-task drift "
        "is KL(model‖base) per token on probe states no score reads (positive = more drift). Each value is ± its "
        "standard error, paired over items and seeds as the verdicts' (drift: over seeds only); * marks a 95% "
        "Student-t interval that excludes 0 (intervals in effects.csv). Not corrected for the number of effects shown."
    )
    return Table("effects", rows, display, note, "States x signals: effects")


def cells_table(rows: pd.DataFrame, scores: Scores) -> Table:
    quantities = list(dict.fromkeys(rows["quantity"]))
    display = []
    for run, g in rows.groupby("run", sort=False):
        first = g.iloc[0]
        shown = {"run": run, "states": first["state_source"], "signal": SIGNAL_LABEL.get(first["signal"], first["signal"]),
                 "λ": "–" if pd.isna(first["lambda"]) else f"{first['lambda']:g}", "steps": f"{first['steps']:.0f}",
                 "completion tokens": f"{first['completion_tokens']:.0f}"}  # fmt: skip
        for r in g.itertuples():
            shown[r.quantity] = _pm(r.value, r.se, digits=4 if "drift" in r.quantity else 3)
        display.append(shown)
    note = (
        "Each run of the factorial against the base model (mean over seeds ± standard error paired over items and "
        "seeds; drift: its mean KL(model‖base) on probe states ± its seed standard error). Steps and completion "
        "tokens (the supervised tokens, summed over the run's steps, mean over seeds) show the budget each cell "
        "spent: the grid matches optimiser steps exactly, and tokens as far as gold solutions and the learner's "
        "samples have the same length."
    )
    return Table("factorial_cells", rows, pd.DataFrame(display), note, "States x signals: each run against base")


def grid_figure(cells: pd.DataFrame, design: Design, target: str, scale: float):
    """Rows: state source; columns: signal (the runs beside the grid in columns of their own, right of a gap).
    Colour: the mean retention change against base, on a scale of at least ``± scale`` (the claims' substantial loss:
    a small change stays pale); text: the run, its retention, GSM8K and drift changes."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    by = {(r.run, r.quantity): r for r in cells.itertuples()}
    gsm = [q for q in dict.fromkeys(cells["quantity"]) if q.startswith(load.label(target))]
    columns = [("grid", sig) for sig in ("nll", "teacher_kl")] + [("beside", run) for run in design.beside]
    where = {design.grid[(st, sig)]: (st, ("grid", sig)) for st, sig in design.grid}
    where |= {run: (design.sources[run], ("beside", run)) for run in design.beside}
    ret = [by[(run, "retention (mean)")].value for run in where]
    lim = max(scale, *(abs(v) for v in ret))
    norm, cmap = TwoSlopeNorm(0.0, -lim, lim), colormaps["RdBu"]
    with _rc():
        width = 3.1 * len(columns) + (0.3 if design.beside else 0)
        fig = _figure((width, 4.6))
        ax = fig.add_subplot(1, 1, 1)
        x_of = {col: i + (0.15 if col[0] == "beside" else 0) for i, col in enumerate(columns)}
        for row, state in enumerate(("dataset", "learner")):
            y = 1 - row
            for col in columns:
                runs = [r for r, (st, c) in where.items() if st == state and c == col]
                x = x_of[col]
                if not runs:
                    ax.add_patch(Rectangle((x, y), 0.96, 0.96, facecolor="0.93", edgecolor="white", hatch="//"))
                    ax.text(x + 0.48, y + 0.48, "no run", ha="center", va="center", fontsize=8.5, color="0.45")
                    continue
                run = runs[0]
                r = by[(run, "retention (mean)")]
                ax.add_patch(Rectangle((x, y), 0.96, 0.96, facecolor=cmap(norm(r.value)), edgecolor="white"))
                lines = [f"retention {r.value:+.3f} ± {r.se:.3f}"]
                lines += [f"{q} {by[(run, q)].value:+.3f} ± {by[(run, q)].se:.3f}" for q in gsm]
                d = by[(run, "off-task drift")]
                lines.append(f"drift {d.value:.3f} ± {d.se:.3f}")
                dark = abs(norm(r.value) - 0.5) > 0.35
                color = "white" if dark else "black"
                ax.text(x + 0.48, y + 0.8, run, ha="center", va="center", fontsize=9.5, weight="bold", color=color)
                ax.text(x + 0.48, y + 0.4, "\n".join(lines), ha="center", va="center", fontsize=7.8, color=color,
                        linespacing=1.35)  # fmt: skip
        ax.set_xlim(-0.05, max(x_of.values()) + 1.0)
        ax.set_ylim(-0.05, 2.0)
        ax.set_xticks([x_of[c] + 0.48 for c in columns])
        ax.set_xticklabels([SIGNAL_LABEL[c[1]] if c[0] == "grid" else f"beside: {SIGNAL_LABEL.get(design.signals[c[1]], c[1])}"
                            for c in columns])  # fmt: skip
        ax.set_yticks([1.48, 0.48])
        ax.set_yticklabels([STATE_LABEL["dataset"], STATE_LABEL["learner"]])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, label="retention change against base (mean)")
        fig.suptitle(f"States x signals: each cell against the base ({len(design.seeds)} seeds; ± standard error)",
                     fontsize=11)  # fmt: skip
    return fig


def dose_figure(cells: pd.DataFrame, effects: pd.DataFrame, scores: Scores):
    """x: lambda; panels: retention change, GSM8K change (each metric), off-task drift. Each run: its mean with a
    95% interval and its seeds as small dots; the least-squares line over lambda with its slope."""
    design = scores.design
    lam = design.dose
    gsm = [q for q in dict.fromkeys(cells["quantity"]) if q.startswith(load.label(scores.target))]
    panels = [("retention (mean)", ["retention (mean)"], "retention change against base"),
              ("GSM8K", gsm, f"{load.label(scores.target)} change against base"),
              ("off-task drift", ["off-task drift"], "off-task KL(model‖base)")]  # fmt: skip
    colors = ["#0072B2", "#D55E00", "#009E73"]
    with _rc():
        fig = _figure((11.5, 3.6))
        for i, (title, quantities, ylabel) in enumerate(panels):
            ax = fig.add_subplot(1, 3, i + 1)
            for k, q in enumerate(quantities):
                off = (k - (len(quantities) - 1) / 2) * 0.012
                xs = np.array([lam[r] for r in lam]) + off
                rows = [cells[(cells["run"] == r) & (cells["quantity"] == q)].iloc[0] for r in lam]
                means = np.array([r["value"] for r in rows])
                lows, highs = zip(*(ci95(r["value"], r["se"], r["df"]) for r in rows))
                e = effects[(effects["effect"].str.startswith("slope")) & (effects["quantity"] == q)].iloc[0]
                name = f"{q}: " if len(quantities) > 1 else ""
                ax.errorbar(xs, means, yerr=[means - np.array(lows), np.array(highs) - means], fmt="o", ms=5,
                            color=colors[k], capsize=3, lw=1.3, zorder=3,
                            label=f"{name}slope {e['value']:+.3f} ± {e['se']:.3f} per unit λ")  # fmt: skip
                for x, run in zip(xs, lam):
                    seeds = scores.per_seed(run)[q]
                    ax.plot(np.full(len(seeds), x + 0.02), seeds, ".", color=colors[k], alpha=0.35, ms=4)
                grid = np.linspace(0, 1, 11)
                xbar, ybar = np.mean(list(lam.values())), means.mean()
                ax.plot(grid, ybar + e["value"] * (grid - xbar), color=colors[k], lw=1, ls="--", alpha=0.8)
            ax.legend(frameon=True, framealpha=0.85, fontsize=7.5, loc="best")
            if title != "off-task drift":
                ax.axhline(0.0, color=BASE_COLOR, lw=0.8, ls=":")
            ax.set_title(title)
            ax.set_xlabel("λ (fraction of prompts with the learner's own states)")
            ax.set_ylabel(ylabel)
            ax.set_xticks(sorted(lam.values()))
            ax.grid(alpha=0.25)
        fig.suptitle("How on-policy the states are: " + ", ".join(f"{r} (λ {v:g})" for r, v in lam.items())
                     + f"; {len(design.seeds)} seeds, bars: 95% intervals", fontsize=10)  # fmt: skip
    return fig


def make_factorial(scores_dir, diagnostics_dir, models_dir, design: Design, benchmarks, tables_dir, figures_dir,
                   scale: float) -> list[Path]:  # fmt: skip
    """Load the factorial's scores, drift and budgets; write its tables and figures; return the paths written.
    ``scale``: the grid's colour scale spans at least ± this retention change (the claims' substantial_loss)."""
    scores = Scores(scores_dir, diagnostics_dir, models_dir, design, benchmarks)
    effects, cells = effects_rows(scores), cell_rows(scores)
    paths = write_table(effects_table(effects, scores), tables_dir) + write_table(cells_table(cells, scores), tables_dir)
    paths += save_figure(grid_figure(cells, design, scores.target, scale), figures_dir, "grid")
    paths += save_figure(dose_figure(cells, effects, scores), figures_dir, "dose_response")
    return paths
