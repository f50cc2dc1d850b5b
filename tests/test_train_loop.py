"""The one training loop on a tiny Qwen3: outputs, determinism, accumulation / data-parallel equivalence, NaN."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_toy import make_world, run_cfg, weights
from statepost.io import ConfigError, sha256_file
from statepost.train.loop import TrainingError, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n_rows=48)


def _train(world, tmp, name, cfg=None, **kw):
    out = tmp / name
    rec = train(
        cfg or run_cfg(),
        init_dir=world["init"],
        out_dir=out,
        data_dir=world["data_dir"],
        state_dir=tmp / f"state-{name}",
        progress=False,
        **kw,
    )
    return out, rec


def test_outputs_metrics_and_reload(world, tmp_path):
    from transformers import AutoModelForCausalLM

    captured = {}

    def grab(step, model):
        captured[step] = model

    out, rec = _train(world, tmp_path, "m", hooks={"after_step": grab})
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "run.json", "metrics.jsonl"} <= names
    assert not (tmp_path / "state-m").exists()  # resumable state removed after the final save
    assert not list(tmp_path.glob(".m*"))  # no temporary dirs left

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "padding_waste", "time_s", "nll"):
            assert isinstance(r[key], float), key
        assert 0.0 <= r["padding_waste"] < 1.0 and r["tokens_per_s"] > 0 and r["loss"] == pytest.approx(r["nll"])
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == pytest.approx(3e-3)  # 2 warmup steps then peak
    assert rows[-1]["loss"] < rows[0]["loss"]

    run = json.loads((out / "run.json").read_text())
    assert run["final_step"] == 6 and run["seed"] == 0 and run["config"]["optim"]["lr"] == 3e-3
    assert run["inputs"]["init"]["model.safetensors"] == sha256_file(world["init"] / "model.safetensors")
    assert run["inputs"]["data"] == {"gsm8k/train.jsonl": sha256_file(world["data_dir"] / "gsm8k" / "train.jsonl")}
    assert run["env"]["versions"]["torch"] and run["wall_time_s"] > 0 and run["resumed_from_step"] is None
    assert run["files"]["model.safetensors"] == sha256_file(out / "model.safetensors")

    # the saved model reloads (safetensors, no remote code) with identical logits
    reloaded = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True, trust_remote_code=False)
    ids = torch.tensor([world["tokenizer"]("Question: Tom has 3 apples\nAnswer:")["input_ids"]])
    trained = captured[6].eval()
    with torch.no_grad():
        assert torch.equal(trained(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits)
    assert reloaded.config.use_cache is not False


def test_same_seed_same_weights_other_seed_differs(world, tmp_path):
    a, _ = _train(world, tmp_path, "a")
    b, _ = _train(world, tmp_path, "b")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = run_cfg()
    cfg["seed"] = 1
    c, _ = _train(world, tmp_path, "c", cfg)
    wc = weights(c)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_a_trajectory_saves_models_along_training_and_changes_no_weight(world, tmp_path):
    """trajectory {step: dir}: after those steps the model is written as the final one is (loadable, its run.json
    and the metrics so far); the run's own model is byte-identical to a run without it, with and without
    gradient checkpointing (switched off to save, back on to go on training)."""
    from transformers import AutoModelForCausalLM

    for gc in (False, True):
        cfg = run_cfg(gradient_checkpointing=gc)
        plain, _ = _train(world, tmp_path, f"plain{gc}", cfg)
        steps = {2: tmp_path / f"step2-{gc}", 5: tmp_path / f"step5-{gc}"}
        out, rec = _train(world, tmp_path, f"traj{gc}", cfg, trajectory=steps)
        assert sha256_file(out / "model.safetensors") == sha256_file(plain / "model.safetensors")
        for step, path in steps.items():
            run = json.loads((path / "run.json").read_text())
            assert run["final_step"] == step and run["total_steps"] == rec["total_steps"] == 6
            assert run["files"]["model.safetensors"] == sha256_file(path / "model.safetensors")
            lines = (path / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(line)["step"] for line in lines] == list(range(1, step + 1))
            AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        assert sha256_file(steps[2] / "model.safetensors") != sha256_file(steps[5] / "model.safetensors")
    with pytest.raises(ConfigError, match=r"runs\.\w+\.trajectory: steps \[6\], but the run's steps are 1 to 6"):
        _train(world, tmp_path, "last", run_cfg(), trajectory={6: tmp_path / "step6"})


def test_grad_accum_matches_larger_batch(world, tmp_path):
    """batch 4 x accum 1 == batch 2 x accum 2 == batch 1 x accum 4 (same examples per step, token-weighted)."""
    runs = {}
    for bs, acc in ((4, 1), (2, 2), (1, 4)):
        out, _ = _train(world, tmp_path, f"b{bs}", run_cfg(batch_size=bs, grad_accum=acc, max_steps=4))
        runs[bs] = weights(out)
    for bs in (2, 1):
        for k in runs[4]:
            torch.testing.assert_close(runs[bs][k], runs[4][k], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_update(world, tmp_path):
    plain, _ = _train(world, tmp_path, "plain", run_cfg(max_steps=2))
    ckpt, _ = _train(world, tmp_path, "gc", run_cfg(max_steps=2, gradient_checkpointing=True))
    w1, w2 = weights(plain), weights(ckpt)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_naming_step_and_writes_no_model(world, tmp_path):
    def poison(step, model):
        if step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"at step 3\b"):
        _train(world, tmp_path, "nan", hooks={"after_step": poison})
    assert not (tmp_path / "nan").exists()
    assert not list(tmp_path.glob(".nan*"))
    # the live metrics of the steps before the failure stay in the state dir for diagnosis
    rows = (tmp_path / "state-nan" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]


def test_cli_help_is_fast_and_bad_json_is_an_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "scripts/train.py", "--help"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0 and "--state-dir" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['x','--help']\nimport runpy\ntry:\n"
         "    runpy.run_path('scripts/train.py', run_name='__main__')\nexcept SystemExit: pass\n"
         "print('torch' in sys.modules, 'transformers' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
    )
    assert probe.stdout.strip().endswith("False False"), probe.stdout + probe.stderr
    bad = subprocess.run(
        [sys.executable, "scripts/train.py", "--run-json", "{not json", "--init", "x", "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_data_parallel_matches_single_process(world, tmp_path):
    """accelerate launch, 2 CPU processes (gloo), batch 2 per process == 1 process, batch 4.

    `accelerate launch --cpu` always uses its single-process launcher (accelerate 1.15), so the
    torchrun launcher is selected with --multi_gpu; without CUDA the loop's Accelerator(cpu=True)
    makes that MULTI_CPU data parallel over gloo.
    """
    single, _ = _train(world, tmp_path, "single", run_cfg(batch_size=4, max_steps=4))
    cfg = run_cfg(batch_size=2, max_steps=4)
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "scripts/train.py", "--run-json", f"@{tmp_path / 'run.json'}", "--init", str(world["init"]),
        "--data-dir", str(world["data_dir"]), "--out", str(tmp_path / "ddp"),
        "--state-dir", str(tmp_path / "state-ddp"), "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["accelerate"]["num_processes"] == 2
    w1, w2 = weights(single), weights(tmp_path / "ddp")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    m1 = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in m2] == pytest.approx([r["loss"] for r in m1], rel=1e-4)
    assert [r["tokens"] for r in m2] == [r["tokens"] for r in m1]


def _learner_cfg(states=None, signal=None, **optim):
    cfg = run_cfg(**{"max_steps": 2, "batch_size": 2, **optim})
    cfg["states"] = {"source": "learner", "data": "gsm8k", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8,
                     "samples_per_prompt": 2, **(states or {})}
    cfg["signal"] = signal or {"type": "nll"}
    return cfg


def test_a_run_that_never_updates_fails_instead_of_writing_its_init(world, tmp_path):
    # rejection sampling whose filter keeps nothing (the untrained toy answers nothing right): every step is empty,
    # the weights never move
    cfg = _learner_cfg(states={"filter": {"reward": "gsm8k", "min": 1.0}})
    with pytest.raises(TrainingError, match=r"gradient norm was 0 at every one of 2 steps.*no model written"):
        _train(world, tmp_path, "still", cfg=cfg)
    assert not (tmp_path / "still").exists()


def test_reference_model_only_with_a_kl_penalty_and_in_the_policys_precision(world, tmp_path):
    from statepost.train.registry import SIGNALS

    assert SIGNALS["reward"].models({"kl_coef": 0.0}) == () and SIGNALS["reward"].models({"kl_coef": 0.1}) == (
        "reference",
    )
    # bf16 autocast with fp32 master weights: a reference loaded in bf16 gave kl_to_init != 0 before any update.
    # A process holds one accelerate precision, so each run has its own; the rewards are made to differ
    # within every group (a random tiny model earns none), so that the signal runs at step 1.
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, torch\n"
        "from statepost.train import signals\n"
        "from statepost.train.loop import train\n"
        "signals.RewardSignal.rewards = lambda self, b: (torch.arange(len(b.answers)).float() % 2,) * 2\n"
        "cfg, init, data, out = json.loads(sys.argv[1]), *sys.argv[2:]\n"
        "train(cfg, init_dir=init, data_dir=data, out_dir=out, state_dir=out + '.state', progress=False)\n"
    )
    signal = {"type": "reward", "reward": "gsm8k", "kl_coef": 0.1}
    for name, cfg in {"rl": _learner_cfg(signal=signal, max_steps=1, precision="bf16"),
                      "rl0": _learner_cfg(signal={**signal, "kl_coef": 0.0}, max_steps=1)}.items():
        proc = subprocess.run(
            [sys.executable, str(script), json.dumps(cfg), str(world["init"]), str(world["data_dir"]),
             str(tmp_path / name)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    def first_step(name):
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])

    assert first_step("rl")["kl_to_init"] == 0.0
    assert "kl_to_init" not in first_step("rl0") and "reward" in first_step("rl0")
