"""Files a team can share and trust: modes that follow the umask, recovery from a kill inside atomic_dir,
and evaluation that checks the model directory and its output folder before lm-eval runs."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from _train_toy import build_model, build_tokenizer
from statepost import evaluate as ev
from statepost.io import DataError, atomic_dir, atomic_file, move_dir, prepare_output, recover_dir, write_json
from statepost.models import _hash_dir


# -- modes ---------------------------------------------------------------------------------------------
@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_mode_follows_umask(tmp_path, umask):
    with atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    write_json(tmp_path / "sub" / "b.json", {"a": 1})
    for f in (tmp_path / "a.txt", tmp_path / "sub" / "b.json"):
        assert mode(f) == 0o666 & ~umask, (f, oct(mode(f)))
    assert mode(tmp_path / "sub") == 0o777 & ~umask


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replacing"])
def test_atomic_dir_mode_follows_umask(tmp_path, umask, replace):
    out = tmp_path / "model"
    if replace:
        with atomic_dir(out) as tmp:
            (tmp / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "w.txt").write_text("w")
        write_json(tmp / "run.json", {})
    assert mode(out) == 0o777 & ~umask
    assert mode(out / "w.txt") == mode(out / "run.json") == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .tmp, .new or .old left
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "w.txt"]


# -- a kill inside atomic_dir ----------------------------------------------------------------------------
def _folder(path, text):
    path.mkdir()
    (path / "model.safetensors").write_text(text)
    return path


def test_killed_between_moving_old_aside_and_new_in_rolls_forward(tmp_path):
    """The state a kill leaves after ``path -> .path.old`` and before ``.path.new -> path``: no model folder."""
    out = tmp_path / "model"
    _folder(tmp_path / ".model.new", "new")  # complete (renamed from the temp only after fsync)
    _folder(tmp_path / ".model.old", "old")
    _folder(tmp_path / ".model.a1b2c3d4.tmp", "half")  # another attempt's temp
    (tmp_path / ".model.json.zz99yy88.tmp").write_text("not ours: another output's temp")
    prepare_output(out)
    assert (out / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.json.zz99yy88.tmp", "model"]


def test_killed_with_only_the_old_folder_rolls_back(tmp_path):
    """What the former atomic_dir left (``path`` moved to ``.old``, killed before the temp was renamed in)."""
    out = tmp_path / "model"
    _folder(tmp_path / ".model.old", "old")
    _folder(tmp_path / ".model.q7w8e9r0.tmp", "half")
    recover_dir(out)
    assert (out / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_stale_siblings_of_an_existing_folder_are_removed(tmp_path):
    out = _folder(tmp_path / "model", "current")
    _folder(tmp_path / ".model.old", "old")
    _folder(tmp_path / ".model.new", "unswapped")
    (tmp_path / ".model.0a0b0c0d.tmp").write_text("")
    with atomic_dir(out) as tmp:  # the next save starts from a clean slate too
        (tmp / "model.safetensors").write_text("next")
    assert (out / "model.safetensors").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failed_block_leaves_the_old_folder(tmp_path):
    out = _folder(tmp_path / "model", "current")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("killed")
    assert (out / "model.safetensors").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("across_filesystems", [False, True])
def test_move_dir_replaces_the_folder_whole(tmp_path, monkeypatch, across_filesystems):
    """A finished folder moved onto an output (a model along training, out of the state dir): the old one and a
    killed save's leftovers go; across filesystems (rename refused with EXDEV) by a copy beside it first."""
    (tmp_path / "state").mkdir(), (tmp_path / "models").mkdir()
    src = _folder(tmp_path / "state" / "model-00000050", "step 50")
    out = _folder(tmp_path / "models" / "step50", "stale")
    (tmp_path / "models" / ".step50.a1b2c3d4.tmp").mkdir()
    if across_filesystems:
        real = os.replace

        def replace(a, b):
            if Path(a) == src:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(a, b)

        monkeypatch.setattr(os, "replace", replace)
    move_dir(src, out)
    assert (out / "model.safetensors").read_text() == "step 50" and not src.exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["step50"]


# -- evaluation checks before compute ---------------------------------------------------------------------
class LmEvalRan(AssertionError):
    pass


@pytest.fixture
def no_lm_eval(monkeypatch):
    """lm-eval's model creation and evaluation fail loudly: a check must stop the job before them."""
    import lm_eval
    import lm_eval.api.registry

    def ran(*a, **k):
        raise LmEvalRan("lm-eval ran")

    monkeypatch.setattr(lm_eval, "simple_evaluate", ran)
    monkeypatch.setattr(lm_eval.api.registry, "get_model", ran)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model folder with run.json recording each file's sha256, as every workflow model has."""
    out = tmp_path_factory.mktemp("m") / "model"
    tok = build_tokenizer(["Question: 1+1? Answer: 2"] * 4)
    build_model(len(tok), layers=1, heads=2, kv_heads=1, eos_id=tok.eos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    write_json(out / "run.json", {"files": _hash_dir(out)})
    return out


def _evaluate(model, out, data=None):
    return ev.evaluate(model, "gsm8k", data or out.parent / "data", {"num_fewshot": 0, "limit": 1, "batch_size": 1}, out,
                       device="cpu")


def test_evaluate_refuses_truncated_weights(model_dir, tmp_path, no_lm_eval):
    bad = tmp_path / "model"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{weights}: sha256 .* does not match"):
        _evaluate(bad, tmp_path / "scores" / "gsm8k.json")
    assert not (tmp_path / "scores").exists()


def test_evaluate_refuses_changed_config(model_dir, tmp_path, no_lm_eval):
    bad = tmp_path / "model"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{bad / 'config.json'}: sha256 .* does not match"):
        _evaluate(bad, tmp_path / "scores" / "gsm8k.json")


def test_evaluate_refuses_an_unwritable_output_folder(model_dir, tmp_path, no_lm_eval):
    (tmp_path / "scores").write_text("a file where the scores folder should be")
    with pytest.raises(OSError, match=rf"{tmp_path / 'scores' / 'base'}: cannot write gsm8k.json there"):
        _evaluate(model_dir, tmp_path / "scores" / "base" / "gsm8k.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_evaluate_refuses_a_read_only_output_folder(model_dir, tmp_path, no_lm_eval):
    scores = tmp_path / "scores"
    scores.mkdir()
    scores.chmod(0o555)
    try:
        with pytest.raises(OSError, match=rf"{scores}: cannot write gsm8k.json there"):
            _evaluate(model_dir, scores / "gsm8k.json")
    finally:
        scores.chmod(0o755)


def test_evaluate_cleans_a_killed_jobs_leftovers_before_lm_eval(model_dir, tmp_path, monkeypatch):
    """A killed evaluation leaves its task folder and temporary score files beside the outputs; the next
    one removes them before lm-eval runs, and its own task folder when it is done."""
    import lm_eval

    from test_evaluate import make_data

    data = make_data(tmp_path)
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / ".gsm8k.json.work0" / "tasks").mkdir(parents=True)
    (scores / ".gsm8k.json.work0" / "tasks" / "stale.yaml").write_text("task: stale")
    (scores / ".gsm8k.json.k3j4h5g6.tmp").write_text("{")
    (scores / ".gsm8k.samples.jsonl.p0o9i8u7.tmp").write_text("{")
    seen = {}

    def spy(*a, **k):
        seen["left"] = sorted(p.relative_to(scores).as_posix() for p in scores.rglob("*") if p.is_file())
        raise LmEvalRan("stop here")

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    with pytest.raises(LmEvalRan):
        _evaluate(model_dir, scores / "gsm8k.json", data)
    assert seen["left"] and not [f for f in seen["left"] if "stale" in f or f.endswith(".tmp")]
    assert ".gsm8k.json.work0/tasks/statepost_gsm8k.yaml" in seen["left"]  # its own task folder, beside the output
    assert list(scores.iterdir()) == []  # removed afterwards


# -- corrupted data files: every consumer checks what it reads, naming the file (and line) -------------------------
def _toy_data(root):
    """results/toy/data/gsm8k as the data rule writes it: train.jsonl, test.jsonl and manifest.json with their sha256."""
    from statepost.data import write_toy

    out = root / "data" / "gsm8k"
    write_toy("gsm8k", {"seed": 1, "splits": ["train", "test"], "rows": {"train": 20, "test": 5}}, out)
    return out


def _edit_line(path, lineno, edit):
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


def _drop_manifest(path):
    (path.parent / "manifest.json").unlink()


def _manifest_without_split(path):
    m = json.loads((path.parent / "manifest.json").read_text())
    del m["outputs"][path.stem]
    (path.parent / "manifest.json").write_text(json.dumps(m))


def _truncate_last_line(path):
    data = path.read_bytes().rstrip(b"\n")
    path.write_bytes(data[: len(data) - 25])


# (case id, corruption of the split file, regex the error must match after the file's path)
DATA_CORRUPTIONS = {
    "bad UTF-8 byte (no manifest)": (lambda p: (_drop_manifest(p), _edit_line(p, 3, lambda b: b.replace(b"a", b"\xff", 1))),
                                     r":3: not UTF-8 \(byte 0xff at column \d+\)"),
    "truncated JSONL (no manifest)": (lambda p: (_drop_manifest(p), _truncate_last_line(p)), r":\d+: json: not valid JSON"),
    "a row changed after the data rule": (lambda p: _edit_line(p, 2, lambda b: b.replace(b"?", b"??", 1)),
                                          r": sha256 [0-9a-f]{64} does not match [0-9a-f]{64} recorded in .*manifest\.json"),
    "truncated JSONL (with manifest)": (_truncate_last_line, r": sha256 [0-9a-f]{64} does not match"),
    "the manifest lacks the split": (_manifest_without_split, r": .*manifest\.json records no sha256 for split"),
    "answer without its #### line (no manifest)": (lambda p: (_drop_manifest(p), _edit_line(p, 4, lambda b: b.replace(b"####", b"=>"))),
                                                   r":4: answer: last line must be '#### <number>'"),
    "a row that is a list (no manifest)": (lambda p: (_drop_manifest(p), _edit_line(p, 1, lambda b: b"[1, 2]")),
                                           r":1: row: expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(DATA_CORRUPTIONS))
def test_training_refuses_corrupt_data_before_loading_a_model(tmp_path, case):
    """scripts/train.py's loop reads the data first: the init folder does not even exist, so an error about the data
    (and not about the model) shows the file was checked before any model was loaded."""
    import re

    from statepost.io import DataError
    from statepost.train.loop import train

    corrupt, pattern = DATA_CORRUPTIONS[case]
    path = _toy_data(tmp_path) / "train.jsonl"
    corrupt(path)
    run = {"init": "base", "states": "dataset", "signal": "nll", "optim": {"max_steps": 1, "batch_size": 2},
           "name": "sft", "seed": 0}
    with pytest.raises(DataError) as err:
        train(run, init_dir=tmp_path / "no-model-here", out_dir=tmp_path / "out", data_dir=tmp_path / "data",
              progress=False)
    assert re.match(re.escape(str(path)) + pattern, str(err.value)), str(err.value)
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_data_changed_after_the_data_rule(model_dir, tmp_path, no_lm_eval):
    path = _toy_data(tmp_path) / "test.jsonl"
    _edit_line(path, 1, lambda b: b.replace(b"?", b"!", 1))
    with pytest.raises(DataError, match=rf"{path}: sha256 [0-9a-f]{{64}} does not match"):
        _evaluate(model_dir, tmp_path / "scores" / "gsm8k.json", tmp_path / "data")


def test_evaluate_names_a_byte_that_is_not_utf8(model_dir, tmp_path, no_lm_eval):
    path = _toy_data(tmp_path) / "test.jsonl"
    _drop_manifest(path)
    _edit_line(path, 2, lambda b: b.replace(b"a", b"\xc3(", 1))
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 \(byte 0xc3"):
        _evaluate(model_dir, tmp_path / "scores" / "gsm8k.json", tmp_path / "data")


def _flipped_copy(model_dir, dest):
    """A copy of the model folder with one bit changed in its weights: same size, only the sha256 can tell."""
    dest.mkdir()
    for f in model_dir.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    return weights


def test_evaluate_refuses_a_flipped_weight_byte(model_dir, tmp_path, no_lm_eval):
    weights = _flipped_copy(model_dir, tmp_path / "model")
    with pytest.raises(ValueError, match=rf"{weights}: sha256 .* does not match"):
        _evaluate(weights.parent, tmp_path / "scores" / "gsm8k.json")


def test_training_refuses_an_init_model_with_a_flipped_weight_byte(model_dir, tmp_path):
    from statepost.train.loop import train

    weights = _flipped_copy(model_dir, tmp_path / "model")
    _toy_data(tmp_path)
    run = {"init": "base", "states": "dataset", "signal": "nll", "optim": {"max_steps": 1, "batch_size": 2},
           "name": "sft", "seed": 0}
    with pytest.raises(ValueError, match=rf"{weights}: sha256 .* does not match"):
        train(run, init_dir=weights.parent, out_dir=tmp_path / "out", data_dir=tmp_path / "data", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_rerun_keeps_every_attempts_log(tmp_path):
    """Snakemake deletes a job's log when the job starts again; each attempt also goes to {log}.attempts, which a
    rerun (a retry, the next Snakemake after a kill) never wipes."""
    from conftest import copy_repo, snakemake

    work = copy_repo(tmp_path / "repo")
    for _ in range(2):
        snakemake(work, "--configfile", "config/toy.yaml", "--forcerun", "data_truthfulqa_mc2", "--",
                  "results/toy/data/truthfulqa_mc2/manifest.json")
    log = work / "results" / "toy" / "logs" / "data" / "truthfulqa_mc2.log"
    attempts = (log.parent / "truthfulqa_mc2.log.attempts").read_text()
    assert attempts.count("===== attempt started ") == 2, attempts
    rows = yaml.safe_load((work / "config" / "toy.yaml").read_text())["benchmarks"]["truthfulqa_mc2"]["rows"]
    done = f"truthfulqa_mc2/validation: {rows['validation']} rows"
    assert attempts.count(done) == 2, attempts  # each attempt's own output
    assert log.read_text().count("attempt started") == 1 and done in log.read_text()
