"""State-distribution diagnostics: the per-token KL, NLL and entropy reductions against hand-computed values on
hand-made distributions, the masking, the chunked (bounded-memory) path, and zero drift of a model against itself."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from _fulllogits import FixedLogits
from _train_toy import build_model

from statepost import benchmarks
from statepost.diagnostics import measures
from statepost.io import read_jsonl, write_jsonl
from statepost.train import logprobs
from statepost.train.batch import StateBatch

# model p and base q over a 2-token vocabulary: KL(p||q) and KL(q||p) differ
P = [0.5, 0.5]
Q = [0.9, 0.1]
KL_PQ = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.510826
KL_QP = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.368064


def logits_of(p, shift=0.0):
    return torch.log(torch.tensor(p, dtype=torch.float64)).float() + shift  # softmax-invariant shift


def test_token_stats_hand_computed():
    m, b = logits_of(P, 1.3)[None], logits_of(Q, -0.4)[None]
    for y, nll_q in ((0, -math.log(0.9)), (1, -math.log(0.1))):
        kl_mb, kl_bm, nll_m, nll_b, ent = (float(x) for x in measures.token_stats(m, b, torch.tensor([y])))
        assert kl_mb == pytest.approx(KL_PQ, rel=1e-6)
        assert kl_bm == pytest.approx(KL_QP, rel=1e-6)
        assert nll_m == pytest.approx(math.log(2), rel=1e-6)
        assert nll_b == pytest.approx(nll_q, rel=1e-6)
        assert ent == pytest.approx(math.log(2), rel=1e-6)


def test_means_over_completion_tokens_only():
    """Rows of different lengths: prompt tokens and right padding are no states; the means run over the 3
    completion tokens (targets 0, 1 and 1), whatever the batch splits."""
    ids = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    cm = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    model, base = FixedLogits(logits_of(P)), FixedLogits(logits_of(Q))
    totals = measures.Totals()
    totals.add(measures.state_stats(model, base, StateBatch(input_ids=ids, attention_mask=am, completion_mask=cm)))
    out = totals.means()
    assert out["tokens"] == 3
    assert out["kl_model_base"] == pytest.approx(KL_PQ, rel=1e-6)
    assert out["kl_base_model"] == pytest.approx(KL_QP, rel=1e-6)
    assert out["nll_model"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["nll_base"] == pytest.approx((-math.log(0.9) - 2 * math.log(0.1)) / 3, rel=1e-6)
    assert out["entropy_model"] == pytest.approx(math.log(2), rel=1e-6)
    # the same states in two batches of one row each: the same token means
    split = measures.Totals()
    for r in range(2):
        split.add(measures.state_stats(model, base, StateBatch(input_ids=ids[r : r + 1], attention_mask=am[r : r + 1],
                                                        completion_mask=cm[r : r + 1])))  # fmt: skip
    assert split.means() == pytest.approx(out, rel=1e-12)


def test_the_report_reads_the_fields_the_diagnostics_write():
    from statepost.report import diagnostics as report_diagnostics

    assert report_diagnostics.STATS == measures.STATS


def test_state_nll_switch_is_a_step_interval():
    from statepost import config as cfglib

    cfg = _toy()
    assert cfglib.state_nll_every(cfg) == cfg["diagnostics"]["state_nll"]["every"] >= 1
    cfg["diagnostics"]["state_nll"]["enabled"] = False
    assert cfglib.state_nll_every(cfg) == 0
    assert cfglib.with_defaults({}, "diagnostics")["state_nll"] == {"enabled": True, "every": 5}


def test_no_tokens_gives_none():
    out = measures.Totals().means()
    assert out["tokens"] == 0 and all(out[k] is None for k in measures.STATS)


def random_batch(vocab=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 9), generator=g)
    cm = torch.zeros(3, 9)
    cm[:, 4:] = 1.0
    cm[2, 7:] = 0.0
    am = torch.ones(3, 9, dtype=torch.long)
    am[2, 7:] = 0
    return StateBatch(input_ids=ids, attention_mask=am, completion_mask=cm)


@pytest.mark.parametrize("same_object", [True, False], ids=["itself", "a copy"])
def test_a_model_against_itself_has_exactly_zero_drift(same_object):
    model = build_model(40, layers=1, heads=2, kv_heads=1, max_positions=64, seed=0).eval()
    base = model if same_object else copy.deepcopy(model)
    stats = measures.state_stats(model, base, random_batch())
    assert stats["kl_model_base"].numel() == 13  # 5 + 5 + 3 completion tokens
    assert torch.equal(stats["kl_model_base"], torch.zeros(13))
    assert torch.equal(stats["kl_base_model"], torch.zeros(13))
    assert torch.equal(stats["nll_model"], stats["nll_base"])
    assert (stats["entropy_model"] > 0).all()


def test_chunked_states_equal_full_logits(monkeypatch):
    """Chunks of 2 states (the bounded-memory path) give the values of the full [B, T, V] logits."""
    model = build_model(40, layers=1, heads=2, kv_heads=1, max_positions=64, seed=0).eval()
    base = build_model(40, layers=1, heads=2, kv_heads=1, max_positions=64, seed=3).eval()
    batch = random_batch()
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 2 * 40)
    chunked = measures.state_stats(model, base, batch)
    keep = batch.completion_mask[:, 1:] > 0
    with torch.no_grad():
        m = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1][keep]
        b = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1][keep]
    full = measures.token_stats(m, b, batch.input_ids[:, 1:][keep])
    for name, ref in zip(measures.STATS, full):
        assert torch.allclose(chunked[name], ref, atol=1e-5), name
    assert float(chunked["kl_model_base"].min()) > 0


def test_report_table_correlation_and_figures(tmp_path):
    """The diagnostics table and figures from hand-made files: off-task drift that falls exactly as retention
    rises has Spearman rho = -1, over every run and seed (base left out) and over the runs' seed means, each with
    its exact permutation p-value."""
    from test_report import BENCHES, METHODS, SCORES, models_list, write_metrics, write_score

    from statepost import report as R

    scores, metrics, diag = tmp_path / "scores", tmp_path / "models", tmp_path / "diagnostics"
    for (run, seed), values in SCORES.items():
        model = "base" if run == "base" else f"{run}/seed{seed}"
        for bench, value in zip(BENCHES, values):
            write_score(scores, model, bench, value, 0.01)
        if run != "base":
            write_metrics(metrics, run, seed)
            path = metrics / run / f"seed{seed}" / "metrics.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            level = 1.5 if METHODS[run][0] == "dataset" else 0.5
            path.write_text("".join(json.dumps({**r, "state_nll": level + 0.01 * r["step"]}) + "\n" for r in rows))
        retention = ((values[1] - SCORES["base", None][1]) + (values[2] - SCORES["base", None][2])) / 2
        drift = 0.0 if run == "base" else 0.01 - 10 * retention
        one = {"kl_model_base": drift, "kl_base_model": math.exp(drift), "nll_model": 1.0, "nll_base": 1.0,
               "entropy_model": 1.0, "tokens": 10, "sequences": 2, "skipped": 0, "time_s": 0.1}  # fmt: skip
        path = diag / f"{model}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": model, "sets": {"dataset": one, "own": one, "off_task": one}}))
    out = R.make_report(scores, metrics, models_list(methods=True), tmp_path / "t", tmp_path / "f", benchmarks=BENCHES,
                        diagnostics_dir=diag)  # fmt: skip
    table = out["tables"]["diagnostics"]
    assert len(table.data) == len(SCORES)
    assert table.data["retention_change"].iloc[0] == 0.0  # base against itself
    # exact permutation p-values: 2 of the 7! pairings reach |rho| = 1; over the runs' seed means, 2 of 4!
    assert "KL(model‖base): ρ = -1.000 (n = 7 runs × seeds, permutation p = 0.0004); ρ = -1.000 (n = 4 runs, seed " \
        "means, permutation p = 0.083)" in table.note, table.note
    assert "KL(base‖model): ρ = -1.000 (n = 7 runs × seeds, permutation p = 0.0004)" in table.note
    for p in R.output_paths(tmp_path / "t", tmp_path / "f", diagnostics=True):
        assert p.is_file() and p.stat().st_size > 0, p


def test_state_nll_changes_no_weight(tmp_path):
    """A learner-state run (sampling draws random numbers) with state_nll every 2 steps ends with the weights of the
    same run without it, bit for bit, and logs the init model's NLL at steps 1, 2 and 4."""
    from _train_toy import make_world, run_cfg, weights

    from statepost.io import read_jsonl
    from statepost.train.loop import train

    world = make_world(tmp_path / "world", n_rows=16)
    cfg = run_cfg(max_steps=4, batch_size=2)
    cfg["states"] = {"source": "learner", "data": "gsm8k", "split": "train", "temperature": 1.0, "max_new_tokens": 8,
                     "samples_per_prompt": 2}  # fmt: skip
    outs = {}
    for every in (0, 2):
        outs[every] = tmp_path / f"every{every}"
        train(cfg, init_dir=world["init"], out_dir=outs[every], data_dir=world["data_dir"],
              state_dir=tmp_path / f"state{every}", progress=False, state_nll_every=every)  # fmt: skip
    off, on = weights(outs[0]), weights(outs[2])
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)
    rows = {r["step"]: r for r in read_jsonl(outs[2] / "metrics.jsonl")}
    assert [s for s, r in rows.items() if "state_nll" in r] == [1, 2, 4]
    assert all(rows[s]["state_nll"] > 0 for s in (1, 2, 4))
    assert not any("state_nll" in r for r in read_jsonl(outs[0] / "metrics.jsonl"))


# --------------------------------------------------------------------------------------------- on the toy DAG


def _toy():
    from statepost import config as cfglib

    return cfglib.load(Path(__file__).resolve().parent.parent / "config" / "toy.yaml")


SET_KEYS = {*measures.STATS, "tokens", "sequences", "skipped", "time_s"}


@pytest.mark.slow
def test_every_model_has_a_diagnostics_file_of_the_documented_schema(toy_run):
    from statepost import config as cfglib

    work, toy = toy_run[0], _toy()
    for model in cfglib.model_names(toy):
        rec = json.loads((work / "results" / "toy" / "diagnostics" / f"{model}.json").read_text())
        assert {"model", "model_dir", "base_dir", "settings", "stop", "sets", "time_s", "env", "created"} <= set(rec)
        assert rec["model"] == model and set(rec["sets"]) == {"dataset", "own", "off_task"}
        assert rec["settings"]["prompts"] == toy["diagnostics"]["prompts"]
        for name, s in rec["sets"].items():
            assert SET_KEYS <= set(s), (model, name, SET_KEYS - set(s))
            assert s["tokens"] > 0 and s["sequences"] > 0, (model, name)
            assert all(math.isfinite(s[k]) and s[k] >= 0 for k in measures.STATS), (model, name, s)
        assert {"accuracy", "completion_len", "finished_frac"} <= set(rec["sets"]["own"])
        per = rec["sets"]["off_task"]["benchmarks"]
        assert set(per) == {"truthfulqa_mc2", "mmlu"}
        for bench, s in per.items():  # off-task states from the probe split, no row dropped as also scored
            assert (s["split"], s["overlap_dropped"]) == (toy["benchmarks"][bench]["probe_split"], 0), (model, bench)


@pytest.mark.slow
def test_probe_items_share_no_item_with_any_split_the_evaluation_reads(toy_run):
    """The off-task states' items (the toy's probe splits) ask about facts no scored or few-shot item asks about."""
    data, toy = toy_run[0] / "results" / "toy" / "data", _toy()
    for bench in ("truthfulqa_mc2", "mmlu"):
        probe = toy["benchmarks"][bench]["probe_split"]
        assert probe
        read = {r["question"] for s in benchmarks.get(bench).splits for r in read_jsonl(data / bench / f"{s}.jsonl")}
        asked = [r["question"] for r in read_jsonl(data / bench / f"{probe}.jsonl")]
        assert asked and not read & set(asked), bench


def test_a_probe_row_that_is_also_scored_is_left_out(tmp_path):
    """Probe rows whose question is in a split the evaluation reads (scored or few-shot) are dropped and counted."""
    from statepost.diagnostics import statesets

    rows = [{"question": f"Q{i}?", "subject": "astronomy", "choices": list("abcd"), "answer": 0} for i in range(6)]
    for split, part in (("dev", rows[:1]), ("test", rows[1:3]), ("validation", rows[2:])):
        write_jsonl(tmp_path / "mmlu" / f"{split}.jsonl", part)
    kept, dropped = statesets.probe_rows(tmp_path, "mmlu", "validation")
    assert [r["question"] for r in kept] == ["Q3?", "Q4?", "Q5?"] and dropped == 1


def test_the_toy_generators_probe_splits_ask_about_other_facts():
    """A probe split of a toy benchmark asks about facts its scored and few-shot splits do not, and adding it
    leaves those splits as they were."""
    from statepost.toyworld import generate_toy

    for bench, cfg, probe in (("truthfulqa_mc2", {"seed": 2, "rows": {"validation": 240, "probe": 60}}, "probe"),
                              ("mmlu", {"seed": 3, "rows": {"dev": 5, "test": 75, "validation": 20}}, "validation")):
        scored = benchmarks.get(bench).splits
        with_probe = generate_toy(bench, {**cfg, "splits": [*scored, probe]})
        assert {s: with_probe[s] for s in scored} == generate_toy(bench, {**cfg, "splits": scored})
        read = {r["question"] for s in scored for r in with_probe[s]}
        assert not read & {r["question"] for r in with_probe[probe]}, bench
        assert len({r["question"] for r in with_probe[probe]}) == len(with_probe[probe]), bench


@pytest.mark.slow
def test_base_against_itself_has_zero_drift(toy_run):
    rec = json.loads((toy_run[0] / "results" / "toy" / "diagnostics" / "base.json").read_text())
    for name, s in rec["sets"].items():
        assert s["kl_model_base"] == 0.0 and s["kl_base_model"] == 0.0, (name, s)
        assert s["nll_model"] == s["nll_base"], (name, s)


@pytest.mark.slow
def test_every_run_logs_state_nll(toy_run):
    from statepost.io import read_jsonl

    work, toy = toy_run[0], _toy()
    every = toy["diagnostics"]["state_nll"]["every"]
    for run in toy["runs"]:
        rows = list(read_jsonl(work / "results" / "toy" / "models" / run / "seed0" / "metrics.jsonl"))
        logged = [r["step"] for r in rows if "state_nll" in r]
        assert logged == [r["step"] for r in rows if r["step"] == 1 or r["step"] % every == 0], run
        assert all(r["state_nll"] is None or r["state_nll"] > 0 for r in rows if "state_nll" in r), run


@pytest.mark.slow
def test_diagnostics_table_figures_and_report_page(toy_run, tmp_path):
    from conftest import snakemake

    work, toy = toy_run[0], _toy()
    tables, figures = work / "results" / "toy" / "tables", work / "results" / "toy" / "figures"
    csv = (tables / "diagnostics.csv").read_text().splitlines()
    assert len(csv) == 1 + 1 + len(toy["runs"]) * len(toy["seeds"])  # header, base, every run x seed
    assert "Spearman" in (tables / "diagnostics.md").read_text() and (tables / "diagnostics.tex").stat().st_size
    for name in ("drift_vs_retention", "state_nll"):
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    page = tmp_path / "report.html"
    snakemake(work, "--configfile", "config/toy.yaml", "--report", str(page))
    html = page.read_text(errors="replace")
    for name in ("diagnostics.html", "drift_vs_retention.png", "state_nll.png"):
        assert name in html, name


def test_spearman_permutation_p_by_hand():
    """n = 4 points: rho = 0.8 when one adjacent pair is swapped; |rho| >= 0.8 in 8 of the 24 pairings (the identity,
    3 adjacent swaps, and their 4 reverses), so the two-sided p is 1/3."""
    import pandas as pd

    from statepost.report.diagnostics import spearman

    data = pd.DataFrame({"run": ["a", "b", "c", "d"], "x": [1.0, 2.0, 3.0, 4.0], "retention_change": [1.0, 3.0, 2.0, 4.0]})
    rho, n, p = spearman(data, "x")
    assert (rho, n) == (pytest.approx(0.8), 4) and p == pytest.approx(8 / 24)
    assert math.isnan(spearman(data.iloc[:2], "x")[0])  # two points: no correlation
