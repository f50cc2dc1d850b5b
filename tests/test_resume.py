"""Resumable training: a killed run resumes from its newest complete checkpoint and ends bit-identical."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from _train_toy import make_world, run_cfg, weights
from statepost.train.checkpoint import MARKER
from statepost.train.loop import train

# 20 examples, 4 per step: 5 steps per epoch, so 7 steps cross an epoch boundary after the resume.
STEPS = 7


class Crash(RuntimeError):
    pass


def crash_at(k):
    def hook(step, model):
        if step == k:
            raise Crash(f"simulated kill after step {k}")

    return hook


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n_rows=20)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """An uninterrupted run: final weights and metrics."""
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "out"
    train(cfg(), init_dir=world["init"], out_dir=out, data_dir=world["data_dir"], state_dir=tmp / "state", progress=False)
    return weights(out), [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def cfg(**optim):
    c = run_cfg(max_steps=STEPS, **optim)
    c["checkpoint"] = {"every": 2, "keep": 2}
    return c


def _run(world, tmp, config, hooks=None):
    return train(
        config, init_dir=world["init"], out_dir=tmp / "out", data_dir=world["data_dir"],
        state_dir=tmp / "state", progress=False, hooks=hooks,
    )


def _assert_same(w, ref):
    assert w.keys() == ref.keys()
    for k in ref:
        assert torch.equal(w[k], ref[k]), k


def test_resume_after_kill_is_bitwise_identical(world, reference, tmp_path, caplog):
    ref_w, ref_rows = reference
    with pytest.raises(Crash):
        _run(world, tmp_path, cfg(), hooks={"after_step": crash_at(5)})
    state = tmp_path / "state"
    assert sorted(p.name for p in state.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004"]  # keep = 2
    assert not (tmp_path / "out").exists()
    caplog.set_level(logging.INFO, logger="statepost.train")
    rec = _run(world, tmp_path, cfg())
    assert "resumed from step 4" in caplog.text
    assert rec["resumed_from_step"] == 4 and rec["final_step"] == STEPS
    _assert_same(weights(tmp_path / "out"), ref_w)
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # step 5 once, not twice
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert not state.exists()


def test_incomplete_checkpoint_is_ignored(world, reference, tmp_path, caplog):
    ref_w, _ = reference
    with pytest.raises(Crash):
        _run(world, tmp_path, cfg(), hooks={"after_step": crash_at(5)})
    state = tmp_path / "state"
    (state / "ckpt-00000004" / MARKER).unlink()  # killed before the marker was written
    shutil.copytree(state / "ckpt-00000002", state / ".ckpt-00000006.tmp")  # a half-written one
    with open(state / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.')  # a metrics line cut by the kill
    caplog.set_level(logging.INFO, logger="statepost.train")
    _run(world, tmp_path, cfg())
    assert "resumed from step 2" in caplog.text
    _assert_same(weights(tmp_path / "out"), ref_w)


def test_changed_config_does_not_resume(world, tmp_path, caplog):
    with pytest.raises(Crash):
        _run(world, tmp_path, cfg(), hooks={"after_step": crash_at(3)})
    caplog.set_level(logging.INFO, logger="statepost.train")
    changed = cfg(lr=1e-3)
    rec = _run(world, tmp_path, changed)
    assert "not resuming: config changed" in caplog.text
    assert "resumed from" not in caplog.text
    assert rec["resumed_from_step"] is None
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert max(r["lr"] for r in rows) == pytest.approx(1e-3)


def test_checkpoint_settings_do_not_block_resume(world, reference, tmp_path, caplog):
    """checkpoint.every / keep and log_every do not change the weights, so they are not in the hash."""
    ref_w, _ = reference
    with pytest.raises(Crash):
        _run(world, tmp_path, cfg(), hooks={"after_step": crash_at(3)})
    other = cfg()
    other["checkpoint"] = {"every": 3, "keep": 1}
    other["log_every"] = 5
    caplog.set_level(logging.INFO, logger="statepost.train")
    _run(world, tmp_path, other)
    assert "resumed from step 2" in caplog.text
    _assert_same(weights(tmp_path / "out"), ref_w)


def test_generator_states_round_trip(tmp_path):
    """python, numpy and torch generators continue exactly after a save / load through files."""
    import random

    import numpy as np

    from statepost.train.checkpoint import _load, rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1), np.random.randn()  # advance, leave a cached gaussian
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(_load(tmp_path / "rng.pt"))  # weights_only load
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def test_state_dir_is_locked_while_in_use(tmp_path):
    from statepost.train.checkpoint import Checkpointer

    class Acc:
        is_main_process = True

    first, second = Checkpointer(tmp_path / "s", Acc()), Checkpointer(tmp_path / "s", Acc())
    first.lock()
    with pytest.raises(RuntimeError, match="in use by another training process"):
        second.lock()
    first.remove_all()
    assert not (tmp_path / "s").exists()
    second.lock()  # free again
    second.unlock()


def test_models_along_training_survive_a_kill(world, tmp_path, caplog):
    """Trajectory models wait in the state dir until the run ends (a workflow engine deletes an incomplete
    job's outputs), so a resumed run still delivers those saved before its checkpoint, bit-identical to an
    uninterrupted run's; a checkpoint whose earlier trajectory models are gone is not resumed from."""
    whole = {k: tmp_path / "whole" / f"step{k}" for k in (1, 3, 6)}
    train(cfg(), init_dir=world["init"], out_dir=tmp_path / "whole" / "out", data_dir=world["data_dir"],
          state_dir=tmp_path / "whole" / "state", progress=False, trajectory=whole)

    def run(tmp, hooks=None):
        steps = {k: tmp / f"step{k}" for k in whole}
        train(cfg(), init_dir=world["init"], out_dir=tmp / "out", data_dir=world["data_dir"], state_dir=tmp / "state",
              progress=False, hooks=hooks, trajectory=steps)
        return steps

    caplog.set_level(logging.INFO, logger="statepost.train")
    for tmp, lose in ((tmp_path / "kept", None), (tmp_path / "lost", "model-00000003")):
        with pytest.raises(Crash):
            run(tmp, hooks={"after_step": crash_at(5)})
        assert not any(p.exists() for p in (tmp / "step1", tmp / "step3", tmp / "out"))
        assert sorted(p.name for p in (tmp / "state").glob("model-*")) == ["model-00000001", "model-00000003"]
        if lose:
            shutil.rmtree(tmp / "state" / lose)
        caplog.clear()
        steps = run(tmp)
        resumed = "resumed from step 4" in caplog.text
        assert resumed == (lose is None)
        assert ("not resuming from ckpt-00000004: the models along training after steps [3]" in caplog.text) == bool(lose)
        for k, path in steps.items():
            _assert_same(weights(path), weights(whole[k]))
        _assert_same(weights(tmp / "out"), weights(tmp_path / "whole" / "out"))
        assert not (tmp / "state").exists()
