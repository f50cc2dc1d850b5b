"""The states x signals analysis: effects as contrasts of per-item scores, their standard errors, the λ slope."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from statepost.report import factorial as FX

CELLS = [(s, g) for s in FX.STATE for g in FX.SIGNAL]


def test_grid_contrasts_by_hand():
    """One seed, two items: DN [0, 1], DK [1, 1], LN [0, 0], LK [1, 0]."""
    cells = {("dataset", "nll"): [[0, 1]], ("dataset", "teacher_kl"): [[1, 1]],
             ("learner", "nll"): [[0, 0]], ("learner", "teacher_kl"): [[1, 0]]}  # fmt: skip
    state = FX.contrast(cells, FX.GRID_EFFECTS["state source"])  # per item .5*(LN+LK) - .5*(DN+DK) = [0, -1]
    assert state["delta"] == pytest.approx(-0.5) and state["item_se"] == pytest.approx(0.5) and state["seed_sem"] == 0
    signal = FX.contrast(cells, FX.GRID_EFFECTS["signal"])  # .5*(DK+LK) - .5*(DN+LN) = [1, 0]
    assert signal["delta"] == pytest.approx(0.5) and signal["item_se"] == pytest.approx(0.5)
    inter = FX.contrast(cells, FX.GRID_EFFECTS["interaction"])  # LK - DK - LN + DN = [0, 0]
    assert inter["delta"] == 0 and inter["uncertainty"] == 0


def test_slope_weights_by_hand():
    w = FX.slope_weights({"a": 0.0, "b": 0.5, "c": 1.0})  # centred -0.5, 0, 0.5; sum of squares 0.5
    assert w == pytest.approx({"a": -1.0, "b": 0.0, "c": 1.0})
    cells = {"a": [[0.2, 0.4]], "b": [[0.3, 0.5]], "c": [[0.4, 0.6]]}  # score = 0.2 + 0.2 * dose (+ 0.2 item 2)
    assert FX.contrast(cells, w)["delta"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="do not vary"):
        FX.slope_weights({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="sum to 1.0, not 0"):
        FX.contrast(cells, {"a": 1.0})


def _simulate(rng, effects, doses=None, seeds=3, items=150, seed_sd=0.04, item_sd=0.3):
    """Per-item scores with known effects: an item's difficulty shared by every cell, a seed draw per cell and seed,
    item noise per cell, seed and item."""
    difficulty = rng.normal(0.5, 0.2, items)
    out = {}
    for cell, mean in effects.items():
        seed_draw = rng.normal(0, seed_sd, (seeds, 1))
        out[cell] = difficulty + mean + seed_draw + rng.normal(0, item_sd, (seeds, items))
    return out


@pytest.mark.parametrize("what", ["grid", "dose"])
def test_synthetic_effects_are_recovered_at_their_stated_coverage(what):
    """On synthetic scores with known effects, each estimate's 95 % t interval (its paired standard error and
    Satterthwaite df) covers the truth in 95 % of 400 draws, within Monte Carlo error (binomial, 3 sd)."""
    rng = np.random.default_rng(0)
    if what == "grid":  # state source +0.10, signal -0.04, interaction +0.06
        means = {c: 0.10 * (c[0] == "learner") - 0.04 * (c[1] == "teacher_kl") for c in CELLS}
        means[("learner", "teacher_kl")] += 0.06
        # the main effects average over the other factor: state = 0.10 + 0.06/2, signal = -0.04 + 0.06/2
        truth = {"state source": 0.13, "signal": -0.01, "interaction": 0.06}
        weights = FX.GRID_EFFECTS
    else:  # retention falls by 0.08 per unit of λ
        doses = {f"lambda{x}": x for x in (0.0, 0.25, 0.5, 0.75, 1.0)}
        means = {c: -0.08 * x for c, x in doses.items()}
        truth, weights = {"slope": -0.08}, {"slope": FX.slope_weights(doses)}
    draws = 400
    covered = {k: 0 for k in truth}
    for _ in range(draws):
        cells = _simulate(rng, means)
        for name, w in weights.items():
            est = FX.contrast(cells, w)
            half = stats.t.ppf(0.975, est["df"]) * est["uncertainty"]
            covered[name] += abs(est["delta"] - truth[name]) <= half
    mc = 3 * np.sqrt(0.95 * 0.05 / draws)
    for name, k in covered.items():
        assert abs(k / draws - 0.95) <= mc, (name, k / draws)


# -- the factorial rule's report, from files in the formats the DAG writes ---------------------------------------------

RUNS = {  # the runs a factorial names, as config/factorial.yaml has them (only the keys the report reads)
    "dataset_nll": {"states": {"source": "dataset"}, "signal": {"type": "nll"}},
    "dataset_kl": {"states": {"source": "dataset"}, "signal": {"type": "teacher_kl"}},
    "learner_nll": {"states": {"source": "learner", "learner_frac": 1.0}, "signal": {"type": "nll"}},
    "opd": {"states": {"source": "learner", "learner_frac": 1.0}, "signal": {"type": "teacher_kl"}},
    "lambda_50": {"states": {"source": "learner", "learner_frac": 0.5}, "signal": {"type": "teacher_kl"}},
    "rl": {"states": {"source": "learner", "learner_frac": 1.0}, "signal": {"type": "reward"}},
}
FACTORIAL = {"grid": {"dataset": {"nll": "dataset_nll", "teacher_kl": "dataset_kl"},
                      "learner": {"nll": "learner_nll", "teacher_kl": "opd"}},
             "dose": ["dataset_kl", "lambda_50", "opd"], "beside": ["rl"]}  # fmt: skip
SEEDS = [1, 2, 3]
BENCHES = {"gsm8k": ["exact_match,strict-match", "exact_match,flexible-extract"], "truthfulqa_mc2": ["acc,none"],
           "mmlu": ["acc,none"]}  # fmt: skip


def _write_model(root, model, per_item: dict, drift: float, tokens: float | None):
    """Score files with their samples logs, a diagnostics file and (trained models) a metrics.jsonl."""
    import json

    for bench, metrics in BENCHES.items():
        d = root / "scores" / model
        d.mkdir(parents=True, exist_ok=True)
        arrays = {m: per_item[(bench, m)] for m in metrics}
        n = len(arrays[metrics[0]])
        with (d / f"{bench}.samples.jsonl").open("w") as f:
            for i in range(n):
                f.write(json.dumps({"task": f"t_{bench}", "doc_id": i, "metrics": {m: float(a[i]) for m, a in arrays.items()}}) + "\n")
        score = {"model": model, "benchmark": bench, "n": n, "value": float(np.mean(arrays[metrics[0]])),
                 "metrics": [{"metric": m, "value": float(np.mean(a)), "stderr": 0.01} for m, a in arrays.items()]}  # fmt: skip
        (d / f"{bench}.json").write_text(json.dumps(score))
    sets = {name: {"kl_model_base": drift, "kl_base_model": drift, "nll_model": 1.0, "nll_base": 1.0,
                   "entropy_model": 1.0, "tokens": 10} for name in ("dataset", "own", "off_task")}  # fmt: skip
    path = root / "diagnostics" / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "sets": sets}))
    if tokens is not None:
        d = root / "models" / model
        d.mkdir(parents=True, exist_ok=True)
        rows = [{"step": s, "loss": 1.0, "completion_tokens": tokens / 4} for s in range(1, 5)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def factorial_files(tmp_path_factory):
    """Random per-item scores (40 items per benchmark, 0/1 as lm-eval's) for base and every run and seed; drift
    0.1 * (run index + 1) + 0.01 * seed."""
    root = tmp_path_factory.mktemp("factorial")
    rng = np.random.default_rng(5)
    items = {}
    for model in ["base", *(f"{r}/seed{s}" for r in RUNS for s in SEEDS)]:
        per_item = {(b, m): rng.integers(0, 2, 40).astype(float) for b, ms in BENCHES.items() for m in ms}
        items[model] = per_item
        run, _, seed = model.partition("/seed")
        drift = 0.0 if model == "base" else 0.1 * (list(RUNS).index(run) + 1) + 0.01 * int(seed)
        _write_model(root, model, per_item, drift, None if model == "base" else 400.0 + int(seed))
    return root, items


def test_the_factorial_report_from_files_by_hand(factorial_files, tmp_path):
    root, items = factorial_files
    design = FX.Design(FACTORIAL, RUNS, SEEDS)
    paths = FX.make_factorial(root / "scores", root / "diagnostics", root / "models", design, list(BENCHES),
                              tmp_path / "tables", tmp_path / "figures", 0.05)  # fmt: skip
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == sorted(
        p.relative_to(tmp_path).as_posix() for p in FX.output_paths(tmp_path / "tables", tmp_path / "figures"))
    scores = FX.Scores(root / "scores", root / "diagnostics", root / "models", design, list(BENCHES))
    effects = FX.effects_rows(scores)  # the numbers effects.csv holds (to 6 significant digits)

    def arr(run, bench, metric):
        return np.vstack([items[f"{run}/seed{s}"][(bench, metric)] for s in SEEDS])

    def got(effect, quantity):
        return effects[(effects["effect"] == effect) & (effects["quantity"] == quantity)].iloc[0]

    # state source on MMLU: per seed and item, (LN + LK - DN - DK) / 2
    d = (arr("learner_nll", "mmlu", "acc,none") + arr("opd", "mmlu", "acc,none")
         - arr("dataset_nll", "mmlu", "acc,none") - arr("dataset_kl", "mmlu", "acc,none")) / 2  # fmt: skip
    seed_sem = np.std(d.mean(1), ddof=1) / np.sqrt(3)
    item_se = np.std(d.mean(0), ddof=1) / np.sqrt(40)
    row = got("state source", "MMLU")
    assert row["value"] == pytest.approx(d.mean()) and row["se"] == pytest.approx(np.hypot(seed_sem, item_se))
    # interaction on GSM8K flexible-extract
    f = "exact_match,flexible-extract"
    d = arr("opd", "gsm8k", f) - arr("dataset_kl", "gsm8k", f) - arr("learner_nll", "gsm8k", f) + arr("dataset_nll", "gsm8k", f)
    assert got("interaction", "GSM8K flexible")["value"] == pytest.approx(d.mean())
    # retention: the mean of the two retention benchmarks' effects, standard errors combined as the verdicts do
    t, m = got("signal", "TruthfulQA mc2"), got("signal", "MMLU")
    r = got("signal", "retention (mean)")
    assert r["value"] == pytest.approx((t["value"] + m["value"]) / 2)
    assert r["se"] == pytest.approx(np.hypot(t["se"], m["se"]) / 2)
    # drift: one number per model; the state-source contrast per seed is (0.3+0.4-0.1-0.2)/2 = 0.2 every seed
    row = got("state source", "off-task drift")
    assert row["value"] == pytest.approx(0.2) and row["se"] == pytest.approx(0.0, abs=1e-12)
    # the slope over lambda 0, 0.5, 1 (dataset_kl, lambda_50, opd) on MMLU: the least-squares slope of the means
    means = [arr(run, "mmlu", "acc,none").mean() - items["base"][("mmlu", "acc,none")].mean()
             for run in ("dataset_kl", "lambda_50", "opd")]  # fmt: skip
    assert got("slope over lambda (per unit)", "MMLU")["value"] == pytest.approx(np.polyfit([0, 0.5, 1], means, 1)[0])
    # the dose figure's seed dots: each metric's own per-seed change against base
    base_flex = items["base"][("gsm8k", f)].mean()
    assert scores.per_seed("opd")["GSM8K flexible"] == pytest.approx(arr("opd", "gsm8k", f).mean(1) - base_flex)
    # each cell against base, with its budget
    cells = FX.cell_rows(scores)
    rl = cells[(cells["run"] == "rl") & (cells["quantity"] == "MMLU")].iloc[0]
    assert not rl["in_grid"] and rl["steps"] == 4 and rl["completion_tokens"] == pytest.approx(402.0)
    assert rl["value"] == pytest.approx(arr("rl", "mmlu", "acc,none").mean() - items["base"][("mmlu", "acc,none")].mean())
    ci = got("state source", "MMLU")
    half = stats.t.ppf(0.975, ci["df"]) * ci["se"]
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((ci["value"] - half, ci["value"] + half))
    md = (tmp_path / "tables" / "effects.md").read_text()
    assert "| state source" in md and "slope over lambda" in md


def test_a_missing_samples_log_is_named(factorial_files, tmp_path):
    import shutil

    root, _ = factorial_files
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "scores" / "opd" / "seed2" / "mmlu.samples.jsonl").unlink()
    with pytest.raises(FX.DataError, match=r"\(mmlu, acc,none\) for \['opd/seed2'\]"):
        FX.make_factorial(copy / "scores", copy / "diagnostics", copy / "models", FX.Design(FACTORIAL, RUNS, SEEDS),
                          list(BENCHES), tmp_path / "t", tmp_path / "f", 0.05)  # fmt: skip


# -- the factorial's configs ---------------------------------------------------------------------------------------------


def _overlay(base: str, overlay: str) -> dict:
    from pathlib import Path

    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    root = Path(__file__).resolve().parent.parent
    config = load_configfile(str(root / "config" / base))
    update_config(config, load_configfile(str(root / "config" / overlay)))  # as --configfile A B merges them
    return config


@pytest.mark.parametrize("base, overlay", [("toy.yaml", "factorial.yaml"), ("config.yaml", "factorial-paper.yaml")])
def test_the_factorial_configs_fill_their_cells_at_one_budget(base, overlay):
    from statepost import config as cfglib

    cfg = cfglib.validate(_overlay(base, overlay))
    assert "sft_mild" not in cfg["runs"]  # an overlay leaves a run out with null
    design = FX.Design(cfg["factorial"], cfg["runs"], cfg["seeds"])
    assert design.dose == {"dataset_kl": 0.0, "lambda_25": 0.25, "lambda_50": 0.5, "lambda_75": 0.75, "opd": 1.0}
    assert {run: cfg["runs"][run]["optim"]["max_steps"] for run in design.grid.values()} == dict.fromkeys(
        design.grid.values(), cfg["runs"]["opd"]["optim"]["max_steps"])
    assert cfg["runs"]["learner_nll"]["signal"] == {"type": "nll", "teacher": "sft_stress"}
    assert cfglib.run_deps(cfg["runs"]["learner_nll"]) == {"init": "base", "teacher": "sft_stress"}


@pytest.mark.parametrize("change, key", [
    (lambda c: c["runs"]["lambda_50"]["optim"].update(lr=2e-3), r"runs\.lambda_50\.optim\.lr: 0\.002, but 0\.001"),
    (lambda c: c["runs"]["dataset_nll"].update(init="sft_stress"), r"runs\.\w+\.init"),
    (lambda c: c["factorial"]["grid"]["learner"].update(nll="rl"), r"factorial\.grid\.learner\.nll: 'rl' has signal reward"),
    (lambda c: c["factorial"]["grid"]["learner"].update(teacher_kl="lambda_50"), r"factorial\.grid\.learner\.teacher_kl: 'lambda_50' takes"),
    (lambda c: c["factorial"].update(dose=["dataset_kl", "opd"]), r"factorial\.dose"),
    (lambda c: c["factorial"].update(dose=["dataset_kl", "dataset_nll", "opd"]), r"factorial\.dose.*(repeat|signal)"),
    (lambda c: c["runs"]["lambda_25"]["signal"].update(direction="forward"), r"factorial\.dose\[1\]: 'lambda_25' has signal"),
    (lambda c: c["factorial"].update(beside=["ppo"]), r"factorial\.beside\[0\]: 'ppo' names no run"),
    (lambda c: c["runs"]["learner_nll"]["signal"].update(teacher="base"), r"factorial: the runs' teachers differ"),
])  # fmt: skip
def test_a_factorial_that_would_compare_unlike_runs_is_refused(change, key):
    from statepost import config as cfglib
    from statepost.io import ConfigError

    config = _overlay("toy.yaml", "factorial.yaml")
    change(config)
    with pytest.raises(ConfigError, match=key):
        cfglib.validate(config)
