"""The training loop under FSDP2: 2 CPU processes (gloo) launched with profiles/accelerate/fsdp.yaml.

accelerate builds FSDP only on an accelerator, so the launches go through tests/_fsdp_cpu.py, which turns
accelerate's CPU state into FSDP right after the Accelerator is made; the rest (accelerate's FSDP2
prepare, torch's fully_shard over a CPU mesh, the gathering of the shards, the loop) runs as on GPUs.
An SFT run (with gradient accumulation) killed after step 3 resumes from its step-2 checkpoint and
ends with the weights of a 1-process run of the same global batch; an on-policy distillation run
(learner sampling on the sharded policy, generations of different lengths on the two processes, a
replicated teacher) ends with the weights of the same run data parallel. Without lockstep decoding
that run hangs: every forward gathers the shards, so the processes must run as many (checked by hand
with `generate` without `synced_gpus`, the sampler's reference).
"""

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
from statepost.io import ConfigError
from statepost.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
FSDP = ROOT / "profiles" / "accelerate" / "fsdp.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n_rows=48)


@pytest.fixture(scope="module")
def sft_one_process(world, tmp_path_factory):
    """SFT in one process, batch 4: the reference for 2 x batch 2, and the distillation teacher."""
    tmp = tmp_path_factory.mktemp("one")
    train(run_cfg(batch_size=4, max_steps=4), init_dir=world["init"], out_dir=tmp / "sft",
          data_dir=world["data_dir"], state_dir=tmp / "state", progress=False)  # fmt: skip
    return tmp / "sft"


@pytest.fixture(scope="module")
def eager(world, tmp_path_factory):
    """The base with an EOS that ends about half the samples within 8 tokens, at different lengths: the
    processes' samplers then finish at different steps (the case lockstep decoding is for)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("eager") / "base"
    model, tok = AutoModelForCausalLM.from_pretrained(world["init"]), world["tokenizer"]
    prompt = tok(world["rows"][0]["question"], return_tensors="pt").input_ids
    with torch.no_grad():  # EOS logit about 5 where the trunk's output is its mean over a prompt
        h = model.model(prompt).last_hidden_state[0].mean(0)
        model.model.embed_tokens.weight[tok.eos_token_id] = 5.0 * h / h.pow(2).sum()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world, tmp: Path, name: str, cfg: dict, *, fsdp: bool = True, init=None, teacher=None, **env):
    """scripts/train.py in 2 CPU processes: FSDP (the profile's accelerate config) or data parallel."""
    (tmp / f"{name}.json").write_text(json.dumps(cfg))
    how = ["--config_file", str(FSDP)] if fsdp else ["--multi_gpu", "--mixed_precision", "no",
                                                     "--dynamo_backend", "no"]  # fmt: skip
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--num_machines", "1",
        "--main_process_port", str(_free_port()), *(["tests/_fsdp_cpu.py"] if fsdp else []), "scripts/train.py",
        "--run-json", f"@{tmp / f'{name}.json'}", "--init", str(init or world["init"]),
        "--data-dir", str(world["data_dir"]),
        "--out", str(tmp / name), "--state-dir", str(tmp / f"state-{name}"), "--no-progress",
        *(["--teacher", str(teacher)] if teacher else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", **env}  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)


def _close(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)  # the same file layout (tied embeddings stored once, under the same name)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def _rows(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sft_under_fsdp_resumes_and_matches_one_process(world, sft_one_process, tmp_path):
    from transformers import AutoModelForCausalLM

    # 2 processes x batch 1 x 2 micro-batches (against 1 x 4), a checkpoint every 2 steps
    cfg = run_cfg(batch_size=1, grad_accum=2, max_steps=4)
    killed = _launch(world, tmp_path, "fsdp", cfg, STATEPOST_TEST_FAIL_AFTER_STEP="3")
    assert killed.returncode != 0 and "stopped after step 3" in killed.stderr, killed.stderr[-3000:]
    assert (tmp_path / "state-fsdp" / "ckpt-00000002" / "model.safetensors").is_file()
    assert not (tmp_path / "fsdp").exists()

    proc = _launch(world, tmp_path, "fsdp", cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from step 2" in proc.stderr
    run = json.loads((tmp_path / "fsdp" / "run.json").read_text())
    assert run["accelerate"]["distributed_type"] == "DistributedType.FSDP" and run["accelerate"]["num_processes"] == 2
    _close(sft_one_process, tmp_path / "fsdp")
    assert [r["loss"] for r in _rows(tmp_path / "fsdp")] == pytest.approx([r["loss"] for r in _rows(sft_one_process)],
                                                                          rel=1e-5)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp")
    torch.testing.assert_close(model.lm_head.weight, model.model.embed_tokens.weight)  # tied, as saved


@pytest.mark.slow
def test_on_policy_distillation_under_fsdp_matches_data_parallel(world, sft_one_process, eager, tmp_path):
    cfg = run_cfg(batch_size=1, max_steps=2)
    cfg["states"] = {"source": "learner", "data": "gsm8k", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8,
                     "samples_per_prompt": 2}  # fmt: skip
    cfg["signal"] = {"type": "teacher_kl", "teacher": "sft"}
    fsdp = _launch(world, tmp_path, "fsdp", cfg, init=eager, teacher=sft_one_process)
    assert fsdp.returncode == 0, fsdp.stderr[-4000:]
    ddp = _launch(world, tmp_path, "ddp", cfg, fsdp=False, init=eager, teacher=sft_one_process)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    rows_fsdp, rows_ddp = _rows(tmp_path / "fsdp"), _rows(tmp_path / "ddp")
    # the same samples (seeded per process and micro-batch) and losses, and a real update
    assert [r["completion_tokens"] for r in rows_fsdp] == [r["completion_tokens"] for r in rows_ddp]
    assert [r["loss"] for r in rows_fsdp] == pytest.approx([r["loss"] for r in rows_ddp], rel=1e-5)
    assert all(r["loss"] > 0 for r in rows_fsdp) and rows_fsdp[-1]["grad_norm"] > 0
    assert any(0 < r["eos_frac"] < 1 for r in rows_fsdp)  # some samples ended early, others ran on
    _close(tmp_path / "ddp", tmp_path / "fsdp")


def test_an_fsdp_config_without_an_accelerator_is_refused(monkeypatch):
    """accelerate would run the launch data parallel (each process the whole model): the loop says so."""
    from accelerate import Accelerator

    from statepost.train.distributed import check_fsdp

    accelerator = Accelerator(cpu=True)
    check_fsdp(accelerator)  # not asked for: nothing to say
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets from an FSDP config
    with pytest.raises(ConfigError, match=r"config key resources\.train\.accelerate_config: FSDP needs GPUs"):
        check_fsdp(accelerator)
