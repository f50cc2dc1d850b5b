#!/usr/bin/env python
"""Throughput of the training loop against a plain PyTorch loop, TRL's trainers and the device's own matmul peak.

    python benchmarks/benchmark.py         # Qwen3-0.6B architecture, random weights (no download); ~6 min on 2 idle CPU cores
    python benchmarks/benchmark.py --tiny  # a tiny Qwen3 and 2 timed steps: seconds (the test runs this)

Builds the Qwen3-0.6B-Base architecture from a ``Qwen3Config`` (random weights) and a word-level
tokenizer over made-up words (token ids only decide the cost), then measures on the current device,
in the training dtype (fp32 on CPU, bf16 autocast on CUDA):

* **peak**: the best of a few ``n x n`` matmuls (``--matmul``, 4096), 2 n^3 FLOP each;
* **sft**: one optimiser step of the NLL signal on dataset states: ``ours`` (``train_step`` of
  statepost.train.loop), ``ours_loop_adamw`` (the same with the per-tensor AdamW loop the loop used
  before), ``plain`` (forward with labels, backward, clip, fused AdamW) and ``trl`` (SFTTrainer);
* **opd**: on-policy distillation (reverse KL to a frozen teacher of the same architecture) on
  ``--opd-prompts`` prompts, one sample each (as the paper's ``opd``), ours against TRL's
  ``DistillationTrainer``, split into generation / teacher scoring / update;
* **grpo**: group-normalised policy gradient on ``--grpo-prompts`` x ``--group`` samples (full: 1 x 8,
  the paper's ``rl`` group), ours against ``GRPOTrainer``, split into generation /
  rewards / update (both reward alternate rows 1 and 0 after computing the GSM8K reward, so every
  group has signal; a random model answers nothing right);
* **generation**: rollout generation (``LearnerStates.generate``: a group's prompt prefilled once,
  finished rows dropped) against a plain ``model.generate`` on the same rows (each prompt repeated
  once per sample) and sampling settings, for each ``--gen-shapes`` ``PxG`` (P prompts x G samples);
  random weights never end a row early, so only the prefill saving shows here;
* **evaluation**: one ``scripts/evaluate.py`` job on the toy GSM8K with an untrained toy model.

Implementations are interleaved round robin (ours, plain, TRL, ours, ...), and each figure is the
median over ``--steps`` steps after ``--warmup``: load from other processes hits every arm alike, so
the ratios hold where single timings do not. On a CPU a 0.6B step's time also depends on page faults of
fresh ``V x H`` gradient tensors, which vary from run to run (BENCHMARKS.md): use ``--steps`` 6 or more
(and ``--sections``) to settle one ratio. All arms of a section share one model and one set of
AdamW moments (memory). Throughput: tokens (prompt + completion, every row) per second; FLOP/s:
6 N tokens per training step and 2 N per generated or scored token, N = the parameter count (the
tied head counted once). Writes ``{out}/{device}.json`` (schema: results/README.md) and appends
one row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent  # benchmarks/: bench_parts and bench_trl beside this file
ROOT = HERE.parent  # the repository: the statepost package, config/toy.yaml, scripts/evaluate.py
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_parts import (  # noqa: E402
    append_markdown, interleave, machine, make_rows, matmul_peak, profile_arms, summarise, sync, word_tokenizer,
)

# Qwen3-0.6B-Base's config.json (28 layers, hidden 1024, GQA 16/8 heads of 128, MLP 3072,
# vocabulary 151,936, tied embeddings, rope theta 1e6, RMSNorm eps 1e-6, no attention bias)
QWEN3_0_6B = dict(
    vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=32_768, tie_word_embeddings=True,
    rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
)
TINY = {**QWEN3_0_6B, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512}
SIZES = {  # batch and lengths of each section; full: the paper runs' group sizes, about 6 minutes on 2 idle CPU cores
    "full": dict(batch=1, prompt_len=32, completion_len=32, opd_prompts=4, grpo_prompts=1, group=8, new_tokens=16,
                 gen_shapes=["4x1", "1x8"],
                 gen_prompt_len=96, gen_tokens=16, steps=2, warmup=1, matmul=4096, eval_limit=16),
    "tiny": dict(batch=2, prompt_len=12, completion_len=12, opd_prompts=2, grpo_prompts=2, group=2, new_tokens=6,
                 gen_shapes=["2x1", "1x4"],
                 gen_prompt_len=12, gen_tokens=6, steps=2, warmup=1, matmul=256, eval_limit=4),
}
TARGETS = {"sft_ours_over_trl": 1.15, "sft_ours_over_plain": 1.0, "opd_ours_over_trl": 1.15,
           "grpo_ours_over_trl": 1.15, "rollout_ours_over_plain": 1.5, "sft_mfu": 0.70}
log = logging.getLogger("benchmark")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny Qwen3 and few steps (seconds): a smoke run")
    for key, kind in (("batch", int), ("prompt_len", int), ("completion_len", int), ("opd_prompts", int),
                      ("grpo_prompts", int), ("group", int),
                      ("new_tokens", int), ("gen_prompt_len", int), ("gen_tokens", int), ("steps", int),
                      ("warmup", int), ("matmul", int), ("eval_limit", int)):
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None, help=f"override the mode's {key}")
    p.add_argument("--gen-shapes", nargs="+", default=None, metavar="PxG",
                   help="generation shapes: P prompts x G samples per prompt (e.g. 4x1 1x8)")
    p.add_argument("--sections", nargs="+", default=["sft", "opd", "grpo", "generation", "evaluation"],
                   choices=["sft", "opd", "grpo", "generation", "evaluation"])
    p.add_argument("--no-trl", action="store_true", help="leave out TRL's arms (TRL not installed)")
    p.add_argument("--before", action="store_true",
                   help="SFT also with the per-tensor AdamW loop the loop used before fused AdamW (ours_loop_adamw)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--profile", type=Path, default=None, help="write torch.profiler tables of one step per arm here")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks", help="writes {out}/{device}.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="appends a row here")
    p.add_argument("--no-markdown", action="store_true", help="append no row (a profile or an exploratory run)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the architecture's; fewer: profiling)")
    args = p.parse_args(argv)
    size = dict(SIZES["tiny" if args.tiny else "full"])
    for key in size:
        if getattr(args, key, None) is not None:
            size[key] = getattr(args, key)
    args.size = size
    return args


# -- the model, the tokenizer, the rows --------------------------------------------------------------------------
def build_models(tiny: bool, teacher: bool, layers: int | None = None):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    arch = {**(TINY if tiny else QWEN3_0_6B), **({"num_hidden_layers": layers} if layers else {})}
    cfg = Qwen3Config(**arch, eos_token_id=1, pad_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    policy = Qwen3ForCausalLM(cfg).float()
    frozen = Qwen3ForCausalLM(cfg).float().eval().requires_grad_(False) if teacher else None
    return cfg, policy, frozen


# -- our loop as a benchmark arm -------------------------------------------------------------------------------------
class _Rows:  # what train_step writes its metrics line to
    def __init__(self):
        self.rows = []

    def write(self, row):
        self.rows.append(row)


def our_arm(model, run_cfg: dict, source, signal, state_dir: Path, optimizer=None, split=()):
    """``step()`` running statepost.train.loop.train_step on a Run built as ``train`` builds it."""
    from transformers import get_scheduler

    from statepost.train.checkpoint import Checkpointer
    from statepost.train.distributed import make_accelerator
    from statepost.train.loop import SCHEDULES, Run, make_optimizer, train_step

    accelerator = make_accelerator(run_cfg["optim"]["precision"])
    optimizer = optimizer or make_optimizer(model, run_cfg["optim"])
    scheduler = get_scheduler(SCHEDULES[run_cfg["optim"]["schedule"]], optimizer, num_warmup_steps=0,
                              num_training_steps=10**6)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    run = Run(cfg=run_cfg, accelerator=accelerator, model=prepared, policy=accelerator.unwrap_model(prepared),
              tokenizer=None, optimizer=optimizer, scheduler=scheduler, source=source, signal=signal,
              checkpointer=Checkpointer(state_dir, accelerator, keep=1), resume_key={}, total_steps=10**9,
              trajectory={}, facts={}, t_start=time.time())
    rows, counter = _Rows(), iter(range(1, 10**9))

    def step():
        t0 = time.perf_counter()
        train_step(run, next(counter), rows)
        sync(accelerator.device)
        out = {"total_s": time.perf_counter() - t0}
        out.update({name: float(rows.rows[-1].get(key, 0.0)) for name, key in split})
        return out

    return run, step


def run_cfg(states: dict, signal: dict, batch: int, max_length: int) -> dict:
    from statepost.train.loop import run_config

    cfg = run_config({"name": "benchmark", "seed": 0, "init": "base", "states": states, "signal": signal,
                      "optim": {"lr": 1e-6, "max_steps": 10**6, "batch_size": batch, "schedule": "constant",
                                "warmup_ratio": 0.0, "max_length": max_length}})
    cfg["checkpoint"]["every"] = 10**9
    return cfg


def share_moments(base, *others) -> None:
    """One set of AdamW moments for every arm (they update the same parameters): 1 x the memory, not 3 x."""
    inner = lambda o: getattr(o, "optimizer", o)  # noqa: E731
    for o in others:
        inner(o).state = inner(base).state


# -- sections ---------------------------------------------------------------------------------------------------------
def section_sft(args, ctx) -> dict:
    import torch

    from statepost.train.registry import make_signal
    from statepost.train.states import DatasetStates, encode_sft_example

    s, tok, model = args.size, ctx["tokenizer"], ctx["policy"]
    rows = make_rows(64 * s["batch"], s["prompt_len"], s["completion_len"])
    cfg = run_cfg({"source": "dataset", "data": "gsm8k"}, {"type": "nll"}, s["batch"], 4 * ctx["seq"])
    source = DatasetStates(rows, tok, batch_size=s["batch"], seed=0, max_length=4 * ctx["seq"], group_by_length=True,
                           bucket_steps=64)
    model.train()
    run, ours = our_arm(model, cfg, source, make_signal(cfg["signal"]), ctx["tmp"] / "sft")
    # before: the same loop with the per-tensor AdamW loop (torch's CPU default) instead of fused
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in run.optimizer.param_groups]
    loop_opt = torch.optim.AdamW(groups, lr=1e-6, foreach=False)
    run_b, ours_before = our_arm(model, cfg, source, make_signal(cfg["signal"]), ctx["tmp"] / "sft_b", loop_opt)
    examples = [encode_sft_example(tok, r["question"], r["answer"]) for r in rows]
    plain_opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    it = iter(range(10**9))

    def plain():
        t0 = time.perf_counter()
        i = next(it) % (len(examples) // s["batch"])
        batch = examples[i * s["batch"] : (i + 1) * s["batch"]]
        ids = torch.tensor([e for e, _ in batch], device=ctx["device"])
        labels = ids.clone()
        for r, (_, n_prompt) in enumerate(batch):
            labels[r, :n_prompt] = -100
        model.train()
        with ctx["autocast"]():
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        sync(ctx["device"])
        return {"total_s": time.perf_counter() - t0}

    arms = {"ours": ours, **({"ours_loop_adamw": ours_before} if args.before else {}), "plain": plain}
    opts = [loop_opt, plain_opt]
    if not args.no_trl:
        import bench_trl

        trainer, arms["trl"] = bench_trl.sft(model, tok, examples, s["batch"], 1e-6, ctx["tmp"] / "trl_sft")
        opts.append(trainer.optimizer)
    share_moments(run.optimizer, *opts)
    ctx["profile_arms"]["sft"] = arms
    tokens = s["batch"] * ctx["seq"]
    res = interleave(arms, s["steps"], s["warmup"], "sft")
    out = {"tokens_per_step": tokens, "arms": {k: summarise(v, tokens, 6 * ctx["n_params"], ctx["peak"])
                                                for k, v in res.items()}}
    if not args.no_trl:
        out["trl_optimizer"] = type(trainer.optimizer).__name__ + str(trainer.optimizer.defaults.get("fused"))
    return out


def _learner(args, ctx, group: int, rows: list[dict], prompts: int, new_tokens: int | None = None,
             max_length: int | None = None):
    from statepost.train.states import LearnerStates

    return LearnerStates(ctx["tokenizer"], [r["question"] for r in rows], [r["answer"] for r in rows],
                         temperature=1.0, top_p=1.0, max_new_tokens=new_tokens or args.size["new_tokens"],
                         samples_per_prompt=group, refresh_every=1, batch_size=prompts, grad_accum=1,
                         max_length=max_length or 4 * ctx["seq"], seed=0, accelerator=None)


def section_opd(args, ctx) -> dict:
    from statepost.gsm8k import format_prompt
    from statepost.train.registry import make_signal

    s, model = args.size, ctx["policy"]
    rows = make_rows(64 * s["opd_prompts"], s["prompt_len"], s["completion_len"], seed=1)
    signal_cfg = {"type": "teacher_kl", "teacher": "t", "direction": "reverse", "estimator": "full"}
    cfg = run_cfg({"source": "learner", "data": "gsm8k", "samples_per_prompt": 1, "max_new_tokens": s["new_tokens"],
                   "temperature": 1.0, "top_p": 1.0},
                  signal_cfg, s["opd_prompts"], 4 * ctx["seq"])
    source = _learner(args, ctx, 1, rows, s["opd_prompts"])
    run, ours = our_arm(model, cfg, source, make_signal(cfg["signal"], teacher=ctx["teacher"]),
                        ctx["tmp"] / "opd", split=(("generation_s", "gen_time_s"), ("teacher_s", "teacher_time_s")))
    arms = {"ours": ours}
    if not args.no_trl:
        import bench_trl

        trainer, arms["trl"] = bench_trl.distillation(
            model, ctx["teacher"], ctx["tokenizer"], [format_prompt(r["question"]) for r in rows], s["opd_prompts"],
            s["new_tokens"], 1e-6, ctx["tmp"] / "trl_opd")
        share_moments(run.optimizer, trainer.optimizer)
    ctx["profile_arms"]["opd"] = arms
    return _on_policy_summary(arms, s["opd_prompts"], args, ctx, "opd", ("teacher_s",))


def section_grpo(args, ctx) -> dict:
    import torch

    from statepost import gsm8k
    from statepost.config import with_defaults
    from statepost.train.signals import RewardSignal

    s, model, g = args.size, ctx["policy"], args.size["group"]
    rows = make_rows(64 * s["grpo_prompts"], s["prompt_len"], s["completion_len"], seed=2)
    signal_cfg = {"type": "reward", "kl_coef": 0.0}

    class AlternatingReward(RewardSignal):  # the real reward's work, then 1/0 by row: every group has signal
        def rewards(self, batch):
            r, c = super().rewards(batch)
            return torch.arange(len(r)).remainder(2).float(), c

    def trl_reward(prompts, completions, answer, **kw):
        for t, a in zip(completions, answer):
            gsm8k.reward(gsm8k.cut_at_stop(t, gsm8k.task_stop_sequences()), a, "strict", 0.0)
        return [float(i % 2) for i in range(len(completions))]

    cfg = run_cfg({"source": "learner", "data": "gsm8k", "samples_per_prompt": g, "max_new_tokens": s["new_tokens"],
                   "temperature": 1.0, "top_p": 1.0},
                  signal_cfg, s["grpo_prompts"], 4 * ctx["seq"])
    signal = AlternatingReward(with_defaults(signal_cfg, "signal"))
    run, ours = our_arm(model, cfg, _learner(args, ctx, g, rows, s["grpo_prompts"]), signal, ctx["tmp"] / "grpo",
                        split=(("generation_s", "gen_time_s"), ("reward_s", "reward_time_s")))
    arms = {"ours": ours}
    if not args.no_trl:
        import bench_trl

        trainer, arms["trl"] = bench_trl.grpo(
            model, ctx["tokenizer"], [gsm8k.format_prompt(r["question"]) for r in rows], [r["answer"] for r in rows],
            trl_reward, g, s["grpo_prompts"], s["new_tokens"], 1e-6, ctx["tmp"] / "trl_grpo")
        share_moments(run.optimizer, trainer.optimizer)
    ctx["profile_arms"]["grpo"] = arms
    return _on_policy_summary(arms, s["grpo_prompts"] * g, args, ctx, "grpo", ("reward_s",))


def _on_policy_summary(arms, n_rows, args, ctx, desc, scoring) -> dict:
    s = args.size
    res = interleave(arms, s["steps"], s["warmup"], desc)
    tokens = n_rows * (s["prompt_len"] + s["new_tokens"])
    # FLOP per step: generation 2N per new token, teacher 2N per scored token (opd), update 6N per token
    flop_per_token = 6 * ctx["n_params"] + (2 * ctx["n_params"] if desc == "opd" else 0)
    flop_per_token += 2 * ctx["n_params"] * s["new_tokens"] / (s["prompt_len"] + s["new_tokens"])
    out = {"rows": n_rows, "tokens_per_step": tokens, "arms": {}}
    for name, recs in res.items():
        summ = summarise(recs, tokens, flop_per_token, ctx["peak"])
        split = summ["split_s"]
        split["update_s"] = summ["median_s"] - sum(split.get(k, 0.0) for k in ("generation_s", *scoring))
        out["arms"][name] = summ
    return out


def section_generation(args, ctx) -> dict:
    import torch
    from transformers import GenerationConfig

    s, model = args.size, ctx["policy"]
    out = {"prompt_len": s["gen_prompt_len"], "new_tokens": s["gen_tokens"], "shapes": {}}
    for shape in s["gen_shapes"]:
        n_prompts, group = (int(x) for x in shape.split("x"))
        rows = make_rows(8 * n_prompts, s["gen_prompt_len"], s["completion_len"], seed=3 + n_prompts * group)
        source = _learner(args, ctx, group, rows, n_prompts, new_tokens=s["gen_tokens"],
                          max_length=s["gen_prompt_len"] + s["gen_tokens"])
        counter = iter(range(10**9))
        gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                   max_new_tokens=s["gen_tokens"], eos_token_id=1, pad_token_id=1)

        def ours():
            t0 = time.perf_counter()
            batch = source.generate(model)
            n = float((batch.completion_mask > 0).sum())
            return {"total_s": time.perf_counter() - t0, "new_tokens": n}

        def plain():  # what generate costs for the same rows: each prompt once per sample
            _, idx = source.order.micro_batch(next(counter))
            ids = torch.tensor([source.prompt_ids[i] for i in idx for _ in range(group)], device=ctx["device"])
            t0 = time.perf_counter()
            model.eval()
            with torch.no_grad():  # equal prompt lengths: no padding
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
            model.train()
            return {"total_s": time.perf_counter() - t0, "new_tokens": float(gen[:, ids.shape[1]:].numel())}

        res = interleave({"ours": ours, "plain": plain}, s["steps"], s["warmup"], f"generate {shape}")
        entry = {"prompts": n_prompts, "samples_per_prompt": group}
        for name, recs in res.items():
            med_t = statistics.median(r["total_s"] for r in recs)
            new = statistics.median(r["new_tokens"] for r in recs)
            entry[name] = {"median_s": med_t, "new_tokens": new, "tokens_per_s": new / med_t,
                           "fraction_of_peak": 2 * ctx["n_params"] * new / med_t / ctx["peak"]}
        entry["ours_over_plain"] = entry["ours"]["tokens_per_s"] / entry["plain"]["tokens_per_s"]
        out["shapes"][shape] = entry
    return out


def section_evaluation(args, ctx) -> dict:
    """One evaluation job as the DAG runs it (its own process): toy GSM8K, an untrained toy model."""
    import yaml

    from statepost import data, models, toyworld

    toy = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    work = ctx["tmp"] / "eval"
    data.write_toy("gsm8k", toy["benchmarks"]["gsm8k"], work / "data" / "gsm8k")
    corpus = [r["question"] + " " + r["answer"] for r in data.load_split(work / "data" / "gsm8k", "gsm8k", "train")]
    settings = models.toy_settings({k: v for k, v in toy["base_model"].items() if k != "source"})
    tok = models.build_toy_tokenizer(corpus, settings["vocab_size"], settings["max_position_embeddings"])
    model = models.build_toy_model(settings, tok)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    del toyworld
    eval_cfg = {**toy["benchmarks"]["gsm8k"]["eval"], "limit": args.size["eval_limit"]}
    cmd = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model-dir", str(work / "model"),
           "--benchmark", "gsm8k", "--data-dir", str(work / "data"), "--eval-json", json.dumps(eval_cfg),
           "--out", str(work / "scores" / "gsm8k.json"), "--device", "cpu", "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"evaluation job failed:\n{proc.stderr[-3000:]}")
    rec = json.loads((work / "scores" / "gsm8k.json").read_text())
    return {"benchmark": "gsm8k", "rows": rec["n"], "limit": eval_cfg["limit"], "wall_s": wall,
            "timing_s": rec.get("timing_s"), "max_gen_toks": eval_cfg["max_gen_toks"]}


# -- the run ----------------------------------------------------------------------------------------------------------
def ratios(res: dict) -> dict:
    get = lambda sec, arm: res.get(sec, {}).get("arms", {}).get(arm, {}).get("tokens_per_s")  # noqa: E731
    div = lambda a, b: a / b if a and b else None  # noqa: E731
    out = {"sft_ours_over_trl": div(get("sft", "ours"), get("sft", "trl")),
           "sft_ours_over_plain": div(get("sft", "ours"), get("sft", "plain")),
           "sft_fused_over_loop_adamw": div(get("sft", "ours"), get("sft", "ours_loop_adamw")),
           "opd_ours_over_trl": div(get("opd", "ours"), get("opd", "trl")),
           "grpo_ours_over_trl": div(get("grpo", "ours"), get("grpo", "trl")),
           "sft_mfu": res.get("sft", {}).get("arms", {}).get("ours", {}).get("fraction_of_peak")}
    shapes = res.get("generation", {}).get("shapes", {}).values()
    out["generation_ours_over_plain"] = min((v["ours_over_plain"] for v in shapes), default=None)
    out["rollout_ours_over_plain"] = min((v["ours_over_plain"] for v in shapes if v["samples_per_prompt"] > 1),
                                         default=None)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from statepost.io import env_info, utc_now, write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    load_start = list(os.getloadavg())
    t_start = time.perf_counter()
    s = args.size
    rec = {"schema": 1, "date": utc_now(), "mode": "tiny" if args.tiny else "full", "device": device,
           "dtype": str(dtype), "machine": machine(device), "loadavg_start": load_start, "settings": s,
           "sections": args.sections, "env": env_info()}
    log.info("matmul peak (%d x %d, %s)", s["matmul"], s["matmul"], dtype)
    rec["peak"] = matmul_peak(s["matmul"], dtype, device)
    need_teacher = "opd" in args.sections
    cfg, policy, teacher = build_models(args.tiny, need_teacher, args.layers)
    n_params = sum(p.numel() for p in policy.parameters())
    rec["model"] = {"config": {k: v for k, v in cfg.to_dict().items() if not isinstance(v, dict) or k == "rope_parameters"},
                    "params": n_params,
                    "architecture": ("tiny Qwen3" if args.tiny else "Qwen3-0.6B-Base")
                    + (f", {args.layers} layers" if args.layers else "")}
    with tempfile.TemporaryDirectory(prefix="statepost-bench-") as tmp:
        ctx = {"tokenizer": word_tokenizer(min(cfg.vocab_size - 20, 2000)), "policy": policy.to(device),
               "teacher": teacher.to(device) if teacher is not None else None, "device": device,
               "seq": s["prompt_len"] + s["completion_len"], "n_params": n_params, "peak": rec["peak"]["flop_per_s"],
               "tmp": Path(tmp), "profile_arms": {},
               "autocast": lambda: torch.autocast(device, dtype=dtype) if device == "cuda" else contextlib.nullcontext()}
        del teacher  # ctx holds it until the opd section is done
        for name in args.sections:
            log.info("section %s", name)
            t0 = time.perf_counter()
            rec[name] = globals()[f"section_{name}"](args, ctx)
            rec[name]["section_wall_s"] = time.perf_counter() - t0
            if args.profile:  # one profiled step per arm, while this section's arms exist
                profile_arms(ctx["profile_arms"], args.profile, device)
            ctx["profile_arms"].clear()  # let the section's trainers and optimisers go before the next one
            if name == "opd":
                ctx["teacher"] = None
            gc.collect()
            write_json(args.out / f"{device}.partial.json", rec)  # what is measured survives a crash
    rec["ratios"] = ratios(rec)
    rec["targets"] = {k: {"target": v, "value": rec["ratios"][k],
                          "met": None if rec["ratios"][k] is None else rec["ratios"][k] >= v} for k, v in TARGETS.items()}
    rec["loadavg_end"] = list(os.getloadavg())
    rec["wall_s"] = time.perf_counter() - t_start
    out = args.out / f"{device}.json"
    write_json(out, rec)
    (args.out / f"{device}.partial.json").unlink(missing_ok=True)
    if not args.no_markdown:
        append_markdown(args.markdown, rec)
    print(json.dumps({"out": str(out), "wall_s": round(rec["wall_s"], 1), "ratios": rec["ratios"]}, indent=1))
    return rec


if __name__ == "__main__":
    main()
