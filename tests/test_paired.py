"""Paired standard errors of changes: every model is scored on the same test items, so a change's standard error
comes from the per-item differences (statepost.report.statistics), read from lm-eval's per-sample logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from statepost.io import DataError
from statepost.report import load, statistics, tables
from statepost.report.claims import claims_markdown, verdicts

STRICT, FLEX, ACC = "exact_match,strict-match", "exact_match,flexible-extract", "acc,none"
# Per-item scores, (run, seed) -> benchmark -> items. GSM8K's are hand-picked for the hand-computed values below;
# MMLU's items are two subjects with the same doc ids (the pairing key is (task, doc_id)).
ITEMS = {
    ("base", None): {"gsm8k": [0, 1, 0, 0], "truthfulqa_mc2": [0.5, 0.25, 1.0, 0.5], "mmlu": [1, 0, 1, 0]},
    ("sft_mild", 0): {"gsm8k": [1, 1, 0, 1], "truthfulqa_mc2": [0.5, 0.25, 1.0, 0.25], "mmlu": [1, 0, 1, 0]},
    ("sft_mild", 1): {"gsm8k": [1, 0, 0, 1], "truthfulqa_mc2": [0.5, 0.5, 1.0, 0.5], "mmlu": [1, 0, 0, 0]},
    ("sft_stress", 0): {"gsm8k": [1, 1, 1, 0], "truthfulqa_mc2": [0.25, 0.25, 0.5, 0.5], "mmlu": [0, 0, 1, 0]},
    ("sft_stress", 1): {"gsm8k": [1, 1, 0, 0], "truthfulqa_mc2": [0.25, 0.0, 0.5, 0.5], "mmlu": [1, 0, 0, 0]},
    ("opd", 0): {"gsm8k": [1, 1, 1, 1], "truthfulqa_mc2": [0.5, 0.25, 0.75, 0.5], "mmlu": [1, 0, 1, 0]},
    ("opd", 1): {"gsm8k": [0, 1, 0, 0], "truthfulqa_mc2": [0.5, 0.25, 1.0, 0.25], "mmlu": [1, 1, 1, 0]},
    ("rl", 0): {"gsm8k": [1, 1, 0, 0], "truthfulqa_mc2": [0.5, 0.25, 1.0, 0.5], "mmlu": [1, 0, 1, 1]},
}
BENCHES = ["gsm8k", "truthfulqa_mc2", "mmlu"]
STDERR = 0.2  # lm-eval's standard error in every score file (what the unpaired fallback adds in quadrature)


def name(run, seed):
    return "base" if run == "base" else f"{run}/seed{seed}"


def models_list():
    return [{"name": name(r, s), "run": r, "seed": s, "teacher": "sft_stress" if r == "opd" else None}
            for r, s in ITEMS]  # fmt: skip


def keys(bench):
    if bench == "mmlu":  # two subjects, doc ids 0 and 1 in each
        return [(f"statepost_mmlu_{subject}", d) for subject in ("astronomy", "virology") for d in (0, 1)]
    return [(f"statepost_{bench}", d) for d in range(4)]


def write(root: Path, model: str, bench: str, items, value=None, flexible=None):
    """A score file (value: the items' mean unless given) and its per-sample log."""
    d = root / model
    d.mkdir(parents=True, exist_ok=True)
    primary = STRICT if bench == "gsm8k" else ACC
    metrics = [{"metric": primary, "value": float(np.mean(items)) if value is None else value, "stderr": STDERR}]
    flexible = items if flexible is None else flexible
    if bench == "gsm8k":
        metrics.append({"metric": FLEX, "value": float(np.mean(flexible)), "stderr": STDERR})
    rec = {"model": model, "benchmark": bench, "metrics": metrics, "primary_metric": primary,
           "value": metrics[0]["value"], "stderr": STDERR, "n": len(items)}  # fmt: skip
    (d / f"{bench}.json").write_text(json.dumps(rec))
    lines = []
    for (task, doc), v, f in zip(keys(bench), items, flexible):
        m = {primary: float(v), **({FLEX: float(f)} if bench == "gsm8k" else {})}
        lines.append(json.dumps({"task": task, "doc_id": doc, "target": 0, "metrics": m}))
    (d / f"{bench}.samples.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def scores_dir(tmp_path):
    for (run, seed), by in ITEMS.items():
        for bench, items in by.items():
            write(tmp_path, name(run, seed), bench, items)
    return tmp_path


def loaded(scores_dir):
    scores = load.load_scores(scores_dir, models_list(), BENCHES)
    return scores, load.load_items(scores_dir, scores)


def changes_for(scores_dir):
    scores, items = loaded(scores_dir)
    summary = statistics.summarize(scores, runs=load.run_order(models_list()), benchmarks=BENCHES)
    return scores, items, summary, statistics.Changes(summary, models_list(), items)


# ------------------------------------------------------------------------------------------ the maths


def test_paired_change_by_hand():
    # one seed: d = [1, 0, 0, 1], std(d, ddof=1) = sqrt(1/3), over sqrt(4) items
    one = statistics.paired_change([[1, 0, 1, 1]], [[0, 0, 1, 0]])
    assert one["delta"] == pytest.approx(0.5)
    assert one["seed_sem"] == 0.0 and one["item_se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert one["uncertainty"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert one["df"] == pytest.approx(3.0)  # the item term alone: n - 1
    # two seeds against one base: per-seed changes 0.5 and 0.25 (seed sem 0.125); d = [1, -0.5, 0, 1],
    # std(d, ddof=1) = 0.75, item se 0.375; together sqrt(0.125^2 + 0.375^2) = sqrt(0.15625)
    base = [0, 1, 0, 0]
    two = statistics.paired_change([[1, 1, 0, 1], [1, 0, 0, 1]], [base, base])
    assert two["delta"] == pytest.approx(0.375)
    assert two["seed_sem"] == pytest.approx(0.125) and two["item_se"] == pytest.approx(0.375)
    assert two["uncertainty"] == pytest.approx(math.sqrt(0.15625))
    # Satterthwaite: 0.15625^2 / (0.125^4 / 1 + 0.375^4 / 3) = 0.0244140625 / 0.0068359375 = 25 / 7
    assert two["df"] == pytest.approx(25 / 7)
    # a partner that is B's mean over seeds: B's seed standard error is added in quadrature
    with_partner = statistics.paired_change([[1, 0, 1, 1]], [[0, 0, 1, 0]], partner_sem=0.3)
    assert with_partner["seed_sem"] == pytest.approx(0.3)
    assert with_partner["uncertainty"] == pytest.approx(math.hypot(0.3, math.sqrt(1 / 3) / 2))


def test_identical_models_have_zero_change_uncertainty(tmp_path):
    for model in ("base", "rl/seed0", "rl/seed1"):
        for bench in BENCHES:
            write(tmp_path, model, bench, ITEMS[("rl", 0)][bench])
    models = ["base", "rl/seed0", "rl/seed1"]
    scores = load.load_scores(tmp_path, models, BENCHES)
    summary = statistics.summarize(scores, runs=["base", "rl"], benchmarks=BENCHES)
    d = statistics.deltas_vs_base(summary, statistics.Changes(summary, models, load.load_items(tmp_path, scores)))
    assert d["paired"].all() and (d["delta"] == 0).all() and (d["uncertainty"] == 0).all()
    # the unpaired convention would have said sqrt(0.2^2 + 0.2^2) for the same two identical models
    unpaired = statistics.deltas_vs_base(summary)
    assert not unpaired["paired"].any() and unpaired["uncertainty"].to_numpy() == pytest.approx(math.hypot(0.2, 0.2))


def test_one_item_has_no_spread_so_the_change_stays_unpaired(tmp_path):
    for model, v in (("base", 0.0), ("rl/seed0", 1.0)):
        for bench in BENCHES:
            write(tmp_path, model, bench, [v])
    scores = load.load_scores(tmp_path, ["base", "rl/seed0"], BENCHES)
    summary = statistics.summarize(scores, runs=["base", "rl"], benchmarks=BENCHES)
    changes = statistics.Changes(summary, ["base", "rl/seed0"], load.load_items(tmp_path, scores))
    c = changes("rl", "base", "gsm8k")
    assert c["paired"] is False and c["uncertainty"] == pytest.approx(math.hypot(STDERR, STDERR))
    assert c["seed_sem"] == 0.0 and math.isnan(c["item_se"])


# ------------------------------------------------------------------------------------------ tables and claims


def test_tables_pair_changes_over_items(scores_dir):
    scores, items = loaded(scores_dir)
    assert items[("base", "mmlu", ACC)].tolist() == [1, 0, 1, 0]  # (task, doc_id) keys: 4 items, none merged
    built = tables.build_tables(scores, models_list(), items=items)
    d = built["delta_vs_base"].data.set_index(["run", "benchmark"])
    assert d["paired"].all()
    mild = d.loc[("sft_mild", "gsm8k")]
    assert mild["delta"] == pytest.approx(0.375) and mild["uncertainty"] == pytest.approx(math.sqrt(0.15625))
    assert mild["seed_sem"] == pytest.approx(0.125) and mild["item_se"] == pytest.approx(0.375)
    # rl, one seed: d = [1, 0, 0, 0], std(d, ddof=1) = 0.5, over sqrt(4): 0.25
    assert d.loc[("rl", "gsm8k"), "uncertainty"] == pytest.approx(0.25)
    assert "†" not in built["delta_vs_base"].markdown() and "paired over the test items" in built["delta_vs_base"].note

    # OPD against its teacher, seed with seed: changes 0.25 and -0.25 (seed sem 0.25); d = [-0.5, 0, 0, 0.5],
    # std(d, ddof=1) = sqrt(1/6), over sqrt(4); together sqrt(0.0625 + 1/24)
    t = built["delta_vs_teacher"].data.set_index("benchmark")
    assert t.loc["gsm8k", "delta"] == pytest.approx(0.0) and t["paired"].all()
    assert t.loc["gsm8k", "seed_sem"] == pytest.approx(0.25)
    assert t.loc["gsm8k", "item_se"] == pytest.approx(math.sqrt(1 / 6) / 2)
    assert t.loc["gsm8k", "uncertainty"] == pytest.approx(math.sqrt(0.0625 + 1 / 24))

    r = built["retention"].data.set_index("run")
    u_tqa, u_mmlu = d.loc[("rl", "truthfulqa_mc2"), "uncertainty"], d.loc[("rl", "mmlu"), "uncertainty"]
    assert r.loc["rl", "retention_change_unc"] == pytest.approx(math.hypot(u_tqa, u_mmlu) / 2)
    assert r.loc["rl", "retention_change_paired"] and r.loc["rl", "gsm8k_gain_paired"]


ROLES = {"mild": "sft_mild", "stress": "sft_stress", "opd": "opd", "rl": "rl", "opd_teacher": "sft_stress"}


def judged(scores, items, summary, changes):
    """Verdicts with GSM8K's flexible-extract paired over its own per-item scores, as the report judges them."""
    runs = load.run_order(models_list())
    others = statistics.metric_summaries(scores, runs, BENCHES)
    metrics = {m: (s, statistics.Changes(s, models_list(), items)) for m, s in others.items()}
    return {r["claim"]: r for r in verdicts(summary, ROLES, {}, changes=changes, metrics=metrics)}


def test_claims_are_judged_on_paired_standard_errors(scores_dir):
    res = judged(*changes_for(scores_dir))
    gain = next(c for c in res["claim1"]["checks"] if c["quantity"] == "sft_mild gsm8k gain")
    assert gain["paired"] is True and gain["uncertainty"] == pytest.approx(math.sqrt(0.15625))
    assert gain["df"] == pytest.approx(25 / 7)
    diff = res["claim2"]["quantities"]["opd − sft_stress on gsm8k"]
    assert diff["paired"] is True and diff["uncertainty"] == pytest.approx(math.sqrt(0.0625 + 1 / 24))
    assert all(c["paired"] for r in res.values() for c in r["checks"])
    md = claims_markdown(list(res.values()), ROLES)
    assert "paired over the test items" in md and "†" not in md
    # GSM8K's flexible-extract check is paired over its own per-item scores (here the same as strict-match's)
    flex = next(c for c in res["claim1"]["checks"] if c["quantity"] == "sft_mild gsm8k gain (flexible-extract)")
    assert flex["paired"] is True and flex["value"] == pytest.approx(0.375)
    assert flex["uncertainty"] == pytest.approx(math.sqrt(0.15625))


def test_a_missing_log_falls_back_to_unpaired_and_says_so(scores_dir):
    (scores_dir / "rl" / "seed0" / "gsm8k.samples.jsonl").unlink()
    scores, items, summary, changes = changes_for(scores_dir)
    built = tables.build_tables(scores, models_list(), items=items)
    d = built["delta_vs_base"].data.set_index(["run", "benchmark"])
    rl = d.loc[("rl", "gsm8k")]
    assert not rl["paired"] and rl["uncertainty"] == pytest.approx(math.hypot(STDERR, STDERR))
    assert math.isnan(rl["item_se"])
    assert d.drop(("rl", "gsm8k"))["paired"].all()  # only the change that reads the missing log
    row = built["delta_vs_base"].display.set_index("run").loc["rl"]
    assert row["GSM8K"].endswith("†") and not row["MMLU"].endswith("†")
    assert "† unpaired" in built["delta_vs_base"].note
    r = built["retention"].data.set_index("run")
    assert not r.loc["rl", "gsm8k_gain_paired"] and r.loc["rl", "retention_change_paired"]

    res = judged(scores, items, summary, changes)
    gain = next(c for c in res["claim3"]["checks"] if c["quantity"] == "rl gsm8k gain")
    assert gain["paired"] is False and gain["uncertainty"] == pytest.approx(math.hypot(STDERR, STDERR))
    assert gain["df"] is None  # lm-eval's standard errors, with one rl seed: no estimated term
    md = claims_markdown(list(res.values()), ROLES)
    line = next(x for x in md.splitlines() if x.startswith("| rl gsm8k gain"))
    assert "0.2828 †" in line and "† unpaired" in md


def test_a_log_that_disagrees_with_its_score_file_is_refused(scores_dir):
    write(scores_dir, "rl/seed0", "gsm8k", ITEMS[("rl", 0)]["gsm8k"], value=0.25)  # the log's mean is 0.5
    scores = load.load_scores(scores_dir, models_list(), BENCHES)
    with pytest.raises(DataError, match=r"rl/seed0/gsm8k\.samples\.jsonl: the mean of 'exact_match,strict-match'"):
        load.load_items(scores_dir, scores)
    # the other metric is checked too
    write(scores_dir, "rl/seed0", "gsm8k", ITEMS[("rl", 0)]["gsm8k"], flexible=[1, 1, 1, 1])
    scores = load.load_scores(scores_dir, models_list(), BENCHES)
    path = scores_dir / "rl" / "seed0" / "gsm8k.samples.jsonl"
    path.write_text(path.read_text().replace(f'"{FLEX}": 1.0', f'"{FLEX}": 0.0', 1))
    with pytest.raises(DataError, match=r"rl/seed0/gsm8k\.samples\.jsonl: the mean of 'exact_match,flexible"):
        load.load_items(scores_dir, scores)


def test_logs_must_cover_their_score_and_each_others_items(scores_dir):
    path = scores_dir / "opd" / "seed1" / "mmlu.samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # one item short of the score file's n
    scores = load.load_scores(scores_dir, models_list(), BENCHES)
    with pytest.raises(DataError, match=r"opd/seed1/mmlu\.samples\.jsonl: 3 items, but its score file scored n = 4"):
        load.load_items(scores_dir, scores)
    moved = json.loads(lines[-1]) | {"doc_id": 7}  # as many items, one of them another
    path.write_text("\n".join([*lines[:-1], json.dumps(moved)]) + "\n")
    with pytest.raises(DataError, match=r"opd/seed1/mmlu\.samples\.jsonl and .*: .*scored on different items"):
        load.load_items(scores_dir, scores)


def test_summary_only_verdicts_carry_no_pairing(scores_dir):
    """Without per-item scores (a summary alone, as in tests of the verdict logic) nothing claims to be paired."""
    _, _, summary, _ = changes_for(scores_dir)
    roles = {"mild": "sft_mild", "stress": "sft_stress", "opd": "opd", "rl": "rl", "opd_teacher": "sft_stress"}
    res = verdicts(summary, roles, {})
    assert not any("paired" in c for r in res for c in r["checks"])
    assert "combined standard error" in claims_markdown(res, roles)


# ------------------------------------------------------------------------------------------ the toy's report


def check_toy_report(work: Path):
    """Every change in the toy's report is paired (the DAG scores every model with its per-sample log), and
    pairing shrinks each retention change's standard error below the unpaired one of the two scores."""
    tables_dir = work / "results" / "toy" / "tables"
    claims = json.loads((tables_dir / "claims.json").read_text())["claims"]
    parts = [q for c in claims for q in [*c["checks"], *c["quantities"].values()]]
    assert parts and all(q["paired"] is True for q in parts)
    scores = pd.read_csv(tables_dir / "scores.csv").set_index(["run", "benchmark"])
    deltas = pd.read_csv(tables_dir / "delta_vs_base.csv")
    assert len(deltas) and deltas["paired"].all() and (deltas["item_se"] > 0).all()
    for r in deltas[deltas["benchmark"] != "gsm8k"].itertuples():
        unpaired = math.hypot(*(scores.loc[(run, r.benchmark), "uncertainty"] for run in (r.run, "base")))
        assert r.uncertainty < unpaired, (r.run, r.benchmark, r.uncertainty, unpaired)
    assert "†" not in (tables_dir / "claims.md").read_text()


@pytest.mark.slow
def test_the_toy_report_pairs_every_change(toy_run):
    check_toy_report(toy_run[0])
