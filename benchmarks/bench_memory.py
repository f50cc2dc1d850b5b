#!/usr/bin/env python
"""Peak memory and time of one signal computation (forward + backward) on the Qwen3-0.6B architecture.

    python benchmarks/bench_memory.py --signal opd      # reverse KL to a teacher, full estimator
    python benchmarks/bench_memory.py --signal rl       # GRPO-style reward signal + the reference pass
    python benchmarks/bench_memory.py --signal rl --root OTHER_CHECKOUT   # the statepost package of OTHER_CHECKOUT

Random weights from a Qwen3Config with the 0.6B sizes (hidden 1024, 28 layers, 16 heads, 8 KV heads,
head_dim 128, intermediate 3072, vocabulary 151,936, tied embeddings; nothing is downloaded), float32
on CPU, as the loop runs there. A batch of ``--prompts`` x ``--samples`` rows of ``--prompt-len`` prompt
tokens and ``--new-tokens`` completion tokens (random ids: the cost does not depend on them). The policy
is in train mode, the teacher / reference frozen, as the loop loads them. One call of the signal and
its backward (``--repeat`` calls in a row: the fastest, and the peak over all) are measured: wall time, CPU time of the process (all threads; steadier than wall
time on a shared machine), and the growth of the process's peak resident set (``VmHWM``,
reset through ``/proc/self/clear_refs`` just before; glibc is told to unmap every large block on free
so that the resident set follows the live tensors). The AdamW step is not included (it is unchanged).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository (this file is in benchmarks/)


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signal", choices=["opd", "rl"], required=True)
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose statepost package is measured")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=28, help="decoder layers (28: Qwen3-0.6B)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeat", type=int, default=1, help="computations in a row (times: the fastest; memory: the peak)")
    args = p.parse_args(argv)

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: blocks of 1 MiB and more are mmapped, unmapped on free
    sys.path.insert(0, str(args.root.resolve()))
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from statepost.config import with_defaults
    from statepost.train.batch import StateBatch
    from statepost.train.signals import RewardSignal, TeacherKLSignal

    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = Qwen3Config(
        vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=args.layers,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=True,
        rms_norm_eps=1e-6, eos_token_id=151_643, pad_token_id=151_643, bos_token_id=None,
    )
    torch.manual_seed(0)
    policy = Qwen3ForCausalLM(cfg).float().train()
    frozen = Qwen3ForCausalLM(cfg).float().eval().requires_grad_(False)

    rows, width = args.prompts * args.samples, args.prompt_len + args.new_tokens
    ids = torch.randint(0, cfg.vocab_size, (rows, width))
    cm = torch.zeros(rows, width)
    cm[:, args.prompt_len :] = 1.0
    extras = {
        "rewards": torch.tensor([float(i % 2) for i in range(rows)]),
        "group": torch.arange(args.prompts).repeat_interleave(args.samples),
    }
    batch = StateBatch(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=cm, extras=extras)
    if args.signal == "opd":
        signal = TeacherKLSignal(with_defaults({"type": "teacher_kl", "teacher": "t", "direction": "reverse"}, "signal"), frozen)
    else:
        signal = RewardSignal(with_defaults({"type": "reward", "kl_coef": 0.0}, "signal"), reference=frozen)

    libc.malloc_trim(0)
    base = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    seconds, cpu_seconds = [], []
    for _ in range(args.repeat):
        policy.zero_grad(set_to_none=True)  # as the loop after each step: the gradients are counted
        t0, c0 = time.perf_counter(), time.process_time()
        loss, metrics = signal(policy, batch)
        loss.backward()
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)
    hwm = status_mb("VmHWM")
    params_mb = sum(q.numel() * q.element_size() for q in policy.parameters()) / 2**20
    result = {
        "signal": args.signal, "root": str(args.root), "rows": rows, "tokens": rows * width,
        "completion_states": int(cm[:, 1:].sum()), "threads": torch.get_num_threads(),
        "seconds": round(min(seconds), 2), "cpu_seconds": round(min(cpu_seconds), 2),
        "all_seconds": [round(x, 1) for x in seconds], "peak_growth_mb": round(hwm - base), "peak_rss_mb": round(hwm),
        "before_mb": round(base), "param_grads_mb": round(params_mb), "loss": float(loss.detach()),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
