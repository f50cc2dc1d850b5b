"""The SLURM path, for real: a single-node SLURM cluster on this machine (ci/slurm/start_slurm.sh),
the snakemake-executor-plugin-slurm with profiles/slurm-ci, and SLURM's own accounting records
(sacct) as the judge of what ran. Needs root (daemons, apt-get); skipped with the reason otherwise.

- test_mech_*: a throwaway 6-rule workflow run once (module fixture): plain jobs, a GPU job
  (gres/gpu from SLURM_FAKE_GPUS), a job that fails on attempt 1 and passes on the retry with
  twice the memory (the attempt-scaling contract of the rules), and a job that exits 1, which
  must make snakemake fail while SLURM records it as FAILED.
- test_toy_dag_on_slurm: the project's own DAG with config/toy.yaml; every non-local job must
  be a SLURM job that COMPLETED; then its weights and scores must equal those of the local toy
  run (conftest.toy_run): the determinism check of running the toy DAG twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "ci" / "slurm"
FAKE_GPUS = 2
MECH_TIMEOUT_S = 600
TOY_TIMEOUT_S = 2700  # the toy DAG took 19 min on SLURM on the 2-core CI machine


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: ci/slurm/start_slurm.sh installs and starts the SLURM daemons"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is unavailable to install it"
    return None


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the CI cluster (idempotent) for the session; stop it afterwards if we started it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    run_dir = Path(os.environ.get("SLURM_CI_DIR") or Path(tempfile.gettempdir()) / "statepost-slurm")
    env = {
        **os.environ,
        "SLURM_CI_DIR": str(run_dir),
        "SLURM_FAKE_GPUS": str(FAKE_GPUS),
        "SLURM_ACCOUNTING": "1",
    }
    was_up = _alive(run_dir / "slurmctld.pid")
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(CI / "start_slurm.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"start_slurm.sh failed:\n{p.stdout}\n{p.stderr}"
    print(f"\n[slurm] cluster up in {time.monotonic() - t0:.1f} s (was already up: {was_up})")
    part = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    default = next(p.rstrip("*") for p in part if p.endswith("*"))
    yield {"run_dir": run_dir, "partition": default}
    if not was_up:
        s = subprocess.run(["bash", str(CI / "stop_slurm.sh")], env=env, capture_output=True, text=True, timeout=300)
        assert s.returncode == 0, s.stdout + s.stderr


def _copy_repo(dst: Path) -> Path:
    """The repository's files (tracked and not ignored), as CI would check them out."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STATEPOST_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # The jobs inherit this environment (sbatch --export=ALL): python/snakemake from our venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")  # the toy world is offline
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def _snakemake(workdir: Path, args: list[str], timeout_s: int, env: dict) -> tuple[int, str, float]:
    cmd = ["timeout", "-s", "KILL", str(timeout_s), sys.executable, "-m", "snakemake", *args]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    out = p.stdout + p.stderr
    (workdir / "snakemake-run.log").write_text(out)
    if p.returncode == 137:  # killed by timeout: leave no jobs behind on the cluster
        ids = [f.stem for f in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)
    return p.returncode, out, wall


def _slurm_jobs(workdir: Path) -> dict[str, list[dict]]:
    """rule -> its SLURM jobs as SLURM's accounting recorded them (job ids from the plugin's logs)."""
    by_rule: dict[str, list[str]] = {}
    root = workdir / ".snakemake" / "slurm_logs"
    # rule_<name>/<jobid>.log, or rule_<name>/<wildcards>/<jobid>.log for rules with wildcards
    # in submission order: job ids are numbers, and "103" sorts before "99" as text
    for log in sorted(root.glob("rule_*/**/*.log"), key=lambda p: int(p.stem)):
        rule = log.relative_to(root).parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(log.stem)
    ids = [i for v in by_rule.values() for i in v]
    if not ids:
        return {}
    fmt = "JobID,JobName,State,ExitCode,AllocTRES"
    records: dict[str, dict] = {}
    for _ in range(20):  # accounting may trail the job's end by a moment
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", f"--format={fmt}", "-j", ",".join(ids)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        records = {}
        for line in out.splitlines():
            job_id, name, state, exit_code, tres = line.split("|")
            records[job_id] = {"id": job_id, "name": name, "state": state, "exit": exit_code, "tres": tres}
        if set(records) == set(ids) and not any(r["state"] in {"PENDING", "RUNNING"} for r in records.values()):
            break
        time.sleep(0.5)
    return {rule: [records.get(i, {"id": i, "state": "MISSING"}) for i in v] for rule, v in by_rule.items()}


def _submissions(log: str) -> Counter:
    """Jobs per rule that the plugin reports as submitted to SLURM, from snakemake's own log."""
    return Counter(re.findall(r"^Job \d+ has been submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/(?:\S+/)?\d+\.log\)", log, flags=re.M))


def _remote_rules(log: str) -> set[str]:
    """Rules that snakemake scheduled as non-local jobs (`rule X:` headers; local ones read `localrule X:`)."""
    return set(re.findall(r"^rule (\w+):$", log, flags=re.M))


MECH_SNAKEFILE = r"""
localrules: all

rule all:
    input: "c.txt", "flaky.txt", "after_boom.txt"

rule prep:
    output: "a.txt"
    shell: "echo job=$SLURM_JOB_ID > {output}"

rule train:  # a GPU job: --gpus=1; statepost.gpus must leave CUDA_VISIBLE_DEVICES to SLURM
    input: "a.txt"
    output: "b.txt"
    threads: 2  # -> --cpus-per-task=2 (no cpus_per_task default in the profile overrides it)
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 300 * attempt,
        runtime=lambda wc, attempt: 5 * attempt,
    shell:
        "python -m statepost.gpus --gpus {resources.gpu} -- "
        "sh -c 'echo job=$SLURM_JOB_ID cvd=${{CUDA_VISIBLE_DEVICES-unset}} > {output}'"

rule report:
    input: "b.txt"
    output: "c.txt"
    shell: "cat {input} > {output}; echo job=$SLURM_JOB_ID >> {output}"

rule flaky:  # too little memory on attempt 1: fails; the retry asks for twice as much and passes
    output: "flaky.txt"
    resources:
        mem_mb=lambda wc, attempt: 200 * attempt,
    shell: "test {resources.mem_mb} -ge 400 && echo mem={resources.mem_mb} > {output}"

rule boom:
    output: "boom.txt"
    shell: "echo failing on purpose >&2; exit 1"

rule after_boom:
    input: "boom.txt"
    output: "after_boom.txt"
    shell: "touch {output}"
"""


@pytest.fixture(scope="module")
def mech_run(slurm_cluster, tmp_path_factory):
    work = _copy_repo(tmp_path_factory.mktemp("slurm_mech"))
    (work / "mech.smk").write_text(MECH_SNAKEFILE)
    env = _env(STATEPOST_SLURM_PARTITION=slurm_cluster["partition"])
    rc, log, wall = _snakemake(
        work, ["-s", "mech.smk", "--profile", "profiles/slurm-ci", "--retries", "1", "--keep-going"], MECH_TIMEOUT_S, env
    )
    print(f"\n[slurm] mechanics workflow: rc={rc}, {wall:.1f} s")
    assert rc != 137, f"snakemake killed after {MECH_TIMEOUT_S} s:\n{log[-5000:]}"
    return {"work": work, "rc": rc, "log": log, "jobs": _slurm_jobs(work)}


def test_mech_failing_slurm_job_fails_the_workflow(mech_run):
    assert mech_run["rc"] != 0, "snakemake succeeded although rule boom exits 1"
    boom = mech_run["jobs"].get("boom", [])
    assert len(boom) == 2, boom  # attempt 1 and the retry
    assert all(j["state"] == "FAILED" and j["exit"] == "1:0" for j in boom), boom
    assert "after_boom" not in mech_run["jobs"]
    assert not (mech_run["work"] / "after_boom.txt").exists()
    assert "Error in rule boom" in mech_run["log"]


def test_mech_every_other_job_completed_as_slurm_job(mech_run):
    jobs, log = mech_run["jobs"], mech_run["log"]
    for rule in ("prep", "train", "report"):
        assert [j["state"] for j in jobs.get(rule, [])] == ["COMPLETED"], (rule, jobs.get(rule), log[-3000:])
        assert jobs[rule][0]["exit"] == "0:0"
    # snakemake submitted exactly the jobs SLURM ran (one log per submission), every non-local rule
    assert {r: len(v) for r, v in jobs.items()} == dict(_submissions(log)), (jobs, _submissions(log))
    assert _remote_rules(log) == set(jobs) == {"prep", "train", "report", "flaky", "boom"}, _remote_rules(log)
    # each output was written inside its own SLURM job
    work = mech_run["work"]
    assert (work / "a.txt").read_text().strip() == f"job={jobs['prep'][0]['id']}"
    assert (work / "c.txt").read_text().split()[-1] == f"job={jobs['report'][0]['id']}"
    # the workflow profile (profiles/default) and the --profile coexist; the SLURM profile's keys hold
    assert "--latency-wait 5" in log


def test_mech_gpu_job_gets_gres_and_keeps_slurm_devices(mech_run):
    train = mech_run["jobs"]["train"][0]
    assert "gres/gpu=1" in train["tres"], train
    assert "cpu=2" in train["tres"].split(","), train
    b = (mech_run["work"] / "b.txt").read_text().split()
    assert b == [f"job={train['id']}", "cvd=unset"], b  # inside SLURM: statepost.gpus did not assign
    for rule in ("prep", "report"):
        assert "gres/gpu" not in mech_run["jobs"][rule][0]["tres"], mech_run["jobs"][rule]


def test_mech_retry_grows_memory_with_attempt(mech_run):
    flaky = mech_run["jobs"]["flaky"]
    assert [j["state"] for j in flaky] == ["FAILED", "COMPLETED"], flaky
    mems = [re.search(r"mem=(\d+)M", j["tres"]).group(1) for j in flaky]
    assert mems == ["200", "400"], flaky
    assert (mech_run["work"] / "flaky.txt").read_text().strip() == "mem=400"


@pytest.mark.timeout(TOY_TIMEOUT_S + 300)
def test_toy_dag_on_slurm(slurm_cluster, toy_run, tmp_path):
    if not (REPO / "Snakefile").exists() or not (REPO / "config" / "toy.yaml").exists():
        pytest.skip("the workflow (Snakefile, config/toy.yaml) is not in the repository yet")
    work = _copy_repo(tmp_path / "repo")
    env = _env()  # no partition set: the plugin picks the cluster's default partition
    rc, log, wall = _snakemake(
        work, ["--profile", "profiles/slurm-ci", "--configfile", "config/toy.yaml"], TOY_TIMEOUT_S, env
    )
    print(f"\n[slurm] toy DAG on SLURM: rc={rc}, {wall:.1f} s")
    assert rc == 0, f"snakemake failed (rc={rc}):\n{log[-6000:]}"
    jobs = _slurm_jobs(work)
    assert jobs, "no job was sent to SLURM"
    assert {r: len(v) for r, v in jobs.items()} == dict(_submissions(log)), (jobs, _submissions(log))
    assert _remote_rules(log) == set(jobs), (_remote_rules(log), set(jobs))
    bad = {r: v for r, v in jobs.items() if any(j["state"] != "COMPLETED" or j["exit"] != "0:0" for j in v)}
    assert not bad, bad
    assert (work / "results" / "toy" / "tables" / "claims.md").exists()
    # a finished run has nothing left to do
    p = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm-ci", "--configfile", "config/toy.yaml"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr, p.stdout + p.stderr
    _assert_same_results(work, toy_run[0])


def _assert_same_results(a: Path, b: Path):
    """Determinism: two runs of the toy DAG (here: SLURM and local) give identical weights and scores."""
    from statepost import config as cfglib
    from statepost.io import sha256_file

    toy = cfglib.load(REPO / "config" / "toy.yaml")
    n_models = len(cfglib.model_names(toy)) + len(cfglib.trajectory_models(toy))  # 5 + 3 along sft_stress
    weights = sorted(p.relative_to(a) for p in (a / "results" / "toy" / "models").rglob("model.safetensors"))
    assert len(weights) == n_models, weights
    for rel in weights:
        assert sha256_file(a / rel) == sha256_file(b / rel), f"{rel} differs between the two runs"
    scores = sorted(p.relative_to(a) for p in (a / "results" / "toy" / "scores").rglob("*.json"))
    assert len(scores) == n_models * len(toy["benchmarks"]), scores
    for rel in scores:
        x, y = (json.loads((root / rel).read_text()) for root in (a, b))
        for key in ("metrics", "value", "stderr", "n"):
            assert x[key] == y[key], f"{rel}: {key} differs: {x[key]} != {y[key]}"
