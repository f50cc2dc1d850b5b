"""Summaries of the scores and the one uncertainty convention every table, figure and verdict uses.

A run's score on a benchmark: its uncertainty is ``sqrt(seed_sem**2 + eval_stderr**2)``, ``seed_sem`` the standard
error of the mean over seeds (0 with one seed) and ``eval_stderr`` lm-eval's standard error, root-mean-square over
seeds (it does not shrink with more seeds: every seed is scored on the same test items).

A change of run A against run B on a benchmark (a run against base, OPD against its teacher): every model is scored
on the same test items, so the item-sampling errors of A's and B's scores are strongly correlated and are not
added. The change's uncertainty is ``sqrt(seed_sem**2 + item_se**2)`` (:func:`paired_change`): per item ``i``,
``d_i`` = the mean over A's seeds ``s`` of ``A_s,i - B_s,i`` (B's same seed; base has none; where B lacks some of
A's seeds, B's item mean over its seeds, and B's seed standard error is added to ``seed_sem``);
``item_se = std(d, ddof=1) / sqrt(n)`` over the ``n`` items; ``seed_sem`` is the standard error over seeds of the
per-seed changes (0 with one seed). The per-item scores are lm-eval's per-sample logs (:func:`.load.load_items`).
Where a model involved has no log, the change falls back to the unpaired ``sqrt(u_A**2 + u_B**2)`` of the two
scores' uncertainties and is marked unpaired (``paired`` False), so the two conventions never mix unseen.

A mean of ``k`` changes (the mean retention change) has ``sqrt(sum u_i**2) / k``. These are 1-sigma standard
errors.

Degrees of freedom: a standard error that sums terms estimated from few values is itself uncertain. The seed term
rests on ``k - 1`` degrees of freedom (``k`` seeds), the item term on ``n - 1`` (``n`` items), lm-eval's standard
error on many. Each change carries ``df``, the Welch-Satterthwaite degrees of freedom of its squared standard error
(:func:`satterthwaite`), and the verdicts compare against Student's t with ``df`` (:mod:`.claims`): with three seeds
and a seed term that dominates, the critical value is near t(2) = 4.30 at one-sided 0.025, not 1.96.

The tests' maths lives here too: Student's t tail and quantile (:func:`t_sf`, :func:`t_isf`) and Holm's step-down
procedure (:func:`holm`); :mod:`.claims` decides what they mean for a claim, :mod:`.factorial` draws its intervals
with the same quantile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .load import BASE, normalize_models, target_and_retention


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


def metric_summaries(scores: pd.DataFrame, runs=None, benchmarks=None) -> dict[str, pd.DataFrame]:
    """Per metric that is not its benchmark's primary one (GSM8K's flexible-extract): :func:`summarize` with that
    benchmark read on that metric (the other benchmarks on their primary one)."""
    out = {}
    if "primary" not in scores:
        return out
    for bench in dict.fromkeys(scores["benchmark"]):
        rows = scores["benchmark"] == bench
        for metric in dict.fromkeys(scores.loc[rows & ~scores["primary"], "metric"]):
            swapped = scores.assign(primary=np.where(rows, scores["metric"] == metric, scores["primary"]))
            out[metric] = summarize(swapped, runs=runs, benchmarks=benchmarks)
    return out


def lookup(summary: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """(run, benchmark) -> (mean, uncertainty)."""
    keys = zip(summary["run"], summary["benchmark"])
    return {k: (float(m), float(u)) for k, m, u in zip(keys, summary["mean"], summary["uncertainty"])}


def satterthwaite(*terms: tuple[float, float]) -> float:
    """Welch-Satterthwaite degrees of freedom of ``sum s_i**2`` from ``(s_i, df_i)`` terms: ``(sum s_i**2)**2 /
    sum(s_i**4 / df_i)``. A term with ``s_i`` 0 or NaN adds nothing; ``df_i`` inf (a standard error known exactly)
    adds no uncertainty; inf when no term is uncertain."""
    num = den = 0.0
    for s, df in terms:
        if s is None or not np.isfinite(s) or s == 0:
            continue
        num += s**2
        if np.isfinite(df):
            if df <= 0:
                return float("nan")
            den += s**4 / df
    return float(num**2 / den) if den > 0 else float("inf")


def mean_of_changes(changes) -> tuple[float, float, float]:
    """``(value, uncertainty, df)`` of the mean of k independent changes, each ``(value, uncertainty, df)``: the
    uncertainty is their root sum of squares over k, the df Welch-Satterthwaite's. How retention combines its
    benchmarks, in a claim's ``retention_drop`` and in the factorial's effects alike."""
    k = len(changes)
    value = sum(v for v, _, _ in changes) / k
    return value, rss(*(u for _, u, _ in changes)) / k, satterthwaite(*((u / k, df) for _, u, df in changes))


def t_sf(x: float, df: float) -> float:
    """P(T > x) for Student's t with ``df`` degrees of freedom (the normal when df is infinite: a standard error
    known exactly)."""
    from scipy import stats

    return float(stats.norm.sf(x) if math.isinf(df) else stats.t.sf(x, df))


def t_isf(p: float, df: float) -> float:
    """The x with P(T > x) = ``p`` (:func:`t_sf`'s inverse): the one-sided critical value at level ``p``."""
    from scipy import stats

    return float(stats.norm.isf(p) if math.isinf(df) else stats.t.isf(p, df))


def holm(pvalues: list[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections at family-wise level ``alpha``: the i-th smallest p-value is rejected when it
    and every smaller one are at most ``alpha / (m - rank)``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    reject = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        reject[i] = True
    return reject


def sem(values) -> float:
    """Standard error of the mean (``ddof=1``); 0 for a single value."""
    v = np.asarray(values, dtype=float)
    return float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0


def paired_change(a_rows, b_rows, partner_sem: float = 0.0, partner_df: float = float("inf")) -> dict:
    """The change A - B on one benchmark from per-item scores, with its paired standard error.

    ``a_rows``: one array per seed of A over the benchmark's ``n`` items; ``b_rows``: each one's partner over the
    same items (B's same seed, base, or B's item mean over its seeds). ``partner_sem``: B's seed standard error,
    added in quadrature where a partner is B's mean (its seed noise is not in the per-seed changes), with
    ``partner_df`` degrees of freedom. Returns ``delta`` (mean per-seed change), ``seed_sem`` (standard error over
    seeds of the per-seed changes, with ``partner_sem``), ``item_se`` (``std(d, ddof=1) / sqrt(n)`` of the
    per-item changes ``d`` averaged over seeds), ``uncertainty`` (the two in quadrature) and ``df`` (its
    :func:`satterthwaite` degrees of freedom: ``k - 1`` for the seed term over ``k`` seeds, ``n - 1`` for the item
    term).
    """
    diff = np.asarray(a_rows, dtype=float) - np.asarray(b_rows, dtype=float)  # seeds x items
    if diff.ndim != 2 or diff.shape[1] < 2:
        raise ValueError(f"paired_change: expected seeds x items (at least 2 items), got shape {diff.shape}")
    per_seed = diff.mean(axis=1)
    own_sem = sem(per_seed)
    seed_sem = rss(own_sem, partner_sem)
    item_se = sem(diff.mean(axis=0))
    k, n = diff.shape
    return {
        "delta": float(per_seed.mean()),
        "seed_sem": seed_sem,
        "item_se": item_se,
        "uncertainty": float(np.hypot(seed_sem, item_se)),
        "df": satterthwaite((own_sem, k - 1), (partner_sem, partner_df), (item_se, n - 1)),
    }


class Changes:
    """The uncertainty of a change between two runs on one benchmark, paired over the items where it can be.

    ``summary``: :func:`summarize`'s table (means, uncertainties and the metric each benchmark is read on);
    ``models``: the model list (which model is which run's seed); ``items``: :func:`.load.load_items`' per-item
    scores. Without ``models`` or ``items`` (or with a single item) every change is unpaired. Calling it gives
    ``{"uncertainty", "seed_sem", "item_se", "paired"}``; an unpaired change has ``item_se`` NaN and ``seed_sem`` the
    two runs' seed standard errors in quadrature. Every change has ``df`` (:func:`satterthwaite`); an unpaired one
    counts each run's seed term on ``k - 1`` degrees of freedom and lm-eval's standard errors as exact.
    """

    def __init__(self, summary: pd.DataFrame, models=None, items: dict | None = None):
        self.look = lookup(summary)
        rows = list(summary.itertuples())
        self.metric = {(r.run, r.benchmark): getattr(r, "metric", None) for r in rows}
        self.seed_sem = {(r.run, r.benchmark): float(getattr(r, "seed_sem", np.nan)) for r in rows}
        self.n_seeds = {(r.run, r.benchmark): int(getattr(r, "n_seeds", 1)) for r in rows}
        self.models: dict[str, dict] = {}  # run -> {seed: model name}
        for name, info in (normalize_models(models) if models is not None else {}).items():
            self.models.setdefault(info["run"], {})[info["seed"]] = name
        self.items = dict(items or {})

    def partners(self, a: str, b: str) -> list[tuple[str, str | None]]:
        """Each model of run ``a`` with its partner in run ``b``: base; ``b``'s same seed when ``b`` has exactly
        ``a``'s seeds; else None (``b``'s item mean over its seeds)."""
        a_models, b_models = self.models.get(a, {}), self.models.get(b, {})
        if b == BASE:
            return [(m, b_models.get(None)) for m in a_models.values()]
        same = set(a_models) == set(b_models)
        return [(m, b_models[s] if same else None) for s, m in a_models.items()]

    def __call__(self, a: str, b: str, bench: str, partners: list[tuple[str, str | None]] | None = None) -> dict:
        """Run ``a`` minus run ``b`` on ``bench``; ``partners`` as :meth:`partners` gives them (the default)."""
        if a == BASE and b != BASE and partners is None:
            return self(b, a, bench)  # the same items, the same standard error
        rows = self._rows(a, b, bench, partners if partners is not None else self.partners(a, b))
        if rows is None:
            terms = [self._unpaired_terms(run, bench) for run in (a, b)]
            return {
                "uncertainty": rss(self.look[(a, bench)][1], self.look[(b, bench)][1]),
                "seed_sem": rss(self.seed_sem.get((a, bench)), self.seed_sem.get((b, bench)), 0.0),
                "item_se": float("nan"),
                "paired": False,
                "df": satterthwaite(*(t for pair in terms for t in pair)),
            }
        out = paired_change(*rows)
        del out["delta"]  # the callers' value is the summary's mean difference
        return {**out, "paired": True}

    def _unpaired_terms(self, run, bench):
        """A run's score uncertainty as (seed term, k - 1 degrees of freedom) and (lm-eval's term, exact)."""
        total, seed = self.look[(run, bench)][1], self.seed_sem.get((run, bench), np.nan)
        seed = 0.0 if not np.isfinite(seed) else seed
        rest = float(np.sqrt(max(total**2 - seed**2, 0.0))) if np.isfinite(total) else 0.0
        return (seed, self.n_seeds.get((run, bench), 1) - 1), (rest, float("inf"))

    def _rows(self, a, b, bench, partners):
        """(A's rows, their partners' rows, B's seed sem if a partner is B's mean), or None where a log is missing."""
        metric = self.metric.get((a, bench))
        if not partners or metric is None or self.metric.get((b, bench)) != metric:
            return None

        def get(model):
            return self.items.get((model, bench, metric))

        a_rows = [get(m) for m, _ in partners]
        b_mean, partner_sem = None, 0.0
        if any(p is None for _, p in partners):
            b_all = [get(m) for m in self.models.get(b, {}).values()]
            if not b_all or any(x is None for x in b_all):
                return None
            b_mean = np.mean(b_all, axis=0)
            partner_sem = self.seed_sem.get((b, bench), 0.0)
        b_rows = [get(p) if p is not None else b_mean for _, p in partners]
        if any(x is None or len(x) < 2 for x in a_rows + b_rows):
            return None  # a log is missing, or one item: no spread to estimate
        return a_rows, b_rows, partner_sem, self.n_seeds.get((b, bench), 1) - 1.0


def deltas_vs_base(summary: pd.DataFrame, changes: Changes | None = None) -> pd.DataFrame:
    """Per run (not base) x benchmark: delta = run mean - base, its uncertainty, seed_sem and item_se
    (``changes``; default: unpaired) and whether it is paired over the items."""
    look = lookup(summary)
    changes = changes or Changes(summary)
    rows = []
    for r in summary.itertuples():
        if r.run == BASE or (BASE, r.benchmark) not in look:
            continue
        b, _ = look[(BASE, r.benchmark)]
        c = changes(r.run, BASE, r.benchmark)
        rows.append(
            {
                "run": r.run,
                "benchmark": r.benchmark,
                "n_seeds": r.n_seeds,
                "run_mean": r.mean,
                "base": b,
                "delta": r.mean - b,
                "uncertainty": c["uncertainty"],
                "seed_sem": c["seed_sem"],
                "item_se": c["item_se"],
                "paired": c["paired"],
            }
        )
    cols = ["run", "benchmark", "n_seeds", "run_mean", "base", "delta", "uncertainty", "seed_sem", "item_se", "paired"]
    return pd.DataFrame(rows, columns=cols)


def retention_summary(summary: pd.DataFrame, target: str | None = None, retention: Iterable[str] | None = None,
                      changes: Changes | None = None):  # fmt: skip
    """Per run: target gain vs base, change on each retention benchmark, and their mean (with uncertainties, and
    whether each is paired over the items: ``*_paired``; the mean's when all its changes are).
    ``target`` and ``retention`` default to the roles (``statepost.benchmarks``) of the summary's benchmarks."""
    d = deltas_vs_base(summary, changes)
    default_target, default_retention = target_and_retention(dict.fromkeys(summary["benchmark"]))
    target = target or default_target
    retention = list(default_retention if retention is None else retention)
    rows = []
    for run, g in d.groupby("run", sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "n_seeds": int(by["n_seeds"].max())}
        row[f"{target}_gain"] = by["delta"].get(target, np.nan)
        row[f"{target}_gain_unc"] = by["uncertainty"].get(target, np.nan)
        values, uncs = [], []
        for b in retention:
            row[f"{b}_change"] = by["delta"].get(b, np.nan)
            row[f"{b}_change_unc"] = by["uncertainty"].get(b, np.nan)
            values.append(row[f"{b}_change"])
            uncs.append(row[f"{b}_change_unc"])
        row["retention_change"] = float(np.mean(values)) if retention else np.nan
        row["retention_change_unc"] = rss(*uncs) / len(uncs) if retention else np.nan
        row[f"{target}_gain_paired"] = bool(by["paired"].get(target, False))
        for b in retention:
            row[f"{b}_change_paired"] = bool(by["paired"].get(b, False))
        row["retention_change_paired"] = bool(retention) and all(row[f"{b}_change_paired"] for b in retention)
        rows.append(row)
    cols = (
        ["run", "n_seeds", f"{target}_gain", f"{target}_gain_unc"]
        + [c for b in retention for c in (f"{b}_change", f"{b}_change_unc")]
        + ["retention_change", "retention_change_unc", f"{target}_gain_paired"]
        + [f"{b}_change_paired" for b in retention]
        + ["retention_change_paired"]
    )
    return pd.DataFrame(rows, columns=cols)
