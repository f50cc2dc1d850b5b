"""Shared fixtures. The toy DAG runs once per session; every test that only reads its outputs shares it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def repo_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a clean clone would hold."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def copy_repo(dest: Path) -> Path:
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def workflow_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # rules call `python`: the test's interpreter
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def snakemake(workdir: Path, *args, timeout=3000, check=True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, env=workflow_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "results" / "toy" / "logs").rglob("*.log"))
        )
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a 2-core machine: intra-op threads only add contention (workflow jobs get
    OMP_NUM_THREADS from their rule's threads instead)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """The whole toy DAG, run once in a clean copy of the repository. Yields (workdir, wall seconds)."""
    work = copy_repo(tmp_path_factory.mktemp("toy"))
    t0 = time.perf_counter()
    snakemake(work, "--configfile", "config/toy.yaml")
    wall = time.perf_counter() - t0
    (work / "results" / "toy" / "wall_time_s.txt").write_text(f"{wall:.1f}\n")
    return work, wall
