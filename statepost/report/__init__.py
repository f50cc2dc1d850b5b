"""The report: score tables, figures and a verdict for each of the paper's three claims.

Everything here reads the files other rules write (``results/scores/{model}/{benchmark}.json`` and
``results/models/{run}/seed{seed}/metrics.jsonl``) and turns them into

* tables (``results/tables/{name}.csv|.md|.tex``): ``scores``, ``delta_vs_base``, ``delta_vs_teacher``,
  ``retention``, plus ``claims.md`` / ``claims.json``;
* figures (``results/figures/{name}.png|.pdf``): ``scores``, ``retention_vs_gain``, ``training_curves``.

Uncertainty convention (used by tables, error bars of delta figures and verdicts alike): the uncertainty of a
run's mean score on a benchmark is ``sqrt(seed_sem**2 + eval_stderr**2)`` where ``seed_sem`` is the standard
error of the mean over seeds (0 with one seed) and ``eval_stderr`` is lm-eval's bootstrap/analytic standard error,
root-mean-square over seeds (it does not shrink with more seeds: every seed is scored on the same test items).
A difference of two such numbers has uncertainty ``sqrt(u1**2 + u2**2)``; a mean of ``k`` changes has
``sqrt(sum u_i**2) / k``. These are 1-sigma standard errors; verdicts compare against ``z`` of them.

``models`` (the model list handed to the report) maps a model name to its description, in config order::

    {"base": {"run": "base", "seed": null},
     "sft_stress/seed0": {"run": "sft_stress", "seed": 0},
     "opd/seed0": {"run": "opd", "seed": 0, "teacher": "sft_stress"}}

``teacher`` is a run name (compared seed by seed where the teacher has the same seed, else against the
teacher's mean) or a model name ``{run}/seed{seed}`` (compared against that one model). ``run``/``seed`` may be
left out when the name follows the ``base`` / ``{run}/seed{seed}`` convention; a plain list of names works too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from statepost.io import ConfigError, DataError, atomic_file, read_jsonl, write_json

BASE = "base"
TARGET = "gsm8k"
BENCHMARKS = ("gsm8k", "truthfulqa_mc2", "mmlu")
RETENTION = ("truthfulqa_mc2", "mmlu")
PRIMARY_METRIC = {
    "gsm8k": "exact_match,strict-match",
    "truthfulqa_mc2": "acc,none",
    "mmlu": "acc,none",
}
BENCHMARK_LABEL = {"gsm8k": "GSM8K", "truthfulqa_mc2": "TruthfulQA mc2", "mmlu": "MMLU"}

# Verdict thresholds (config: claims.thresholds). Accuracies are fractions in [0, 1], so 0.02 = 2 points.
DEFAULT_THRESHOLDS = {
    # max mean retention drop (TruthfulQA mc2, MMLU) for "little forgetting" / "keeps retention"
    "little_forgetting": 0.02,
    "substantial_loss": 0.05,  # min mean retention drop for "forgets a lot"
    "min_gain": 0.0,  # GSM8K change vs base must exceed this to count as an improvement
    "surpass_margin": 0.0,  # OPD minus its teacher must exceed this on every benchmark
    "z": 1.96,  # a check within z * uncertainty of its threshold is undecided
}
# Claim roles (config: claims.roles) -> run names.
DEFAULT_ROLES = {
    "mild": "sft_mild",
    "stress": "sft_stress",
    "opd": "opd",
    "rl": "rl",
    "opd_teacher": "sft_stress",
}

TABLES = ("scores", "delta_vs_base", "delta_vs_teacher", "retention")
TABLE_FORMATS = ("csv", "md", "tex")
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

_MODEL_RE = re.compile(r"^(?P<run>[^/]+)/seed(?P<seed>\d+)$")


# --------------------------------------------------------------------------------------------- models


def parse_model_name(name: str) -> tuple[str, int | None]:
    """``"base"`` -> ("base", None); ``"{run}/seed{seed}"`` -> (run, seed)."""
    if name == BASE:
        return BASE, None
    m = _MODEL_RE.match(name)
    if not m:
        raise ConfigError(f"models: {name!r} is neither 'base' nor '{{run}}/seed{{seed}}'")
    return m["run"], int(m["seed"])


def normalize_models(models: Mapping | Iterable) -> dict[str, dict]:
    """Return ``{model: {"run", "seed", "teacher", "role"}}`` in the given order (see module doc)."""
    if isinstance(models, Mapping) and "models" in models and isinstance(models["models"], (Mapping, list)):
        models = models["models"]
    if not isinstance(models, Mapping):  # a list of names, or of dicts with a "name" (the workflow's form)
        items = {}
        for i, m in enumerate(models):
            if isinstance(m, str):
                items[m] = {}
            elif isinstance(m, Mapping) and isinstance(m.get("name"), str):
                items[m["name"]] = m
            else:
                raise ConfigError(f"models[{i}]: expected a model name or an object with a 'name', got {m!r}")
        models = items
    out: dict[str, dict] = {}
    for name, info in models.items():
        info = dict(info or {})
        if "run" in info:
            run, seed = info["run"], info.get("seed")
        else:
            run, seed = parse_model_name(name)
        if run == BASE:
            seed = None
        elif seed is None or isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"models.{name}.seed: a trained run needs an integer seed, got {seed!r}")
        out[name] = {"run": run, "seed": seed, "teacher": info.get("teacher"), "role": info.get("role")}
    if not out:
        raise ConfigError("models: empty model list")
    return out


def run_order(models: Mapping) -> list[str]:
    """Runs in order of first appearance, base first."""
    runs = list(dict.fromkeys(info["run"] for info in normalize_models(models).values()))
    return sorted(runs, key=lambda r: r != BASE)


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


def resolve_roles(models, roles: Mapping[str, str] | None = None) -> dict[str, str]:
    """Claim roles -> runs: ``DEFAULT_ROLES``, then ``role`` keys in the model list, then ``roles``.
    Unless given explicitly, ``opd_teacher`` is the teacher named by the OPD run (else the stress run)."""
    out = {k: v for k, v in DEFAULT_ROLES.items() if k != "opd_teacher"}
    norm = normalize_models(models)
    for info in norm.values():
        if info["role"]:
            out[info["role"]] = info["run"]
    roles = dict(roles or {})
    unknown = set(roles) - set(DEFAULT_ROLES)
    if unknown:
        raise ConfigError(f"claims.roles: unknown role(s) {sorted(unknown)} (known: {', '.join(DEFAULT_ROLES)})")
    out.update(roles)
    if "opd_teacher" not in roles:
        teachers = [info["teacher"] for info in norm.values() if info["run"] == out.get("opd") and info["teacher"]]
        out["opd_teacher"] = _teacher_ref(teachers[0])[0] if teachers else out.get("stress")
    return out


def check_thresholds(thresholds: Mapping | None) -> dict[str, float]:
    """Defaults overlaid with ``thresholds``; unknown keys and non-numbers are errors."""
    out = dict(DEFAULT_THRESHOLDS)
    for k, v in (thresholds or {}).items():
        if k not in DEFAULT_THRESHOLDS:
            raise ConfigError(f"claims.thresholds.{k}: unknown key (known: {', '.join(DEFAULT_THRESHOLDS)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"claims.thresholds.{k}: expected a finite number, got {v!r}")
        out[k] = float(v)
    if out["z"] < 0:
        raise ConfigError("claims.thresholds.z: must be >= 0")
    return out


def _teacher_ref(teacher: str) -> tuple[str, int | None]:
    m = _MODEL_RE.match(teacher)
    return (m["run"], int(m["seed"])) if m else (teacher, None)


# --------------------------------------------------------------------------------------------- loading


def load_scores(scores_dir, models, benchmarks: Iterable[str] = BENCHMARKS) -> pd.DataFrame:
    """Read ``scores_dir/{model}/{benchmark}.json`` for every model x benchmark into a tidy DataFrame.

    Columns: model, run, seed, benchmark, metric, value, stderr, n, primary (one row per listed metric;
    ``primary`` marks the metric the tables use: gsm8k strict-match, acc otherwise).
    """
    scores_dir = Path(scores_dir)
    norm = normalize_models(models)
    benchmarks = list(benchmarks)
    rows, missing = [], []
    for model, info in norm.items():
        for bench in benchmarks:
            path = scores_dir / model / f"{bench}.json"
            if not path.is_file():
                missing.append(str(path))
                continue
            rows.extend(_read_score_file(path, model, info, bench))
    if missing:
        raise DataError("missing score file(s): " + ", ".join(missing))
    df = pd.DataFrame(rows, columns=["model", "run", "seed", "benchmark", "metric", "value", "stderr", "n", "primary"])
    df["seed"] = df["seed"].astype("Int64")
    df["value"] = df["value"].astype(float)
    df["stderr"] = df["stderr"].astype(float)
    df["n"] = df["n"].astype("Int64")
    return df


def _read_score_file(path: Path, model: str, info: dict, bench: str) -> list[dict]:
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in ("model", "benchmark", "value"):
        if key not in rec:
            raise DataError(f"{path}: missing field {key!r}")
    if rec["model"] != model:
        raise DataError(f"{path}: field 'model' is {rec['model']!r}, expected {model!r}")
    if rec["benchmark"] != bench:
        raise DataError(f"{path}: field 'benchmark' is {rec['benchmark']!r}, expected {bench!r}")
    primary = PRIMARY_METRIC.get(bench, rec.get("primary_metric"))
    metrics = rec.get("metrics") or [
        {"metric": rec.get("primary_metric", primary), "value": rec["value"], "stderr": rec.get("stderr")}
    ]
    rows = []
    for i, m in enumerate(metrics):
        if not isinstance(m, dict) or "metric" not in m or "value" not in m:
            raise DataError(f"{path}: metrics[{i}] needs 'metric' and 'value'")
        rows.append(
            {
                "model": model,
                "run": info["run"],
                "seed": info["seed"],
                "benchmark": bench,
                "metric": m["metric"],
                "value": _number(m["value"], path, f"metrics[{i}].value", allow_none=m["metric"] != primary),
                "stderr": _number(m.get("stderr"), path, f"metrics[{i}].stderr", allow_none=True),
                "n": rec.get("n"),
                "primary": m["metric"] == primary,
            }
        )
    prim = [r for r in rows if r["primary"]]
    if not prim:
        raise DataError(f"{path}: primary metric {primary!r} not among metrics {[r['metric'] for r in rows]}")
    if not math.isfinite(prim[0]["value"]):
        raise DataError(f"{path}: primary metric {primary!r} has no finite value")
    return rows


def _number(v, path, fld, allow_none=False) -> float:
    if v is None and allow_none:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"{path}: field {fld} must be a number, got {v!r}")
    # lm-eval writes "N/A" for stderr where none exists; JSON null is handled above
    return float(v)


def load_metrics(metrics_dir, models) -> pd.DataFrame:
    """Read ``metrics_dir/{run}/seed{seed}/metrics.jsonl`` for every trained model (base has none).

    Columns: model, run, seed, step, then every logged key (loss, kl, reward, ...)."""
    metrics_dir = Path(metrics_dir)
    frames, missing = [], []
    for model, info in normalize_models(models).items():
        if info["run"] == BASE:
            continue
        path = metrics_dir / model / "metrics.jsonl"
        if not path.is_file():
            missing.append(str(path))
            continue
        rows = list(read_jsonl(path))
        for i, row in enumerate(rows, 1):
            if "step" not in row or "loss" not in row:
                raise DataError(f"{path}:{i}: a metrics row needs 'step' and 'loss'")
        df = pd.DataFrame(rows)
        if df.empty:
            raise DataError(f"{path}: no metrics rows")
        df.insert(0, "seed", info["seed"])
        df.insert(0, "run", info["run"])
        df.insert(0, "model", model)
        frames.append(df)
    if missing:
        raise DataError("missing metrics file(s): " + ", ".join(missing))
    if not frames:
        return pd.DataFrame(columns=["model", "run", "seed", "step", "loss"])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------- summaries


def _rss(*us) -> float:
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
    out["uncertainty"] = [_rss(a, b) for a, b in zip(out["seed_sem"], out["eval_stderr"])]
    out["spread"] = np.where(out["n_seeds"] > 1, out["seed_std"], out["eval_stderr"])
    out["spread_kind"] = np.where(out["n_seeds"] > 1, "seed std", "lm-eval stderr")
    out = out[out["run"].isin(runs) & out["benchmark"].isin(benchmarks)]
    out["run"] = pd.Categorical(out["run"], categories=runs, ordered=True)
    out["benchmark"] = pd.Categorical(out["benchmark"], categories=benchmarks, ordered=True)
    out = out.sort_values(["run", "benchmark"]).reset_index(drop=True)
    out["run"] = out["run"].astype(str)
    out["benchmark"] = out["benchmark"].astype(str)
    return out


def _lookup(summary: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    return {(r.run, r.benchmark): (float(r.mean), float(r.uncertainty)) for r in summary.itertuples()}


def deltas_vs_base(summary: pd.DataFrame) -> pd.DataFrame:
    """Per run (not base) x benchmark: delta = run mean - base, uncertainty = rss of both."""
    look = _lookup(summary)
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
                "uncertainty": _rss(r.uncertainty, ub),
            }
        )
    return pd.DataFrame(rows, columns=["run", "benchmark", "n_seeds", "run_mean", "base", "delta", "uncertainty"])


def retention_summary(summary: pd.DataFrame, target: str = TARGET, retention: Iterable[str] | None = None):
    """Per run: target gain vs base, change on each retention benchmark, and their mean (with uncertainties)."""
    d = deltas_vs_base(summary)
    if retention is None:
        retention = [b for b in dict.fromkeys(summary["benchmark"]) if b != target]
    retention = list(retention)
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
        row["retention_change_unc"] = _rss(*uncs) / len(uncs) if retention else np.nan
        rows.append(row)
    cols = (
        ["run", "n_seeds", f"{target}_gain", f"{target}_gain_unc"]
        + [c for b in retention for c in (f"{b}_change", f"{b}_change_unc")]
        + ["retention_change", "retention_change_unc"]
    )
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A table as numbers (``data``, written as CSV) and as text (``display``, written as Markdown and LaTeX)."""

    name: str
    data: pd.DataFrame
    display: pd.DataFrame
    note: str = ""
    caption: str = ""

    def markdown(self) -> str:
        align = ["left" if c in ("run", "teacher") else "right" for c in self.display.columns]
        body = (
            self.display.to_markdown(index=False, disable_numparse=True, colalign=align)
            if len(self.display)
            else "_(no rows)_"
        )
        parts = [f"**{self.caption}**" if self.caption else "", body, self.note]
        return "\n\n".join(p for p in parts if p) + "\n"

    def latex(self) -> str:
        if not len(self.display):
            return f"% {self.caption}: no rows\n"
        align = "".join("l" if c in ("run", "teacher") else "r" for c in self.display.columns)
        return self.display.to_latex(
            index=False, escape=True, column_format=align, caption=self.caption or None, label=f"tab:{self.name}"
        )


def _label(b: str) -> str:
    return BENCHMARK_LABEL.get(b, b)


def _fmt(v, u=None, signed=False, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    if u is not None and not (isinstance(u, float) and math.isnan(u)):
        s += f" ± {u:.{digits}f}"
    return s


def scores_table(summary: pd.DataFrame) -> Table:
    """Run x benchmark: mean over seeds ± spread (seed std with >1 seed, else lm-eval stderr), seeds shown."""
    data = summary[
        ["run", "benchmark", "metric", "n_seeds", "mean", "seed_std", "seed_sem", "eval_stderr", "uncertainty", "n"]
    ].copy()
    benches = list(dict.fromkeys(summary["benchmark"]))
    rows = []
    for run, g in summary.groupby("run", sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "seeds": int(by["n_seeds"].max())}
        for b in benches:
            if b in by.index:
                r = by.loc[b]
                cell = _fmt(r["mean"], r["spread"])
                if r["n_seeds"] > 1 and not math.isnan(r["eval_stderr"]):
                    cell += f" (se {r['eval_stderr']:.3f})"
                row[_label(b)] = cell
            else:
                row[_label(b)] = "–"
        rows.append(row)
    note = (
        "Accuracy (fraction correct; GSM8K: exact match, strict-match extraction; TruthfulQA mc2 and MMLU: acc). "
        "Mean over seeds ± standard deviation over seeds when a run has more than one seed, else ± lm-eval's "
        "standard error; '(se x)' is lm-eval's standard error (root mean square over seeds)."
    )
    return Table("scores", data, pd.DataFrame(rows), note, "Benchmark scores per run")


def delta_vs_base_table(summary: pd.DataFrame) -> Table:
    d = deltas_vs_base(summary)
    benches = [b for b in dict.fromkeys(summary["benchmark"])]
    rows = []
    for run, g in d.groupby("run", sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "seeds": int(by["n_seeds"].max())}
        for b in benches:
            row[_label(b)] = _fmt(by["delta"].get(b), by["uncertainty"].get(b), signed=True) if b in by.index else "–"
        rows.append(row)
    note = (
        "Change in accuracy against the base model (run mean − base), ± combined standard error "
        "(seed standard error and lm-eval standard error of run and base, added in quadrature)."
    )
    return Table("delta_vs_base", d, pd.DataFrame(rows), note, "Change against the base model")


def delta_vs_teacher_table(scores: pd.DataFrame, models, summary: pd.DataFrame | None = None) -> Table:
    """For runs with a teacher: run − teacher per benchmark, paired by seed where the teacher has that seed."""
    norm = normalize_models(models)
    prim = scores[scores["primary"]] if "primary" in scores else scores
    if summary is None:
        summary = summarize(scores, runs=run_order(norm))
    look = _lookup(summary)
    benches = list(dict.fromkeys(summary["benchmark"]))
    val = {(r.run, r.seed if not pd.isna(r.seed) else None, r.benchmark): r.value for r in prim.itertuples()}
    rows, skipped = [], []
    students = {}
    for model, info in norm.items():
        if info["teacher"]:
            students.setdefault(info["run"], []).append((info["seed"], info["teacher"]))
    for run, members in students.items():
        teachers = {_teacher_ref(t)[0] for _, t in members}
        if len(teachers) != 1:
            raise ConfigError(f"models: run {run!r} names several teacher runs: {sorted(teachers)}")
        t_run = teachers.pop()
        if not any(k[0] == t_run for k in look):
            skipped.append(f"{run} (teacher {t_run} has no scores)")
            continue
        for b in benches:
            diffs, paired = [], 0
            for seed, teacher in members:
                t_run_, t_seed = _teacher_ref(teacher)
                s_val = val.get((run, seed, b))
                if s_val is None:
                    continue
                if t_run == BASE and (BASE, None, b) in val:
                    tv = val[(BASE, None, b)]
                    paired += 1
                elif t_seed is not None and (t_run, t_seed, b) in val:
                    tv = val[(t_run, t_seed, b)]
                    paired += 1
                elif (t_run, seed, b) in val:
                    tv = val[(t_run, seed, b)]
                    paired += 1
                else:
                    tv = look[(t_run, b)][0]
                diffs.append(s_val - tv)
            if not diffs:
                continue
            rows.append(
                {
                    "run": run,
                    "teacher": t_run,
                    "benchmark": b,
                    "n_seeds": len(diffs),
                    "paired_seeds": paired,
                    "run_mean": look[(run, b)][0],
                    "teacher_mean": look[(t_run, b)][0],
                    "delta": float(np.mean(diffs)),
                    "uncertainty": _rss(look[(run, b)][1], look[(t_run, b)][1]),
                }
            )
    cols = ["run", "teacher", "benchmark", "n_seeds", "paired_seeds", "run_mean", "teacher_mean", "delta"]
    cols.append("uncertainty")
    d = pd.DataFrame(rows, columns=cols)
    disp = []
    for (run, teacher), g in d.groupby(["run", "teacher"], sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "teacher": teacher, "seeds (paired)": f"{by['n_seeds'].max()} ({by['paired_seeds'].min()})"}
        for b in benches:
            row[_label(b)] = _fmt(by["delta"].get(b), by["uncertainty"].get(b), signed=True) if b in by.index else "–"
        disp.append(row)
    note = (
        "Change in accuracy against the run's teacher (run − teacher), averaged over the run's seeds; a seed is "
        "compared with the teacher's same seed where it exists ('paired'), else with the teacher's mean. "
        "± combined standard error of the two means."
    )
    if not students:
        note = "No run in the config has a teacher. " + note
    if skipped:
        note += " Skipped: " + "; ".join(skipped) + "."
    return Table("delta_vs_teacher", d, pd.DataFrame(disp), note, "Change against the teacher")


def retention_table(summary: pd.DataFrame, target: str = TARGET, retention: Iterable[str] | None = None) -> Table:
    r = retention_summary(summary, target, retention)
    retention = [c[: -len("_change")] for c in r.columns if c.endswith("_change") and c != "retention_change"]
    disp = pd.DataFrame(
        {
            "run": r["run"],
            "seeds": r["n_seeds"],
            f"{_label(target)} gain": [_fmt(v, u, True) for v, u in zip(r[f"{target}_gain"], r[f"{target}_gain_unc"])],
            **{
                f"{_label(b)} Δ": [_fmt(v, u, True) for v, u in zip(r[f"{b}_change"], r[f"{b}_change_unc"])]
                for b in retention
            },
            "mean retention Δ": [_fmt(v, u, True) for v, u in zip(r["retention_change"], r["retention_change_unc"])],
        }
    )
    note = (
        f"Gain on {_label(target)} and change on the retention benchmarks "
        f"({', '.join(_label(b) for b in retention)}) against the base model; 'mean retention Δ' is their mean "
        "(negative = forgetting). ± combined standard error."
    )
    return Table("retention", r, disp, note, "Gain against retention")


def write_table(table: Table, tables_dir) -> list[Path]:
    """Write ``{name}.csv`` (numbers), ``{name}.md`` and ``{name}.tex`` (formatted) atomically."""
    tables_dir = Path(tables_dir)
    paths = []
    for ext, text in (
        ("csv", table.data.to_csv(index=False, float_format="%.6g")),
        ("md", table.markdown()),
        ("tex", table.latex()),
    ):
        path = tables_dir / f"{table.name}.{ext}"
        with atomic_file(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def build_tables(
    scores: pd.DataFrame, models, target: str = TARGET, retention: Iterable[str] | None = None
) -> dict[str, Table]:
    runs = run_order(models)
    summary = summarize(scores, runs=runs)
    return {
        "scores": scores_table(summary),
        "delta_vs_base": delta_vs_base_table(summary),
        "delta_vs_teacher": delta_vs_teacher_table(scores, models, summary),
        "retention": retention_table(summary, target, retention),
    }


# --------------------------------------------------------------------------------------------- verdicts

CLAIMS = {
    "claim1": "Mild SFT improves GSM8K with little forgetting, while stress SFT forgets a lot "
    "(substantial loss on TruthfulQA mc2 and MMLU).",
    "claim2": "On-policy distillation from the stress-SFT teacher beats that teacher on all three benchmarks.",
    "claim3": "Light on-policy RL improves GSM8K and keeps retention.",
}


def _check(name: str, value: float, unc: float, op: str, threshold: float, z: float, key: str) -> dict:
    """Three-valued comparison ``value op threshold``: pass / fail beyond z*unc, else uncertain."""
    margin = (value - threshold) if op == ">" else (threshold - value)
    width = z * (0.0 if unc is None or math.isnan(unc) else unc)
    if margin > width:
        outcome = "pass"
    elif margin < -width or (width == 0 and margin == 0):
        outcome = "fail"
    else:
        outcome = "uncertain"
    return {
        "quantity": name,
        "value": value,
        "uncertainty": None if unc is None or math.isnan(unc) else unc,
        "op": op,
        "threshold": threshold,
        "threshold_key": key,
        "outcome": outcome,
    }


def _combine(claim, statement, checks, thresholds, quantities) -> dict:
    fails = [c for c in checks if c["outcome"] == "fail"]
    unsure = [c for c in checks if c["outcome"] == "uncertain"]

    def desc(c):
        u = f" ± {c['uncertainty']:.3f}" if c["uncertainty"] is not None else ""
        return f"{c['quantity']} = {c['value']:+.3f}{u} vs {c['op']} {c['threshold']:g} ({c['threshold_key']})"

    if fails:
        verdict = "not reproduced"
        reason = "fails: " + "; ".join(desc(c) for c in fails)
        if unsure:
            reason += ". Also within z·uncertainty: " + "; ".join(desc(c) for c in unsure)
    elif unsure:
        verdict = "inconclusive"
        reason = (
            f"within z = {thresholds['z']:g} standard errors of the threshold, so the verdict hinges on noise: "
            + "; ".join(desc(c) for c in unsure)
        )
    else:
        verdict = "reproduced"
        reason = f"every check holds by more than z = {thresholds['z']:g} standard errors"
    return {
        "claim": claim,
        "statement": statement,
        "quantities": quantities,
        "thresholds": thresholds,
        "checks": checks,
        "verdict": verdict,
        "reason": reason,
    }


def _not_run(claim, statement, thresholds, reason) -> dict:
    return {
        "claim": claim,
        "statement": statement,
        "quantities": {},
        "thresholds": thresholds,
        "checks": [],
        "verdict": "not run",
        "reason": reason,
    }


def verdicts(
    table: pd.DataFrame,
    roles: Mapping[str, str],
    thresholds: Mapping[str, float] | None = None,
    *,
    target: str = TARGET,
    retention: Iterable[str] | None = None,
) -> list[dict]:
    """Judge the three claims from a score summary.

    ``table``: one row per run x benchmark with columns run, benchmark, mean, uncertainty (``summarize``'s output;
    base is the run ``"base"``). ``roles``: claim role -> run (mild, stress, opd, rl, opd_teacher).
    ``thresholds``: see ``DEFAULT_THRESHOLDS`` (missing keys take the default). Pure: no I/O.

    A check ``value > threshold`` passes when ``value - threshold > z*u``, fails when ``< -z*u`` and is
    "uncertain" in between. A claim is "not reproduced" if any check fails, "inconclusive" if none fails but one
    is uncertain (the verdict hinges on it), "reproduced" if all pass, and "not run" when a run it needs is absent.
    """
    th = check_thresholds(thresholds)
    z = th["z"]
    look = _lookup(table)
    present_runs = set(table["run"])
    benches = list(dict.fromkeys(table["benchmark"]))
    if retention is None:
        retention = [b for b in benches if b != target]
    retention = list(retention)
    all_benches = [target] + retention

    def missing(role_names, need_base=True):
        """Reason string if a run needed by these roles (or base) has no scores, else None."""
        problems = []
        for role in role_names:
            run = roles.get(role)
            if not run:
                problems.append(f"no run is assigned to role {role!r}")
            elif run not in present_runs:
                problems.append(f"run {run!r} (role {role}) is not in the config's model list / has no scores")
            else:
                lacking = [b for b in all_benches if (run, b) not in look]
                if lacking:
                    problems.append(f"run {run!r} has no scores on {', '.join(lacking)}")
        if need_base:
            if BASE not in present_runs:
                problems.append("the base model has no scores")
            else:
                lacking = [b for b in all_benches if (BASE, b) not in look]
                if lacking:
                    problems.append(f"base has no scores on {', '.join(lacking)}")
        return "; ".join(problems) or None

    def gain(run):
        (v, u), (b, ub) = look[(run, target)], look[(BASE, target)]
        return v - b, _rss(u, ub)

    def drop(run):
        """Mean retention drop vs base (positive = forgetting)."""
        ds = [look[(run, b)][0] - look[(BASE, b)][0] for b in retention]
        us = [_rss(look[(run, b)][1], look[(BASE, b)][1]) for b in retention]
        return -float(np.mean(ds)), _rss(*us) / len(us)

    def q(v, u):
        return {"value": v, "uncertainty": None if math.isnan(u) else u}

    out = []
    # claim 1 ------------------------------------------------------------------------------------------
    sub = {k: th[k] for k in ("min_gain", "little_forgetting", "substantial_loss", "z")}
    why = missing(["mild", "stress"])
    if why:
        out.append(_not_run("claim1", CLAIMS["claim1"], sub, why))
    else:
        mild, stress = roles["mild"], roles["stress"]
        mg, mgu = gain(mild)
        md, mdu = drop(mild)
        sg, sgu = gain(stress)
        sd, sdu = drop(stress)
        quantities = {
            f"{mild} {target} gain": q(mg, mgu),
            f"{mild} retention drop": q(md, mdu),
            f"{stress} {target} gain": q(sg, sgu),
            f"{stress} retention drop": q(sd, sdu),
        }
        checks = [
            _check(f"{mild} {target} gain", mg, mgu, ">", th["min_gain"], z, "min_gain"),
            _check(f"{mild} retention drop", md, mdu, "<", th["little_forgetting"], z, "little_forgetting"),
            _check(f"{stress} retention drop", sd, sdu, ">", th["substantial_loss"], z, "substantial_loss"),
        ]
        checks[0]["part"] = checks[1]["part"] = "mild"
        checks[2]["part"] = "stress"
        out.append(_combine("claim1", CLAIMS["claim1"], checks, sub, quantities))
    # claim 2 ------------------------------------------------------------------------------------------
    sub = {k: th[k] for k in ("surpass_margin", "z")}
    why = missing(["opd", "opd_teacher"], need_base=False)
    if why:
        out.append(_not_run("claim2", CLAIMS["claim2"], sub, why))
    else:
        opd, teacher = roles["opd"], roles["opd_teacher"]
        quantities, checks = {}, []
        for b in all_benches:
            (v, u), (tv, tu) = look[(opd, b)], look[(teacher, b)]
            name = f"{opd} − {teacher} on {b}"
            quantities[name] = q(v - tv, _rss(u, tu))
            checks.append(_check(name, v - tv, _rss(u, tu), ">", th["surpass_margin"], z, "surpass_margin"))
        out.append(_combine("claim2", CLAIMS["claim2"], checks, sub, quantities))
    # claim 3 ------------------------------------------------------------------------------------------
    sub = {k: th[k] for k in ("min_gain", "little_forgetting", "z")}
    why = missing(["rl"])
    if why:
        out.append(_not_run("claim3", CLAIMS["claim3"], sub, why))
    else:
        rl = roles["rl"]
        g, gu = gain(rl)
        d, du = drop(rl)
        quantities = {f"{rl} {target} gain": q(g, gu), f"{rl} retention drop": q(d, du)}
        checks = [
            _check(f"{rl} {target} gain", g, gu, ">", th["min_gain"], z, "min_gain"),
            _check(f"{rl} retention drop", d, du, "<", th["little_forgetting"], z, "little_forgetting"),
        ]
        out.append(_combine("claim3", CLAIMS["claim3"], checks, sub, quantities))
    return out


def claims_markdown(results: list[dict], roles: Mapping[str, str] | None = None) -> str:
    """Render verdicts: a table of checks per claim and the verdict in bold."""
    lines = ["# Claim verdicts", ""]
    if results:
        z = results[0]["thresholds"].get("z", DEFAULT_THRESHOLDS["z"])
        lines += [
            "Accuracy differences are fractions (0.02 = 2 points). Retention drop = minus the mean change on "
            "TruthfulQA mc2 and MMLU against base (positive = forgetting). ± is one combined standard error. "
            f"A check passes (fails) when it holds (is violated) by more than z = {z:g} standard errors; "
            "otherwise it is uncertain, and a claim whose outcome hinges on an uncertain check is inconclusive.",
            "",
        ]
    if roles:
        lines += ["Roles: " + ", ".join(f"{k} = `{v}`" for k, v in roles.items()), ""]
    for r in results:
        lines += [f"## {r['claim']}: {r['statement']}", ""]
        if r["checks"]:
            rows = [
                {
                    "check": c["quantity"],
                    "value": f"{c['value']:+.4f}",
                    "± (1 se)": "–" if c["uncertainty"] is None else f"{c['uncertainty']:.4f}",
                    "requirement": f"{c['op']} {c['threshold']:g} ({c['threshold_key']})",
                    "outcome": c["outcome"],
                }
                for c in r["checks"]
            ]
            align = ("left", "right", "right", "left", "left")
            lines += [pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True, colalign=align), ""]
        extra = {k: v for k, v in r["quantities"].items() if k not in {c["quantity"] for c in r["checks"]}}
        if extra:
            lines += [
                "Also: "
                + "; ".join(
                    f"{k} = {v['value']:+.4f}" + ("" if v["uncertainty"] is None else f" ± {v['uncertainty']:.4f}")
                    for k, v in extra.items()
                ),
                "",
            ]
        lines += [f"Verdict: **{r['verdict']}**. {r['reason']}.", ""]
    return "\n".join(lines)


def write_claims(results: list[dict], tables_dir, roles: Mapping[str, str] | None = None) -> list[Path]:
    tables_dir = Path(tables_dir)
    md = tables_dir / "claims.md"
    with atomic_file(md) as tmp:
        tmp.write_text(claims_markdown(results, roles), encoding="utf-8")
    js = tables_dir / "claims.json"
    write_json(js, {"roles": dict(roles or {}), "claims": results})
    return [md, js]


# --------------------------------------------------------------------------------------------- figures

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global figure registry, no GUI backend
    return fig


def _rc():
    import matplotlib

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
        ax.set_xticks(x, [_label(b) for b in benches])
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
    target: str = TARGET,
    z: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
):
    """The study's central picture: x = target (GSM8K) change vs base, y = mean retention change vs base.
    One point per run with error bars of ``z`` combined standard errors; base at the origin; dashed zero lines.
    With ``thresholds``, dotted lines mark the claims' "little forgetting" and "substantial loss" levels."""
    runs = list(retention["run"])
    colors = dict(colors or run_colors([BASE] + runs))
    markers = run_markers([BASE] + runs)
    xs = retention[f"{target}_gain"].to_numpy(float)
    ys = retention["retention_change"].to_numpy(float)
    xe = z * np.nan_to_num(retention[f"{target}_gain_unc"].to_numpy(float))
    ye = z * np.nan_to_num(retention["retention_change_unc"].to_numpy(float))
    retention_names = [
        _label(c[: -len("_change")]) for c in retention.columns if c.endswith("_change") and c != "retention_change"
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
        ax.set_xlabel(f"{_label(target)} accuracy change vs base  (→ better)")
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
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

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


def _second_signal(df: pd.DataFrame) -> str | None:
    for key in ("kl", "reward"):
        if key in df and df[key].notna().any():
            return key
    return None


SIGNAL_LABEL = {"kl": "KL to teacher", "reward": "mean reward"}


def training_curves_figure(metrics: pd.DataFrame, colors: Mapping[str, str] | None = None, runs=None):
    """One column per run: loss on top and, where the run logs them, KL (distillation) or reward (RL) below;
    x = optimiser step; a smoothed line over the faint raw values, one line per seed."""
    runs = list(runs) if runs is not None else list(dict.fromkeys(metrics["run"]))
    runs = [r for r in runs if r != BASE and (metrics["run"] == r).any()]
    colors = dict(colors or run_colors(runs))
    seconds = {r: _second_signal(metrics[metrics["run"] == r].dropna(axis=1, how="all")) for r in runs}
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
            keys = [("loss", "training loss")]
            if seconds[run]:
                keys.append((seconds[run], SIGNAL_LABEL.get(seconds[run], seconds[run])))
            for i, (key, ylabel) in enumerate(keys):
                ax = axes[i][j]
                for k, seed in enumerate(seeds):
                    s = sub[sub["seed"] == seed].sort_values("step")
                    y = s[key].astype(float)
                    ax.plot(s["step"], y, color=colors[run], alpha=0.25, lw=0.8)
                    ax.plot(
                        s["step"], _smooth(y, len(y)), color=colors[run], lw=1.8, ls=styles[k % len(styles)],
                        label=f"seed {seed}",
                    )  # fmt: skip
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.25)
                if i == 0:
                    ax.set_title(run, color=colors[run], fontweight="bold")
                if len(seeds) > 1 and i == 0:
                    ax.legend(frameon=False, fontsize=8)
            if has_second and not seconds[run]:
                ax = axes[1][j]
                ax.set_axis_off()
                ax.text(0.5, 0.5, "(loss is the signal:\nno KL or reward logged)", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8.5, color="0.4")  # fmt: skip
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


# --------------------------------------------------------------------------------------------- all


def output_paths(tables_dir, figures_dir) -> list[Path]:
    """Every file ``make_report`` writes (for a Snakemake rule's output list)."""
    t, f = Path(tables_dir), Path(figures_dir)
    return (
        [t / f"{n}.{e}" for n in TABLES for e in TABLE_FORMATS]
        + [t / "claims.md", t / "claims.json"]
        + [f / f"{n}.{e}" for n in FIGURES for e in FIGURE_FORMATS]
    )


def make_report(
    scores_dir,
    metrics_dir,
    models,
    tables_dir,
    figures_dir,
    thresholds: Mapping | None = None,
    roles: Mapping | None = None,
    benchmarks: Iterable[str] = BENCHMARKS,
    target: str = TARGET,
) -> dict:
    """Load scores and metrics, write every table, figure and the claim verdicts. Returns the Table objects and
    verdicts (``{"tables": {...}, "claims": [...]}``)."""
    norm = normalize_models(models)
    benchmarks = list(benchmarks)
    th = check_thresholds(thresholds)
    roles = resolve_roles(norm, roles)
    runs = run_order(norm)
    colors = run_colors(runs)
    retention = [b for b in benchmarks if b != target]
    scores = load_scores(scores_dir, norm, benchmarks)
    metrics = load_metrics(metrics_dir, norm)
    summary = summarize(scores, runs=runs, benchmarks=benchmarks)
    tables = {
        "scores": scores_table(summary),
        "delta_vs_base": delta_vs_base_table(summary),
        "delta_vs_teacher": delta_vs_teacher_table(scores, norm, summary),
        "retention": retention_table(summary, target, retention),
    }
    for t in tables.values():
        write_table(t, tables_dir)
    results = verdicts(summary, roles, th, target=target, retention=retention)
    write_claims(results, tables_dir, roles)
    figs = {
        "scores": scores_figure(summary, colors, scores),
        "retention_vs_gain": retention_vs_gain_figure(tables["retention"].data, colors, target, thresholds=th),
        "training_curves": training_curves_figure(metrics, colors, runs),
    }
    for name, fig in figs.items():
        save_figure(fig, figures_dir, name)
    return {"tables": tables, "claims": results, "summary": summary}
