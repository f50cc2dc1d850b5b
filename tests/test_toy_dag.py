"""The whole toy DAG, run once (conftest.toy_run): every output checked against its documented schema,
and what a user checks on the finished run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import snakemake
from statepost import config as cfglib
from statepost import toyworld
from statepost.data import validate_file
from statepost.io import read_jsonl

pytestmark = pytest.mark.slow

TOY = cfglib.load(Path(__file__).resolve().parent.parent / "config" / "toy.yaml")
BENCHMARKS = list(TOY["benchmarks"])
MODELS = cfglib.model_names(TOY)
SCORE_KEYS = {"model", "benchmark", "task", "metrics", "primary_metric", "value", "stderr", "n", "num_fewshot",
              "limit", "lm_eval_version", "model_path", "created"}
STEP_KEYS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "padding_waste", "time_s"}
SIGNAL_KEYS = {
    "nll": {"nll"},
    "teacher_kl": {"kl", "entropy", "teacher_nll", "completion_len", "eos_frac", "accuracy"},
    "reward": {"reward", "accuracy", "zero_var_frac", "completion_len", "entropy"},
}


def job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)}


def metrics(work: Path, run: str) -> list[dict]:
    return list(read_jsonl(work / "results" / "toy" / "models" / run / "seed0" / "metrics.jsonl"))


def first_and_last_quarter(work: Path, run: str, key: str) -> tuple[float, float]:
    """Means of a training metric over the first and the last quarter of the run's steps."""
    values = [m[key] for m in metrics(work, run)]
    q = max(len(values) // 4, 1)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def test_data_outputs_validate_and_have_manifests(toy_run):
    work, _ = toy_run
    for bench, cfg in TOY["benchmarks"].items():
        manifest = json.loads((work / "results" / "toy" / "data" / bench / "manifest.json").read_text())
        assert manifest["source"] == "toy" and manifest["benchmark"] == bench
        for split in cfg["splits"]:
            path = work / "results" / "toy" / "data" / bench / f"{split}.jsonl"
            validate_file(bench, split, path)
            assert manifest["outputs"][split]["rows"] == sum(1 for _ in read_jsonl(path))


def test_models_are_loadable_checkpoints_with_provenance(toy_run):
    from statepost.models import load_model

    work, _ = toy_run
    base = work / "results" / "toy" / "models" / "base"
    assert (base / "model.safetensors").exists() and (base / "tokenizer.json").exists()
    assert not list(base.glob("*.bin"))
    assert sum(p.numel() for p in load_model(base).parameters()) < 5_000_000
    for run in cfglib.run_order(TOY):
        out = work / "results" / "toy" / "models" / run / "seed0"
        assert (out / "model.safetensors").exists(), run
        info = json.loads((out / "run.json").read_text())
        assert info["config"]["name"] == run and info["config"]["seed"] == 0
        for key in ("env", "inputs", "wall_time_s", "config_hash", "files"):
            assert key in info, (run, key)
        assert info["env"]["versions"]["torch"] and "git_commit" in info["env"]
        lines = metrics(work, run)
        assert lines and [m["step"] for m in lines] == sorted({m["step"] for m in lines})
        signal = TOY["runs"][run]["signal"]["type"]
        for m in lines:
            assert STEP_KEYS | SIGNAL_KEYS[signal] <= set(m), (run, set(m))
        # resumable states are removed once the model is written
        assert not (work / "results" / "toy" / ".state" / run / "seed0").exists()


def test_every_model_scored_on_every_benchmark(toy_run):
    work, _ = toy_run
    for model in MODELS:
        for bench in BENCHMARKS:
            path = work / "results" / "toy" / "scores" / model / f"{bench}.json"
            score = json.loads(path.read_text())
            assert SCORE_KEYS <= set(score), (path, SCORE_KEYS - set(score))
            assert score["model"] == model and score["benchmark"] == bench
            assert 0.0 <= score["value"] <= 1.0 and score["n"] > 0
            assert score["num_fewshot"] == TOY["benchmarks"][bench]["eval"]["num_fewshot"]
            names = {m["metric"] for m in score["metrics"]}
            if bench == "gsm8k":
                assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= names
                assert score["primary_metric"] == "exact_match,strict-match"
            else:
                assert score["primary_metric"] == "acc,none"
            samples = list(read_jsonl(path.with_name(f"{bench}.samples.jsonl")))
            assert len(samples) == score["n"]


# What a model that cannot tell the answers apart scores: MMLU, 1 of 4 letters; TruthfulQA mc2, the
# share of probability on the true answers when all are equally likely, 1 true of 1 + TQA_FALSE_ANSWERS.
CHANCE = {"mmlu": 0.25, "truthfulqa_mc2": 1 / (1 + toyworld.TQA_FALSE_ANSWERS)}


def test_base_scores_are_alive(toy_run):
    """The toy is an instrument: base GSM8K strict-match strictly inside (0.1, 0.9), each retention
    benchmark at least 10 points above chance and 10 below 1.0, with a standard error of at most 0.03,
    so a 5-point change is several standard errors."""
    work, _ = toy_run
    base = {b: json.loads((work / "results" / "toy" / "scores" / "base" / f"{b}.json").read_text()) for b in BENCHMARKS}
    assert 0.1 <= base["gsm8k"]["value"] <= 0.9, base["gsm8k"]["value"]
    assert CHANCE["truthfulqa_mc2"] == pytest.approx(1 / 3)
    for bench, chance in CHANCE.items():
        value, se = base[bench]["value"], base[bench]["stderr"]
        assert chance + 0.10 <= value <= 0.90, (bench, value)
        assert se <= 0.03, (bench, se)


def test_tables_figures_and_claims(toy_run):
    work, _ = toy_run
    tables, figures = work / "results" / "toy" / "tables", work / "results" / "toy" / "figures"
    for name in ("scores", "delta_vs_base", "delta_vs_teacher", "retention"):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    scores_md = (tables / "scores.md").read_text()
    for run in ["base", *cfglib.run_order(TOY)]:
        assert run in scores_md
    for name in ("scores", "delta_vs_base", "retention"):  # every run, rl included, in every table
        rows = {line.split(",")[0] for line in (tables / f"{name}.csv").read_text().splitlines()[1:]}
        assert set(cfglib.run_order(TOY)) <= rows, (name, rows)
    for name in ("scores", "retention_vs_gain", "training_curves"):
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    claims = {c["claim"]: c for c in json.loads((tables / "claims.json").read_text())["claims"]}
    assert list(claims) == ["claim1", "claim2", "claim3"]
    for claim in claims.values():  # one training seed: no claim is reproduced or not, whatever its checks say
        assert claim["verdict"] == "provisional (1 seed)" and claim["n_seeds"] == 1, claim
        assert claim["leaning"] in {"reproduced", "not reproduced", "format only", "inconclusive"}, claim
    checks = {c: [x["quantity"] for x in claims[c]["checks"]] for c in claims}
    assert "rl gsm8k gain (flexible-extract)" in checks["claim3"]  # a gain means more answers right
    assert {"sft_stress truthfulqa_mc2 drop", "sft_stress mmlu drop"} <= set(checks["claim1"])  # "... and MMLU"
    md = (tables / "claims.md").read_text()
    assert md.count("**provisional (1 seed)**") == 3 and "| rl gsm8k gain (flexible-extract) |" in md


def test_second_dry_run_has_nothing_to_do(toy_run):
    work, _ = toy_run
    out = snakemake(work, "-n", "--configfile", "config/toy.yaml")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_forcerun_stress_plans_exactly_its_dependents(toy_run):
    work, _ = toy_run
    out = snakemake(work, "-n", "--configfile", "config/toy.yaml", "--forcerun", "sft_stress")
    counts = job_counts(out.stdout)
    assert counts["sft_stress"] == 1 and counts["opd"] == 1
    along = len(TOY["runs"]["sft_stress"]["trajectory"])  # its models along training, evaluated too
    assert counts["evaluate"] == (2 + along) * len(BENCHMARKS)  # sft_stress and opd, every benchmark
    assert counts["report"] == 1 and counts["trajectory"] == 1
    assert not {"sft_mild", "rl", "base_model"} & set(counts)


def test_changing_one_run_reruns_only_it_and_dependents(toy_run, tmp_path):
    work, _ = toy_run
    cfg = yaml.safe_load((work / "config" / "toy.yaml").read_text())
    cfg["runs"]["sft_mild"]["optim"]["lr"] = 2.0e-3
    path = tmp_path / "toy_changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = job_counts(snakemake(work, "-n", "--configfile", str(path)).stdout)
    assert counts.get("sft_mild") == 1 and counts["evaluate"] == len(BENCHMARKS)
    assert not {"sft_stress", "opd", "rl", "base_model"} & set(counts)


def test_changing_a_probe_split_reruns_only_the_diagnostics(toy_run, tmp_path):
    """Which split gives the off-task states is a diagnostics setting: no data, model or score is redone."""
    work, _ = toy_run
    cfg = yaml.safe_load((work / "config" / "toy.yaml").read_text())
    cfg["benchmarks"]["mmlu"]["probe_split"] = None
    path = tmp_path / "toy_probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = job_counts(snakemake(work, "-n", "--configfile", str(path)).stdout)
    assert set(counts) - {"all", "total"} == {"diagnose", "report"}, counts


def test_sft_stress_fits_far_harder_than_mild(toy_run):
    work, _ = toy_run
    mild = metrics(work, "sft_mild")[-5:]
    stress = metrics(work, "sft_stress")[-5:]
    mild_loss = sum(m["loss"] for m in mild) / len(mild)
    stress_loss = sum(m["loss"] for m in stress) / len(stress)
    assert stress_loss < 0.5 * mild_loss, (stress_loss, mild_loss)


def test_opd_kl_to_teacher_falls(toy_run):
    first, last = first_and_last_quarter(toy_run[0], "opd", "kl")
    assert last < 0.8 * first, (first, last)


def test_rl_mean_reward_rises(toy_run):
    first, last = first_and_last_quarter(toy_run[0], "rl", "reward")
    assert last > first + 0.05, (first, last)


def test_snakemake_report_builds(toy_run):
    """The report page embeds every table (as its HTML page, which the report shows inline) and every figure (PNG),
    each under its category with its own caption."""
    import base64

    from statepost import report
    from statepost.report import diagnostics

    work, _ = toy_run
    snakemake(work, "--configfile", "config/toy.yaml", "--report", "results/toy/report.html")
    html = (work / "results" / "toy" / "report.html").read_text(errors="replace")
    decoder = json.JSONDecoder()
    categories, _ = decoder.raw_decode(html[html.rindex("var categories = ") + len("var categories = ") :])
    results, _ = decoder.raw_decode(html[html.rindex("var results = ") + len("var results = ") :])
    names = lambda cat: {Path(p).name for sub in categories[cat].values() for p in sub}  # noqa: E731
    assert names("Tables") == {f"{t}.html" for t in report.TABLES} | {"trajectory.html"}  # the toy saves one
    assert names("Claims") == {"claims.html"}
    assert names("Figures") == {f"{f}.png" for f in report.FIGURES} | {"trajectory.png"}
    assert names("Diagnostics") == {f"{diagnostics.TABLE}.html"} | {f"{f}.png" for f in diagnostics.FIGURES}
    assert len(results) == len(report.TABLES) + 1 + len(report.FIGURES) + 1 + len(diagnostics.FIGURES) + 2
    captions = [r["caption"] for r in results.values()]
    assert all(len(c) > 200 for c in captions) and len(set(captions)) == len(captions)  # each its own
    for path, r in results.items():
        data = base64.b64decode(r["data_uri"].split("base64,", 1)[1])
        if path.endswith(".html"):
            assert r["mime_type"] == "text/html" and b"<table>" in data, path
        else:
            assert r["mime_type"] == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n", path


def test_paper_plan_leaves_the_toy_outputs_alone(toy_run):
    """After the toy, a plain `snakemake -n` (the paper config) plans only jobs under results/paper/: no job
    would overwrite or delete a file of results/toy/."""
    work, _ = toy_run
    out = snakemake(work, "-n")
    text = out.stdout + out.stderr
    planned = [line.split(":", 1)[1] for line in text.splitlines() if line.strip().startswith(("output:", "log:"))]
    paths = [p.strip() for line in planned for p in line.split(",") if p.strip()]
    assert len(paths) > 20, text[-3000:]
    assert all(p.startswith("results/paper/") for p in paths), [p for p in paths if not p.startswith("results/paper/")]
    assert "results/toy" not in text, text[-3000:]


def test_new_methods_from_config_alone(toy_run, tmp_path):
    """A third SFT, off-policy distillation and rejection-sampling SFT: config entries, no code change."""
    work, _ = toy_run
    cfg = yaml.safe_load((work / "config" / "toy.yaml").read_text())
    short = {"lr": 1.0e-3, "max_steps": 6, "batch_size": 8, "max_length": 256}
    cfg["runs"]["sft_lr2"] = {"init": "base", "states": {"source": "dataset"}, "signal": {"type": "nll"},
                              "optim": dict(short, lr=2.0e-3)}
    cfg["runs"]["offpolicy_kd"] = {"init": "base", "states": {"source": "dataset"},
                                   "signal": {"type": "teacher_kl", "teacher": "sft_stress"}, "optim": short}
    cfg["runs"]["rft"] = {"init": "base",
                          "states": {"source": "learner", "temperature": 1.0, "max_new_tokens": 48,
                                     "samples_per_prompt": 4, "filter": {"reward": "gsm8k", "min": 1.0}},
                          "signal": {"type": "nll"}, "optim": short}
    path = tmp_path / "toy_more.yaml"
    path.write_text(yaml.safe_dump(cfg))
    targets = [f"results/toy/scores/{run}/seed0/gsm8k.json" for run in ("sft_lr2", "offpolicy_kd", "rft")]
    out = snakemake(work, *targets, "--configfile", str(path))
    counts = job_counts(out.stdout + out.stderr)
    assert not {"sft_mild", "sft_stress", "opd", "rl"} & set(counts)  # existing runs are reused
    for run in ("sft_lr2", "offpolicy_kd", "rft"):
        score = json.loads((work / f"results/toy/scores/{run}/seed0/gsm8k.json").read_text())
        assert score["model"] == f"{run}/seed0"
        assert len(metrics(work, run)) == 6
    assert "kl" in metrics(work, "offpolicy_kd")[0]
