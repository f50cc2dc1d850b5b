"""Dry runs of the DAG: what Snakemake plans, without running anything or touching the network."""

import pytest

from conftest import copy_repo, snakemake
from test_toy_dag import job_counts


@pytest.fixture(scope="module")
def clean_repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("plan"))


def test_paper_dag_plans_offline(clean_repo):
    out = snakemake(clean_repo, "-n")  # config/config.yaml: the hub paths
    counts = job_counts(out.stdout)
    assert counts == {
        "data_gsm8k": 1, "data_truthfulqa_mc2": 1, "data_mmlu": 1, "base_model": 1,
        "sft_mild": 3, "sft_stress": 3, "opd": 3, "rl": 3, "evaluate": 39, "diagnose": 13, "report": 1, "all": 1,
    }  # three seeds: a verdict needs them


def test_one_file_builds_only_what_it_needs(clean_repo):
    out = snakemake(clean_repo, "-n", "results/paper/scores/opd/seed0/gsm8k.json")
    assert job_counts(out.stdout) == {
        "data_gsm8k": 1, "base_model": 1, "sft_stress": 1, "opd": 1, "evaluate": 1,
    }


def test_two_seeds_plan_two_of_every_training_and_evaluation(clean_repo):
    out = snakemake(clean_repo, "-n", "--configfile", "config/toy.yaml", "--config", "seeds=[0,1]")
    counts = job_counts(out.stdout)
    for run in ("sft_mild", "sft_stress", "opd", "rl"):
        assert counts[run] == 2
    # base once, every (run, seed) and sft_stress's 3 trajectory models per seed, on every benchmark
    assert counts["evaluate"] == 3 * (1 + 4 * 2 + 3 * 2)
    assert counts["trajectory"] == 1
    assert counts["diagnose"] == 1 + 4 * 2  # every model
    assert counts["base_model"] == 1


def test_lint_and_format_are_clean(clean_repo):
    lint = snakemake(clean_repo, "--lint", check=False)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    import subprocess, sys
    from pathlib import Path

    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/"],
        cwd=clean_repo, capture_output=True, text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
