"""Learning curves: a run's scores at the steps it was saved along its training (``runs.<run>.trajectory``).

Each trajectory model ``{run}/step{N}/seed{seed}`` is scored like every model (one evaluation job per benchmark). A
curve runs from the base model (step 0) through the trajectory steps to the run's own model (its last step, from
its ``run.json``), per seed, on every metric of every benchmark (GSM8K: strict-match and flexible-extract).

Writes ``tables/trajectory.{csv,md,tex,html}`` (one row per run, seed and step; a column per benchmark metric) and
``figures/trajectory.{png,pdf}`` (a panel per benchmark metric; a line per run and seed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from statepost.io import DataError

from . import load
from .figures import BASE_COLOR, FIGURE_FORMATS, SEED_STYLES, _figure, _grid, _rc, metric_label, run_colors, save_figure
from .tables import TABLE_FORMATS, Table, write_table

NAME = "trajectory"


def output_paths(tables_dir, figures_dir) -> list[Path]:
    """Every file :func:`make_trajectory` writes (for the trajectory rule's output list)."""
    t, f = Path(tables_dir), Path(figures_dir)
    return [t / f"{NAME}.{e}" for e in TABLE_FORMATS] + [f / f"{NAME}.{e}" for e in FIGURE_FORMATS]


def final_step(models_dir, run: str, seed: int) -> int:
    """The last optimiser step of a run's own model, from its ``run.json``."""
    path = Path(models_dir) / run / f"seed{seed}" / "run.json"
    try:
        return int(json.loads(path.read_text())["final_step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: cannot read the run's final_step ({e})") from None


def load_trajectory(scores_dir, models_dir, trajectory: Iterable[Mapping], benchmarks: Iterable[str]) -> pd.DataFrame:
    """Every score along each (run, seed) of ``trajectory`` (``[{name, run, seed, step}]``), the base as step 0
    and the run's own model as its last step: columns run, seed, step, benchmark, metric, value, stderr."""
    points = {}
    for t in trajectory:
        run, seed = t["run"], int(t["seed"])
        points[t["name"]] = (run, seed, int(t["step"]))
        points[f"{run}/seed{seed}"] = (run, seed, final_step(models_dir, run, seed))
    models = {load.BASE: {"run": load.BASE}} | {m: {"run": r, "seed": s} for m, (r, s, _) in points.items()}
    scores = load.load_scores(scores_dir, models, list(benchmarks))
    base = scores[scores["model"] == load.BASE]
    parts = [base.assign(run=r, seed=s, step=0) for r, s in sorted({(r, s) for r, s, _ in points.values()})]
    parts += [scores[scores["model"] == m].assign(step=step) for m, (_, _, step) in points.items()]
    out = pd.concat(parts, ignore_index=True)[["run", "seed", "step", "benchmark", "metric", "value", "stderr"]]
    out["seed"] = out["seed"].astype(int)
    return out.sort_values(["run", "seed", "step"], kind="stable").reset_index(drop=True)


def _columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(benchmark, metric) pairs in the given benchmark order, each benchmark's primary metric first."""
    pairs = []
    for bench in dict.fromkeys(df["benchmark"]):
        facts = load.benchmark(bench)
        have = set(df.loc[df["benchmark"] == bench, "metric"])
        pairs += [(bench, m) for m in (facts.primary_metric, *facts.metrics) if m in have]
    return pairs


def trajectory_table(df: pd.DataFrame) -> Table:
    cols = _columns(df)
    wide = df.pivot_table(index=["run", "seed", "step"], columns=["benchmark", "metric"], values="value", sort=False)
    data = wide[cols].reset_index()
    data.columns = ["run", "seed", "step"] + [f"{b} {m}" for b, m in cols]
    display = data.copy()
    display[["seed", "step"]] = display[["seed", "step"]].astype(str)
    names = {f"{b} {m}": metric_label(b, m) for b, m in cols}
    for c in names:
        display[c] = display[c].map(lambda v: f"{v:.3f}")
    display = display.rename(columns=names)
    note = (
        "Scores along training: step 0 is the base model, the last step of each run and seed is the run's own "
        "model, and the steps between are the models it saved on the way (runs.<run>.trajectory), each scored as "
        "every model is (accuracy as a fraction)."
    )
    return Table(NAME, data, display, note, "Scores along training")


def trajectory_figure(df: pd.DataFrame, colors: Mapping[str, str] | None = None):
    """A panel per benchmark metric; x = optimiser step (0: the base), y = score; a line per run (colour) and seed
    (line style), dots at the saved steps, the base's score as a grey dotted line."""
    cols = _columns(df)
    runs = list(dict.fromkeys(df["run"]))
    colors = dict(colors or run_colors(runs))
    nrows, ncols = _grid(len(cols), 4)
    with _rc():
        fig = _figure((3.4 * ncols, 2.9 * nrows + 0.5))
        for i, (bench, metric) in enumerate(cols):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            sub = df[(df["benchmark"] == bench) & (df["metric"] == metric)]
            base = sub.loc[sub["step"] == 0, "value"]
            if len(base):
                ax.axhline(float(base.iloc[0]), color=BASE_COLOR, ls=":", lw=1, label="base")
            for run in runs:
                for k, seed in enumerate(sorted(set(sub.loc[sub["run"] == run, "seed"]))):
                    s = sub[(sub["run"] == run) & (sub["seed"] == seed)].sort_values("step")
                    ax.plot(s["step"], s["value"], color=colors[run], ls=SEED_STYLES[k % len(SEED_STYLES)],
                            marker="o", ms=3.5, lw=1.5, label=f"{run} seed {seed}")  # fmt: skip
            ax.set_title(metric_label(bench, metric))
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.25)
            if i == 0:
                ax.legend(frameon=False, fontsize=7.5)
        fig.suptitle("Scores along training (step 0: the base; the last step: the run's own model)", fontsize=11)
    return fig


def make_trajectory(scores_dir, models_dir, trajectory, benchmarks, tables_dir, figures_dir) -> list[Path]:
    """Load the scores along each run's trajectory and write its table and figure; returns the paths written."""
    df = load_trajectory(scores_dir, models_dir, trajectory, benchmarks)
    paths = write_table(trajectory_table(df), tables_dir)
    return paths + save_figure(trajectory_figure(df), figures_dir, NAME)
