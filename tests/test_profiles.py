"""The Snakemake profiles (profiles/*), without a cluster: what they set, what they must not set,
and the paper DAG as `snakemake -n --profile profiles/slurm` plans it (GPU requests on training
and evaluation, none on light rules, partition/account from the environment)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import yte

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"


def render(profile: str, **env: str) -> dict:
    """The profile as Snakemake reads it (YTE-rendered when it asks for that)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with open(PROFILES / profile / "config.yaml") as f:
            return yte.process_yaml(f, require_use_yte=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_default_profile_only_holds_settings_valid_everywhere():
    prof = yaml.safe_load((PROFILES / "default" / "config.yaml").read_text())
    # loaded on every run and overriding the same keys of --profile: nothing machine-specific
    forbidden = {
        "use-conda", "software-deployment-method", "sdm", "executor", "jobs", "cores", "latency-wait",
        "retries", "default-resources", "set-resources", "resources", "use-apptainer",
    }  # fmt: skip
    assert not forbidden & set(prof), forbidden & set(prof)
    assert prof.get("printshellcmds") is True


@pytest.mark.parametrize("profile", ["slurm", "slurm-ci"])
def test_slurm_profiles(profile, monkeypatch):
    monkeypatch.delenv("STATEPOST_SLURM_PARTITION", raising=False)
    monkeypatch.delenv("STATEPOST_SLURM_ACCOUNT", raising=False)
    prof = render(profile)
    assert prof["executor"] == "slurm"
    res = prof["default-resources"]
    # no site value is hard-coded: empty means "cluster default partition" / "plugin guesses account"
    assert res["slurm_partition"] == "''" and res["slurm_account"] == "''"
    # cpus_per_task here would override every rule's threads (the plugin's --cpus-per-task source)
    assert "cpus_per_task" not in res
    assert "software-deployment-method" not in prof and "use-conda" not in prof
    assert isinstance(prof["slurm-init-seconds-before-status-checks"], int)
    if profile == "slurm":
        assert prof["retries"] == 2 and prof["latency-wait"] >= 30
    else:
        assert prof["retries"] == 0 and prof["slurm-init-seconds-before-status-checks"] <= 5
    site = render(profile, STATEPOST_SLURM_PARTITION="all", STATEPOST_SLURM_ACCOUNT="12345")
    assert site["default-resources"]["slurm_partition"] == "'all'"
    assert site["default-resources"]["slurm_account"] == "'12345'"


def _dry_run_jobs(out: str) -> list[tuple[str, dict]]:
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        r = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        if m and r:
            jobs.append((m.group(1), dict(kv.split("=", 1) for kv in r.group(1).split(", "))))
    return jobs


def test_paper_dag_dry_run_on_slurm_profile():
    if not (REPO / "Snakefile").exists() or not (REPO / "config" / "config.yaml").exists():
        pytest.skip("the workflow is not in the repository yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STATEPOST_"))}
    env.update(STATEPOST_SLURM_PARTITION="all", STATEPOST_SLURM_ACCOUNT="12345", HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm", "--configfile", "config/config.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    jobs = _dry_run_jobs(out)
    rules = {name for name, _ in jobs}
    assert {"evaluate", "report", "base_model"} <= rules, rules
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    train_rules = set(config["runs"])
    assert train_rules <= rules
    res_cfg = config["resources"]
    for name, res in jobs:
        if name == "all":
            continue
        assert res["slurm_partition"] == "all" and res["slurm_account"] == "12345", (name, res)
        group = (
            "train" if name in train_rules else "evaluate" if name == "evaluate"
            else "data" if name.startswith("data_") else name
        )  # fmt: skip
        want = {**res_cfg[group], **(config["runs"][name].get("resources", {}) if group == "train" else {})}
        assert int(res.get("gpu", 0)) == want["gpu"], (name, res)
        assert int(res["mem_mb"]) == want["mem_mb"], (name, res)  # attempt 1: the base value
        assert int(res["runtime"]) == want["runtime"], (name, res)
    # the paper config asks for GPUs exactly where the heavy work is
    assert all(int(r.get("gpu", 0)) >= 1 for n, r in jobs if n in train_rules or n in ("evaluate", "diagnose"))
    assert "diagnose" in rules
    assert all(int(r.get("gpu", 0)) == 0 for n, r in jobs if n.startswith("data_") or n == "report")
