"""What the report reads: the model list, score files and training metrics.

``models`` (the model list handed to the report) maps a model name to its description, in config order::

    {"base": {"run": "base", "seed": null},
     "sft_stress/seed0": {"run": "sft_stress", "seed": 0, "states": "dataset", "signal": "nll"},
     "opd/seed0": {"run": "opd", "seed": 0, "teacher": "sft_stress", "states": "learner", "signal": "teacher_kl"}}

``teacher`` is a run name (compared seed by seed where the teacher has the same seed, else against the
teacher's mean) or a model name ``{run}/seed{seed}`` (compared against that one model). ``states`` (``dataset`` or
``learner``) and ``signal`` (``nll``, ``teacher_kl`` or ``reward``) are the run's (state source, signal) pair, as
the DAG sends them; they may be absent (then the tables leave them out). ``run``/``seed`` may be left out when the
name follows the ``base`` / ``{run}/seed{seed}`` convention; a plain list of names works too.

Only the loaders import pandas: the model list and benchmark helpers are light enough for the DAG's parse.

Benchmark facts (label, target or retention, primary metric) come from :mod:`statepost.benchmarks`; the order of
benchmarks is the order the caller passes (the config's).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from statepost import benchmarks as bench_facts
from statepost.io import ConfigError, DataError, read_jsonl, samples_path

BASE = "base"
_MODEL_RE = re.compile(r"^(?P<run>[^/]+)/seed(?P<seed>\d+)$")


# --------------------------------------------------------------------------------------------- benchmarks


def benchmark(name: str) -> bench_facts.Benchmark:
    try:
        return bench_facts.get(name)
    except ValueError as e:
        raise ConfigError(f"benchmarks: {e}") from None


def label(name: str) -> str:
    """How tables and figures name a benchmark (``GSM8K``, ``TruthfulQA mc2``, ``MMLU``)."""
    return benchmark(name).label


def target_and_retention(benchmarks: Iterable[str]) -> tuple[str, list[str]]:
    """The target benchmark among ``benchmarks`` (else the known target) and the retention ones, in given order."""
    benchmarks = list(benchmarks)
    targets = [b for b in benchmarks if benchmark(b).role == "target"]
    retention = [b for b in benchmarks if benchmark(b).role == "retention"]
    return (targets[0] if targets else bench_facts.TARGET), retention


# --------------------------------------------------------------------------------------------- models


def parse_model_name(name: str) -> tuple[str, int | None]:
    """``"base"`` -> ("base", None); ``"{run}/seed{seed}"`` -> (run, seed)."""
    if name == BASE:
        return BASE, None
    m = _MODEL_RE.match(name)
    if not m:
        raise ConfigError(f"models: {name!r} is neither 'base' nor '{{run}}/seed{{seed}}'")
    return m["run"], int(m["seed"])


def teacher_ref(teacher: str) -> tuple[str, int | None]:
    """A teacher as (run, seed): a model name ``{run}/seed{seed}`` names one seed, a run name none."""
    m = _MODEL_RE.match(teacher)
    return (m["run"], int(m["seed"])) if m else (teacher, None)


def normalize_models(models: Mapping | Iterable) -> dict[str, dict]:
    """Return ``{model: {"run", "seed", "teacher", "role", "states", "signal"}}`` in the given order."""
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
        out[name] = {
            "run": run,
            "seed": seed,
            "teacher": info.get("teacher"),
            "role": info.get("role"),
            "states": info.get("states"),
            "signal": info.get("signal"),
        }
    if not out:
        raise ConfigError("models: empty model list")
    return out


def run_order(models: Mapping) -> list[str]:
    """Runs in order of first appearance, base first."""
    runs = list(dict.fromkeys(info["run"] for info in normalize_models(models).values()))
    return sorted(runs, key=lambda r: r != BASE)


def run_methods(models) -> dict[str, tuple[str | None, str | None]]:
    """Run -> its (states, signal) pair, from the model list (None where the list does not say; base: None)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for info in normalize_models(models).values():
        pair = (info["states"], info["signal"])
        if out.get(info["run"], (None, None)) == (None, None):
            out[info["run"]] = (None, None) if info["run"] == BASE else pair
    return out


# --------------------------------------------------------------------------------------------- scores


def score_path(scores_dir, model: str, bench: str) -> Path:
    """A model's score file on a benchmark: ``{scores_dir}/{model}/{bench}.json`` (its samples log beside it:
    :func:`statepost.io.samples_path`)."""
    return Path(scores_dir) / model / f"{bench}.json"


def load_scores(scores_dir, models, benchmarks: Iterable[str] | None = None) -> pd.DataFrame:
    """Read ``scores_dir/{model}/{benchmark}.json`` for every model x benchmark (default: every known benchmark,
    in ``statepost.benchmarks`` order; the DAG passes the config's) into a tidy DataFrame.

    Columns: model, run, seed, benchmark, metric, value, stderr, n, primary (one row per listed metric;
    ``primary`` marks the metric the tables use, the benchmark's ``primary_metric``).
    """

    scores_dir = Path(scores_dir)
    norm = normalize_models(models)
    benchmarks = list(bench_facts.NAMES if benchmarks is None else benchmarks)
    rows, missing = [], []
    for model, info in norm.items():
        for bench in benchmarks:
            path = score_path(scores_dir, model, bench)
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
    primary = benchmark(bench).primary_metric
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


# --------------------------------------------------------------------------------------------- per-item scores


def load_items(scores_dir, scores: pd.DataFrame) -> dict[tuple[str, str, str], np.ndarray]:
    """Per-item scores from the per-sample logs beside the score files, to pair changes over the test items.

    ``scores`` is :func:`load_scores`' frame. Returns ``(model, benchmark, metric) -> array`` over the benchmark's
    items in ``(task, doc_id)`` order (the same order for every model: MMLU's items are keyed by their subject's
    task), for each metric of the score file that the log carries (the primary always). A model x benchmark
    without a log is left out: its changes fall back to the unpaired convention (:class:`.statistics.Changes`).

    A log must belong to its score file: DataError, naming the log, when its item count differs from the score's
    ``n``, an item repeats or lacks the primary metric, a metric's per-item mean is not the score file's value,
    or two models' logs on one benchmark cover different items.
    """
    out: dict[tuple[str, str, str], np.ndarray] = {}
    first: dict[str, tuple[list, Path]] = {}  # benchmark -> (item keys, the log they came from)
    for (model, bench), rows in scores.groupby(["model", "benchmark"], sort=False):
        path = samples_path(score_path(scores_dir, model, bench))
        if not path.is_file():
            continue
        per_item: dict[tuple[str, int], dict] = {}
        for i, line in enumerate(read_jsonl(path), 1):
            task, doc = line.get("task"), line.get("doc_id")
            if not isinstance(task, str) or isinstance(doc, bool) or not isinstance(doc, int):
                raise DataError(f"{path}:{i}: a sample needs a 'task' name and an integer 'doc_id'")
            if (task, doc) in per_item:
                raise DataError(f"{path}:{i}: item ({task}, {doc}) appears twice")
            per_item[(task, doc)] = line.get("metrics") or {}
        keys = sorted(per_item)
        if not keys:
            raise DataError(f"{path}: no samples")
        n = rows["n"].iloc[0]
        if not pd.isna(n) and len(keys) != int(n):
            raise DataError(f"{path}: {len(keys)} items, but its score file scored n = {int(n)}")
        for r in rows.itertuples():
            if not math.isfinite(r.value):
                continue
            vals = [per_item[k].get(r.metric) for k in keys]
            if not r.primary and all(v is None for v in vals):
                continue  # a metric the log does not carry: its changes stay unpaired
            bad = [k for k, v in zip(keys, vals) if isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad:
                raise DataError(f"{path}: item {bad[0]} has no number for {r.metric!r}")
            arr = np.asarray(vals, dtype=float)
            if not math.isclose(float(arr.mean()), r.value, rel_tol=1e-9, abs_tol=1e-12):
                raise DataError(
                    f"{path}: the mean of {r.metric!r} over its {arr.size} items is {arr.mean():.10g}, but the "
                    f"score file says {r.value:.10g}: this log does not belong to that score"
                )
            out[(model, bench, r.metric)] = arr
        if bench in first and first[bench][0] != keys:
            raise DataError(f"{path} and {first[bench][1]}: the two models were scored on different items")
        first.setdefault(bench, (keys, path))
    return out


# --------------------------------------------------------------------------------------------- metrics


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
