"""Peak memory of one signal computation at Qwen3's vocabulary (151,936; hidden 64, 2 layers, 6 rows
x 128 tokens, 384 completion states): the bounded-memory log-probs stay below the size of one float32
``[B, T, V]`` logits tensor, which the full-logits computation (tests/_fulllogits.py) exceeds several
times over. Each path runs in its own process (tests/_peakmem.py), measured by the growth of its peak
resident set (about 135 MiB bounded, 1,800 MiB full)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHUNK_ELEMENTS = 1 << 21  # 13 states per chunk at this vocabulary: 8 MiB per [n, V] float32 temporary


def peak(path: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]),
        "OMP_NUM_THREADS": "1",
        # glibc: every block of 1 MiB or more is mmapped and unmapped when freed (no heap
        # fragmentation), so the resident set follows the live tensors
        "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "_peakmem.py"), path, str(CHUNK_ELEMENTS)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs to reset the peak RSS"
)
def test_bounded_logprobs_peak_memory_stays_below_one_logits_tensor():
    bounded, full = peak("bounded"), peak("full")
    bound = bounded["logits_mb"]  # one float32 [B, T, V] tensor: 534 MiB
    assert bounded["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert full["peak_mb"] > 2 * bound, full
    assert bounded["peak_mb"] < bound, bounded
