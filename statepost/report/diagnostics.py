"""The diagnostics part of the report: does drift on off-task states predict forgetting?

Reads ``results/{experiment}/diagnostics/{model}.json`` (one per model, :mod:`statepost.diagnostics.statesets`) with the score files and the
runs' ``metrics.jsonl``, and writes

* ``tables/diagnostics.{csv,md,tex}``: per run and seed, the mean per-token KL to the base on off-task states (both
  directions) and on the model's own states, next to its change against base on every benchmark and the mean
  retention change; the note gives Spearman's rank correlation (pandas) between off-task drift and retention change
  over every run and seed;
* ``figures/drift_vs_retention.{png,pdf}``: retention change against off-task drift, one point per run and seed;
* ``figures/state_nll.{png,pdf}``: the init model's NLL of each run's training states (``state_nll``) per step, every
  run on one axis, with the base model's NLL of GSM8K test solutions and of its own samples for reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from statepost.io import DataError

from . import figures
from .load import BASE, label, normalize_models, run_methods, run_order
from .tables import Table, _data_with_method, _fmt, _with_method

TABLE = "diagnostics"
FIGURES = ("drift_vs_retention", "state_nll")
SETS = ("dataset", "own", "off_task")
# A set record's means, as results/README.md documents them (statepost.diagnostics.STATS, which needs torch; a test
# checks the two agree).
STATS = ("kl_model_base", "kl_base_model", "nll_model", "nll_base", "entropy_model")
DRIFT = {"kl_model_base": "KL(model‖base)", "kl_base_model": "KL(base‖model)"}


def load_diagnostics(diagnostics_dir, models) -> pd.DataFrame:
    """One row per model: model, run, seed, then ``{set}_{stat}`` and ``{set}_tokens`` for every state set."""
    rows, missing = [], []
    for model, info in normalize_models(models).items():
        path = Path(diagnostics_dir) / f"{model}.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            rec = json.loads(path.read_text())
            row = {"model": model, "run": info["run"], "seed": info["seed"]}
            for name in SETS:
                got = rec["sets"][name] or {}
                row.update({f"{name}_{k}": got.get(k) for k in (*STATS, "tokens")})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a diagnostics file ({type(e).__name__}: {e})") from None
        rows.append(row)
    if missing:
        raise DataError("missing diagnostics file(s): " + ", ".join(missing))
    return pd.DataFrame(rows).astype({f"{s}_{k}": float for s in SETS for k in STATS})


def changes_vs_base(scores: pd.DataFrame, benchmarks, retention) -> pd.DataFrame:
    """Per model: its primary score minus base's on every benchmark (``{b}_change``) and their mean over the
    retention benchmarks (``retention_change``)."""
    prim = scores[scores["primary"]] if "primary" in scores else scores
    wide = prim.pivot_table(index="model", columns="benchmark", values="value", aggfunc="first")
    base = wide.loc[BASE]
    out = pd.DataFrame({f"{b}_change": wide[b] - base[b] for b in benchmarks if b in wide}, index=wide.index)
    cols = [f"{b}_change" for b in retention if f"{b}_change" in out]
    out["retention_change"] = out[cols].mean(axis=1) if cols else np.nan
    return out.reset_index()


def spearman(data: pd.DataFrame, x: str, y: str = "retention_change", by_run: bool = False) -> tuple[float, int, float]:
    """Spearman's rank correlation of two columns over the trained models (``by_run``: over runs, each its mean over
    seeds), how many points there were, and its two-sided permutation p-value (exact up to 7 points, else 9,999
    random pairings with a fixed seed). NaN where fewer than 3 points, or a column is constant."""
    from scipy import stats

    trained = data[data["run"] != BASE][["run", x, y]].dropna()
    if by_run:
        trained = trained.groupby("run", sort=False)[[x, y]].mean()
    n = len(trained)
    if n < 3 or trained[x].nunique() < 2 or trained[y].nunique() < 2:
        return float("nan"), n, float("nan")

    def rho(a):
        return stats.spearmanr(a, trained[y].to_numpy()).statistic

    res = stats.permutation_test((trained[x].to_numpy(),), rho, permutation_type="pairings", n_resamples=9999,
                                 alternative="two-sided", rng=np.random.default_rng(0))  # fmt: skip
    return float(res.statistic), n, float(res.pvalue)


def spearman_text(data: pd.DataFrame, x: str, digits: int = 3, sep: str = "; ") -> str:
    """ρ with n and the permutation p-value, over (run, seed) points and over runs (seed means)."""
    parts = []
    for by_run, over in ((False, "runs × seeds"), (True, "runs, seed means")):
        rho, n, p = spearman(data, x, by_run=by_run) if x in data else (float("nan"), 0, float("nan"))
        if by_run and n == len(data[data["run"] != BASE]):
            continue  # one seed per run: the same points
        parts.append(f"ρ = n/a (n = {n}, {over})" if math.isnan(rho) else
                     f"ρ = {rho:+.{digits}f} (n = {n} {over}, permutation p = {p:.2g})")  # fmt: skip
    return sep.join(parts)


def diagnostics_table(diag: pd.DataFrame, changes: pd.DataFrame, models, benchmarks) -> Table:
    methods = run_methods(normalize_models(models))
    data = diag.merge(changes, on="model", how="left")
    cols = ["run", "seed", "off_task_kl_model_base", "off_task_kl_base_model", "own_kl_model_base",
            "own_kl_base_model", *[f"{b}_change" for b in benchmarks], "retention_change"]  # fmt: skip
    data = data[[c for c in cols if c in data]]
    names = {
        "off_task_kl_model_base": f"off-task {DRIFT['kl_model_base']}",
        "off_task_kl_base_model": f"off-task {DRIFT['kl_base_model']}",
        "own_kl_model_base": f"own-state {DRIFT['kl_model_base']}",
        "own_kl_base_model": f"own-state {DRIFT['kl_base_model']}",
        **{f"{b}_change": f"{label(b)} Δ" for b in benchmarks},
        "retention_change": "mean retention Δ",
    }
    disp = []
    for row in data.to_dict("records"):
        shown = {"run": row["run"], "seed": "–" if row["run"] == BASE else str(int(row["seed"]))}
        for c in data.columns[2:]:
            shown[names[c]] = _fmt(row[c], digits=4 if "kl" in c else 3, signed="change" in c)
        disp.append(_with_method(shown, row["run"], methods))
    notes = [f"{name}: {spearman_text(data, f'off_task_{key}')}" for key, name in DRIFT.items()]
    note = (
        "Mean per-token KL to the base model on off-task states (probe items of the retention benchmarks, from a split "
        "no score reads, with a correct answer) and on the model's own GSM8K samples; accuracy change against base per benchmark (primary metric) "
        "and its mean over the retention benchmarks (negative = forgetting). Spearman rank correlation between "
        "off-task drift and mean retention change, with its two-sided permutation p-value: " + "; ".join(notes) + "."
    )
    caption = "Drift from the base and forgetting"
    return Table(TABLE, _data_with_method(data, methods), pd.DataFrame(disp), note, caption)


def drift_vs_retention_figure(data: pd.DataFrame, colors: Mapping[str, str], runs, retention=None):
    """Two panels (KL(model||base), KL(base||model) on off-task states): x = drift, y = mean retention change
    (its y-axis names ``retention``'s primary metrics, default the retention benchmarks among the data's)."""
    if retention is None:
        retention = [c[: -len("_change")] for c in data if c.endswith("_change") and c != "retention_change"]
        retention = [b for b in retention if figures.benchmark_facts(b).role == "retention"]
    markers = figures.run_markers(runs)
    with figures._rc():
        fig = figures._figure((10.0, 4.0))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (key, name) in zip(axes, DRIFT.items()):
            col = f"off_task_{key}"
            ax.axhline(0, color="0.4", lw=0.9, ls="--", zorder=1)
            for run in runs:
                sub = data[data["run"] == run]
                if sub.empty or col not in sub:
                    continue
                ax.scatter(sub[col], sub["retention_change"], s=130 if run == BASE else 50, marker=markers[run],
                           color=colors[run], edgecolor="black", linewidth=0.5, zorder=3, label=run)  # fmt: skip
            ax.set_title(f"{name}: Spearman\n{spearman_text(data, col, digits=2, sep=chr(10))}", fontsize=9)
            ax.set_xlabel(f"off-task {name} (nats/token)")
            ax.grid(alpha=0.25)
            ax.set_axisbelow(True)
        names = " & ".join(figures.metric_label(b) for b in retention)
        axes[0].set_ylabel(f"mean retention change vs base\n({names}; ↑ less forgetting)")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right center", frameon=False)
        fig.suptitle("Does drift on off-task states predict forgetting? (one point per run and seed)", fontsize=11)
    return fig


def state_nll_figure(metrics: pd.DataFrame, diag: pd.DataFrame, colors: Mapping[str, str], runs):
    """The init model's NLL of each run's training states per optimiser step, every run and seed on one axis."""
    styles = figures.SEED_STYLES
    with figures._rc():
        fig = figures._figure((8.0, 4.0))
        ax = fig.add_subplot()
        drawn, seeds = False, {}
        for run in [r for r in runs if r != BASE]:
            sub = metrics[metrics["run"] == run] if "state_nll" in metrics else metrics.iloc[:0]
            for k, seed in enumerate(dict.fromkeys(sub["seed"])):
                s = sub[(sub["seed"] == seed) & sub["state_nll"].notna()].sort_values("step")
                if s.empty:
                    continue
                y = s["state_nll"].astype(float)
                ax.plot(s["step"], y, color=colors[run], alpha=0.25, lw=0.8)
                ax.plot(s["step"], figures._smooth(y, len(y)), color=colors[run], lw=1.8, ls=styles[k % len(styles)],
                        label=run if k == 0 else None)  # fmt: skip
                seeds.setdefault(k, seed)
                drawn = True
        if len(seeds) > 1:  # a run's seeds differ by line style: say which is which (the k-th seed of each run)
            for k, seed in sorted(seeds.items()):
                ax.plot([], [], color="0.45", lw=1.8, ls=styles[k % len(styles)], label=f"seed {seed}")
        base = diag[diag["run"] == BASE]
        # thin solid lines in black and grey: no seed's style, so the references are not read as a seed
        for col, text, color in (("dataset_nll_base", "base: GSM8K test solutions", "black"),
                                 ("own_nll_base", "base: its own samples", "0.6")):  # fmt: skip
            if not base.empty and col in base and pd.notna(base[col].iloc[0]):
                ax.axhline(float(base[col].iloc[0]), color=color, lw=1.0, label=text, zorder=1.5)
        if not drawn:
            ax.text(0.5, 0.5, "(no state_nll logged: diagnostics.state_nll is off)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8.5, color="0.4")  # fmt: skip
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("init model's NLL of the step's states\n(nats per completion token)")
        ax.set_title("How off-policy are the training states? (thin: raw; thick: moving average)")
        ax.grid(alpha=0.25)
        if ax.get_legend_handles_labels()[0]:
            fig.legend(loc="outside right center", frameon=False, fontsize=8)
    return fig


def write_diagnostics(diagnostics_dir, scores, metrics, models, benchmarks, retention, tables_dir, figures_dir):
    """Write the diagnostics table and both figures; return the Table."""
    from .tables import write_table

    norm = normalize_models(models)
    runs = run_order(norm)
    colors = figures.run_colors(runs)
    diag = load_diagnostics(diagnostics_dir, norm)
    table = diagnostics_table(diag, changes_vs_base(scores, benchmarks, retention), norm, benchmarks)
    write_table(table, tables_dir)
    figures.save_figure(drift_vs_retention_figure(table.data, colors, runs, retention), figures_dir, FIGURES[0])
    figures.save_figure(state_nll_figure(metrics, diag, colors, runs), figures_dir, FIGURES[1])
    return table
