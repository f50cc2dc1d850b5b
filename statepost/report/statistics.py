"""Summaries of the scores and the one uncertainty convention every table, figure and verdict uses.

The uncertainty of a run's mean score on a benchmark is ``sqrt(seed_sem**2 + eval_stderr**2)`` where ``seed_sem``
is the standard error of the mean over seeds (0 with one seed) and ``eval_stderr`` is lm-eval's bootstrap/analytic
standard error, root-mean-square over seeds (it does not shrink with more seeds: every seed is scored on the same
test items). A difference of two such numbers has uncertainty ``sqrt(u1**2 + u2**2)``; a mean of ``k`` changes has
``sqrt(sum u_i**2) / k``. These are 1-sigma standard errors; verdicts compare against ``z`` of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from .load import BASE, target_and_retention


def rss(*us) -> float:
    """Root of the sum of squares, NaN treated as 0; NaN only if every term is NaN."""
    arr = np.asarray(us, dtype=float)
    if np.isnan(arr).all():
        return float("nan")
    return float(np.sqrt(np.nansum(arr**2)))


def summarize(scores: pd.DataFrame, runs: Iterable[str] | None = None, benchmarks: Iterable[str] | None = None):
    """Per run x benchmark on the primary metric: n_seeds, mean, seed_std, seed_sem, eval_stderr, uncertainty,
    spread (seed std with >1 seed, else lm-eval stderr; what the bar chart draws) and n (samples scored)."""
    prim = scores[scores["primary"]] if "primary" in scores else scores
    runs = list(runs) if runs is not None else list(dict.fromkeys(prim["run"]))
    benchmarks = list(benchmarks) if benchmarks is not None else list(dict.fromkeys(prim["benchmark"]))
    g = prim.groupby(["run", "benchmark"], sort=False)
    out = g.agg(
        metric=("metric", "first"),
        n_seeds=("value", "count"),
        mean=("value", "mean"),
        seed_std=("value", "std"),
        seed_sem=("value", "sem"),
        eval_stderr=("stderr", lambda s: float(np.sqrt((s**2).mean())) if s.notna().any() else float("nan")),
        n=("n", "max"),
    ).reset_index()
    out["uncertainty"] = [rss(a, b) for a, b in zip(out["seed_sem"], out["eval_stderr"])]
    out["spread"] = np.where(out["n_seeds"] > 1, out["seed_std"], out["eval_stderr"])
    out["spread_kind"] = np.where(out["n_seeds"] > 1, "seed std", "lm-eval stderr")
    out = out[out["run"].isin(runs) & out["benchmark"].isin(benchmarks)]
    out["run"] = pd.Categorical(out["run"], categories=runs, ordered=True)
    out["benchmark"] = pd.Categorical(out["benchmark"], categories=benchmarks, ordered=True)
    out = out.sort_values(["run", "benchmark"]).reset_index(drop=True)
    out["run"] = out["run"].astype(str)
    out["benchmark"] = out["benchmark"].astype(str)
    return out


def lookup(summary: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """(run, benchmark) -> (mean, uncertainty)."""
    return {(r.run, r.benchmark): (float(r.mean), float(r.uncertainty)) for r in summary.itertuples()}


def deltas_vs_base(summary: pd.DataFrame) -> pd.DataFrame:
    """Per run (not base) x benchmark: delta = run mean - base, uncertainty = rss of both."""
    look = lookup(summary)
    rows = []
    for r in summary.itertuples():
        if r.run == BASE or (BASE, r.benchmark) not in look:
            continue
        b, ub = look[(BASE, r.benchmark)]
        rows.append(
            {
                "run": r.run,
                "benchmark": r.benchmark,
                "n_seeds": r.n_seeds,
                "run_mean": r.mean,
                "base": b,
                "delta": r.mean - b,
                "uncertainty": rss(r.uncertainty, ub),
            }
        )
    return pd.DataFrame(rows, columns=["run", "benchmark", "n_seeds", "run_mean", "base", "delta", "uncertainty"])


def retention_summary(summary: pd.DataFrame, target: str | None = None, retention: Iterable[str] | None = None):
    """Per run: target gain vs base, change on each retention benchmark, and their mean (with uncertainties).
    ``target`` and ``retention`` default to the roles (``statepost.benchmarks``) of the summary's benchmarks."""
    d = deltas_vs_base(summary)
    default_target, default_retention = target_and_retention(dict.fromkeys(summary["benchmark"]))
    target = target or default_target
    retention = list(default_retention if retention is None else retention)
    rows = []
    for run, g in d.groupby("run", sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "n_seeds": int(by["n_seeds"].max())}
        row[f"{target}_gain"] = by["delta"].get(target, np.nan)
        row[f"{target}_gain_unc"] = by["uncertainty"].get(target, np.nan)
        changes, uncs = [], []
        for b in retention:
            row[f"{b}_change"] = by["delta"].get(b, np.nan)
            row[f"{b}_change_unc"] = by["uncertainty"].get(b, np.nan)
            changes.append(row[f"{b}_change"])
            uncs.append(row[f"{b}_change_unc"])
        row["retention_change"] = float(np.mean(changes)) if retention else np.nan
        row["retention_change_unc"] = rss(*uncs) / len(uncs) if retention else np.nan
        rows.append(row)
    cols = (
        ["run", "n_seeds", f"{target}_gain", f"{target}_gain_unc"]
        + [c for b in retention for c in (f"{b}_change", f"{b}_change_unc")]
        + ["retention_change", "retention_change_unc"]
    )
    return pd.DataFrame(rows, columns=cols)
