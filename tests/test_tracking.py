"""Experiment tracking: with ``tracking: tensorboard`` a training run writes event files that TensorBoard's
own reader loads, with the loss of every step as in metrics.jsonl; tracking changes no weight, and the
job's log (stderr, not a terminal) holds no progress bar."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _train_toy import make_world, run_cfg
from statepost.io import ConfigError, read_jsonl, sha256_file
from statepost.train.loop import train
from statepost.train.tracking import tracker_names

ROOT = Path(__file__).resolve().parent.parent


def test_tensorboard_events_hold_every_step_and_tracking_changes_no_weight(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    world = make_world(tmp_path / "world", n_rows=24)
    cfg = run_cfg(max_steps=4)
    tracked, tb = tmp_path / "tracked", tmp_path / "tracking"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--run-json", json.dumps(cfg),
         "--init", str(world["init"]), "--data-dir", str(world["data_dir"]), "--out", str(tracked),
         "--state-dir", str(tmp_path / "state-tracked"), "--tracking", "tensorboard", "--tracking-dir", str(tb)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr, "a progress bar reached the log"
    assert "step 4/4 loss" in proc.stderr  # log lines instead of the bar

    events = sorted((tb / "statepost").glob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(tb) for p in tb.rglob("*"))
    acc = EventAccumulator(str(tb / "statepost"))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("loss")}
    want = {row["step"]: row["loss"] for row in read_jsonl(tracked / "metrics.jsonl")}
    assert sorted(logged) == [1, 2, 3, 4] == sorted(want)
    assert logged == pytest.approx(want, rel=1e-6)  # TensorBoard keeps float32
    assert {"lr", "grad_norm", "nll"} <= set(acc.Tags()["scalars"])
    assert not any("tfevents" in f for f in json.loads((tracked / "run.json").read_text())["files"])

    plain = tmp_path / "plain"
    train(cfg, init_dir=world["init"], out_dir=plain, data_dir=world["data_dir"], state_dir=tmp_path / "state-plain",
          progress=False)  # fmt: skip
    assert sha256_file(tracked / "model.safetensors") == sha256_file(plain / "model.safetensors")


def test_tracker_names_and_a_missing_tracker():
    assert tracker_names("none") == [] and tracker_names(None) == []
    assert tracker_names("tensorboard") == ["tensorboard"]
    with pytest.raises(ConfigError, match="config key tracking: unknown tracker 'mlflow'"):
        tracker_names("mlflow")
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="config key tracking: wandb is requested but not installed"):
            tracker_names("tensorboard,wandb")
    else:
        assert tracker_names(["tensorboard", "wandb"]) == ["tensorboard", "wandb"]
