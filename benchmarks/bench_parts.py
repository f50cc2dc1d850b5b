"""Parts of benchmarks/benchmark.py that are not sections: the tokenizer and rows, round-robin timing, the
matmul peak, the machine, the BENCHMARKS.md row and the profiler tables."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

log = logging.getLogger("benchmark")


def word_tokenizer(n_words: int):
    """Whitespace word-level tokenizer: ``<unk>`` 0, ``<eos>`` 1 (also pad, as in Qwen3 base), words ``w0``..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "Question:", "Answer:", "####"] + [f"w{i}" for i in range(n_words)] + list("0123456789")
    t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def make_rows(n: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    """GSM8K-shaped rows whose prompt (``format_prompt``) is ``prompt_len`` tokens and whose SFT completion
    (answer + EOS) is ``completion_len`` tokens under :func:`word_tokenizer`; answers end in ``#### d``."""
    import random

    rng = random.Random(seed)
    q = lambda k: " ".join(f"w{rng.randrange(500)}" for _ in range(k))  # noqa: E731
    return [{"question": q(prompt_len - 2), "answer": q(completion_len - 3) + f" #### {rng.randrange(10)}"}
            for _ in range(n)]


# -- timing --------------------------------------------------------------------------------------------------------
def interleave(arms: dict, rounds: int, warmup: int, desc: str) -> dict[str, list[dict]]:
    """Run the arms' ``step()`` round robin ``warmup + rounds`` times; the records after warm-up, per arm."""
    from tqdm.auto import tqdm

    out = {name: [] for name in arms}
    for r in tqdm(range(warmup + rounds), desc=desc, dynamic_ncols=True):
        for name, step in arms.items():
            rec = step()
            log.info("%s round %d %s: %.2f s", desc, r, name, rec["total_s"])
            if r >= warmup:
                out[name].append(rec)
    return out


def summarise(records: list[dict], tokens: float, flop_per_token: float, peak: float) -> dict:
    med = {k: statistics.median(r[k] for r in records) for k in records[0]}
    t = med["total_s"]
    return {"median_s": t, "times_s": [r["total_s"] for r in records],
            "split_s": {k: v for k, v in med.items() if k != "total_s"}, "tokens_per_s": tokens / t,
            "flop_per_s": flop_per_token * tokens / t, "fraction_of_peak": flop_per_token * tokens / t / peak}


def matmul_peak(n: int, dtype, device, repeats: int = 3) -> dict:
    import torch

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        (a @ b).sum()
        sync(device)
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    return {"n": n, "dtype": str(dtype), "times_s": times[1:], "flop_per_s": 2 * n**3 / best}


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine(device) -> dict:
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    gpu = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else None
    return {"nproc": os.cpu_count(), "cpu": cpu, "gpu": gpu, "torch_threads": torch.get_num_threads()}


def append_markdown(path: Path, rec: dict) -> None:
    """One dated row per run at the end of BENCHMARKS.md, under a header written the first time."""
    header = ("\n## benchmarks/benchmark.py runs\n\nRatios are throughputs from one interleaved run "
              "(> 1: ours faster); MFU against the matmul peak measured in the same run. Schema: results/README.md.\n\n"
              "| date | mode | machine | load avg (start/end) | batch x tokens | matmul peak GFLOP/s | "
              "SFT ours/TRL | SFT ours/plain | SFT fused/loop AdamW | OPD ours/TRL | GRPO ours/TRL | "
              "rollout ours/plain (G > 1) | generation ours/plain (all shapes) | SFT MFU | eval job s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    f = lambda x, d=2: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    r, m, s = rec["ratios"], rec["machine"], rec["settings"]
    row = (f"| {rec['date'][:16]} | {rec['mode']} | {m['gpu'] or m['cpu']}, {m['nproc']} cpus, "
           f"{m['torch_threads']} threads | {f(rec['loadavg_start'][0], 1)}/{f(rec['loadavg_end'][0], 1)} | "
           f"{s['batch']} x {s['prompt_len'] + s['completion_len']} | {f(rec['peak']['flop_per_s'] / 1e9, 1)} | "
           f"{f(r['sft_ours_over_trl'])} | {f(r['sft_ours_over_plain'])} | {f(r['sft_fused_over_loop_adamw'])} | "
           f"{f(r['opd_ours_over_trl'])} | {f(r['grpo_ours_over_trl'])} | {f(r.get('rollout_ours_over_plain'))} | "
           f"{f(r['generation_ours_over_plain'])} | "
           f"{f(r['sft_mfu'], 3)} | {f(rec.get('evaluation', {}).get('wall_s'), 1)} |\n")
    text = path.read_text() if path.exists() else "# Measurements\n"
    if "## benchmarks/benchmark.py runs" not in text:
        text = text.rstrip("\n") + "\n" + header
    from statepost.io import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text + row)


def profile_arms(arms_by_section: dict, out_dir: Path, device: str) -> None:
    """One step of every arm under torch.profiler: the top rows by self CPU time to {out_dir}/{section}-{arm}.txt."""
    from torch.profiler import ProfilerActivity, profile

    from statepost.io import atomic_file

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    for section, arms in arms_by_section.items():
        for name, step in arms.items():
            try:
                with profile(activities=acts) as prof:
                    rec = step()
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            except Exception as e:  # noqa: BLE001  (one arm failing under the profiler leaves the others' tables)
                rec, table = {"error": repr(e)}, ""
            with atomic_file(out_dir / f"{section}-{name}.txt") as tmp:
                tmp.write_text(f"{section} {name}: {json.dumps(rec)}\n{table}\n")
