"""Peak memory of one teacher-KL signal computation (forward + backward) at Qwen3's vocabulary, run as
a script by tests/test_logprob_memory.py: ``python _peakmem.py {bounded|full} CHUNK_ELEMENTS``.

Prints JSON: ``peak_mb``, the growth of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` once the models and the batch exist) during the computation, and
``logits_mb``, the size of one float32 ``[B, T, V]`` logits tensor. torch's CPU allocator does not
cache; run with ``MALLOC_MMAP_THRESHOLD_=1048576`` so that glibc maps and unmaps every large block
and the resident set follows the live tensors.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

VOCAB, HIDDEN, ROWS, PROMPT, COMPLETION = 151_936, 64, 6, 64, 64


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def main(path: str, chunk_elements: int) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from _fulllogits import reference
    from statepost.config import with_defaults
    from statepost.train import logprobs
    from statepost.train.batch import StateBatch
    from statepost.train.signals import TeacherKLSignal

    torch.set_num_threads(1)
    logprobs.CHUNK_ELEMENTS = chunk_elements
    cfg = Qwen3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=HIDDEN // 4, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    policy, teacher = Qwen3ForCausalLM(cfg).float().train(), Qwen3ForCausalLM(cfg).float()
    width = PROMPT + COMPLETION
    ids = torch.randint(0, VOCAB, (ROWS, width))
    cm = torch.zeros(ROWS, width)
    cm[:, PROMPT:] = 1.0
    batch = StateBatch(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=cm)
    signal = TeacherKLSignal(with_defaults({"type": "teacher_kl", "teacher": "t", "direction": "reverse"}, "signal"), teacher)

    base_kb = status_kb("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    loss = (signal(policy, batch) if path == "bounded" else reference(signal, policy, batch))[0]
    loss.backward()
    seconds = time.perf_counter() - t0
    return {
        "path": path,
        "peak_mb": (status_kb("VmHWM") - base_kb) / 1024,
        "logits_mb": ROWS * width * VOCAB * 4 / 2**20,
        "loss": float(loss.detach()),
        "seconds": seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
