"""A training job SIGKILLed mid-run and rerun through Snakemake resumes from its newest checkpoint
and ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time

import psutil
import pytest
from safetensors.torch import load_file

from conftest import BIN, snakemake, workflow_env

pytestmark = pytest.mark.slow

RUN = "sft_stress"  # toy: 200 steps, a resumable state every 50, models along training at 50, 100, 150
TARGET = f"results/toy/models/{RUN}/seed0"
ALONG = [f"results/toy/models/{RUN}/step{k}/seed0" for k in (50, 100, 150)]


def complete_checkpoints(state_dir):
    return sorted(p.name for p in state_dir.glob("ckpt-*") if (p / "trainer_state.json").exists())


def test_sigkilled_training_resumes_to_identical_weights(toy_run, tmp_path):
    work, _ = toy_run
    reference = {m: load_file(str(work / m / "model.safetensors")) for m in [TARGET, *ALONG]}
    crash = tmp_path / "crash"
    shutil.copytree(work, crash, symlinks=True)

    cmd = [str(BIN / "snakemake"), "--cores", "2", TARGET, "--forcerun", RUN, "--configfile", "config/toy.yaml"]
    proc = subprocess.Popen(cmd, cwd=crash, env=workflow_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state_dir = crash / "results" / "toy" / ".state" / RUN / "seed0"
    deadline = time.monotonic() + 600
    try:
        while len(complete_checkpoints(state_dir)) < 2:
            assert proc.poll() is None, "training finished before two checkpoints were written"
            assert time.monotonic() < deadline, "no two checkpoints within 10 minutes"
            time.sleep(0.2)
    finally:
        tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in tree:  # SIGKILL: no cleanup handler runs, as on a node failure
            try:
                psutil.Process(pid).send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=60)
    kept = complete_checkpoints(state_dir)
    assert kept, "the resumable states must survive the kill"
    assert not any((crash / m / "model.safetensors").exists() for m in [TARGET, *ALONG])  # nothing looks finished

    snakemake(crash, "--unlock", "--configfile", "config/toy.yaml")
    snakemake(crash, TARGET, "--rerun-incomplete", "--configfile", "config/toy.yaml")

    log = (crash / "results" / "toy" / "logs" / "train" / RUN / "seed0.log").read_text()
    resumed = re.search(r"resumed from step (\d+)", log)
    assert resumed, log[-3000:]
    assert int(resumed.group(1)) >= 50 and f"ckpt-{int(resumed.group(1)):08d}" in kept
    assert not state_dir.exists()  # removed once the final model is written
    for m, ref in reference.items():  # the models saved before the resumed checkpoint too (kept in the state dir)
        final = load_file(str(crash / m / "model.safetensors"))
        assert final.keys() == ref.keys()
        for name, tensor in ref.items():
            assert (final[name] == tensor).all(), f"{m}: {name} differs from the uninterrupted run"
