"""Checkpoints check themselves: a corrupted checkpoint is named, set aside, and the next older one is used
(or the run starts fresh); the final weights still equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from test_resume import Crash, STEPS, _assert_same, _run, cfg, crash_at, reference, world  # noqa: F401

from _train_toy import weights
from statepost.train.checkpoint import MANIFEST, STATE


@pytest.fixture(scope="module")
def crashed(world, tmp_path_factory):  # noqa: F811
    """A run killed after step 5: its state dir holds ckpt-00000002 and ckpt-00000004 (copied per test)."""
    tmp = tmp_path_factory.mktemp("crashed")
    with pytest.raises(Crash):
        _run(world, tmp, cfg(), hooks={"after_step": crash_at(5)})
    state = tmp / "state"
    assert sorted(p.name for p in state.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004"]
    return state


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path):
    """One bit flipped in the last tensor's data: the file still loads, with wrong weights."""
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated_weights": lambda ckpt: truncate(ckpt / "model.safetensors"),
    "flipped_weight_byte": lambda ckpt: flip_byte(ckpt / "model.safetensors"),
    "missing_optimizer": lambda ckpt: (ckpt / "optimizer.pt").unlink(),
    "missing_manifest": lambda ckpt: (ckpt / MANIFEST).unlink(),
}


def _resume(world, crashed, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="statepost.train")
    rec = _run(world, tmp_path, cfg())
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return rec


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(world, reference, crashed, tmp_path, caplog,  # noqa: F811
                                                               corruption):
    shutil.copytree(crashed, tmp_path / "state")
    CORRUPTIONS[corruption](tmp_path / "state" / "ckpt-00000004")
    rec = _resume(world, crashed, tmp_path, caplog)
    assert "checkpoint " + str(tmp_path / "state" / "ckpt-00000004") + " fails its check" in caplog.text
    assert "set aside as ckpt-00000004.bad" in caplog.text
    assert "resumed from step 2" in caplog.text and rec["resumed_from_step"] == 2
    _assert_same(weights(tmp_path / "out"), reference[0])
    # the bad checkpoint is kept for inspection (so the state dir stays, with a warning naming it)
    assert (tmp_path / "state" / "ckpt-00000004.bad").is_dir()
    assert not (tmp_path / "state" / "ckpt-00000002").exists()


def test_no_good_checkpoint_starts_fresh(world, reference, crashed, tmp_path, caplog):  # noqa: F811
    shutil.copytree(crashed, tmp_path / "state")
    flip_byte(tmp_path / "state" / "ckpt-00000004" / "model.safetensors")
    truncate(tmp_path / "state" / "ckpt-00000002" / "optimizer.pt")
    rec = _resume(world, crashed, tmp_path, caplog)
    for step in ("00000004", "00000002"):
        assert f"ckpt-{step} fails its check" in caplog.text
    assert "optimizer.pt has" in caplog.text  # the message names the file
    assert "resumed from" not in caplog.text and rec["resumed_from_step"] is None
    _assert_same(weights(tmp_path / "out"), reference[0])


def test_check_names_the_file(crashed, tmp_path):
    from statepost.train.checkpoint import integrity_problem as check

    ckpt = shutil.copytree(crashed / "ckpt-00000004", tmp_path / "ckpt-00000004")
    assert check(ckpt, 4) is None
    assert "does not record step 6" in check(ckpt, 6)
    flip_byte(ckpt / "model.safetensors")
    assert check(ckpt, 4).startswith(f"{ckpt / 'model.safetensors'} has sha256")
    truncate(ckpt / "rng-rank0.pt")
    assert check(ckpt, 4).startswith(f"{ckpt / 'rng-rank0.pt'} has ")  # sizes are checked before hashes
    fresh = shutil.copytree(crashed / "ckpt-00000002", tmp_path / "ckpt-00000002")
    (fresh / STATE).unlink()
    assert check(fresh, 2) == f"{fresh / STATE} missing"


def test_stale_temporaries_are_cleaned_at_start(world, reference, crashed, tmp_path, caplog):  # noqa: F811
    """What kills leave: a half-written checkpoint, a metrics temp file, and beside the model folder an
    atomic_dir temp and .old (a kill during the final save) are gone after the next run."""
    state = shutil.copytree(crashed, tmp_path / "state")
    shutil.copytree(state / "ckpt-00000002", state / ".ckpt-00000006.tmp")
    (state / ".metrics.jsonl.ab12cd34.tmp").write_text("{}")
    out = tmp_path / "out"
    for stale in (".out.0f1e2d3c.tmp", ".out.old"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "model.safetensors").write_bytes(b"partial")
    _resume(world, crashed, tmp_path, caplog)
    assert "resumed from step 4" in caplog.text
    _assert_same(weights(out), reference[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # state dir removed, no leftovers


def test_checkpoint_of_the_format_before_manifests_is_not_set_aside(tmp_path, caplog):
    """A format-1 checkpoint (no manifest) is an older layout, not a corrupt one: not resumed, not set aside."""
    from statepost.train.checkpoint import Checkpointer

    class Acc:
        is_main_process = True

    old = tmp_path / "ckpt-00000004"
    old.mkdir(parents=True)
    (old / STATE).write_text(json.dumps({"step": 4, "format_version": 1}))
    caplog.set_level(logging.INFO, logger="statepost.train")
    assert Checkpointer(tmp_path, Acc()).find_resumable({"config_hash": "c", "inputs_hash": "i", "num_processes": 1}) is None
    assert "not resuming: checkpoint format 1 != 2" in caplog.text and "set aside" not in caplog.text
    assert old.is_dir()
