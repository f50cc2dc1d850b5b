"""Progress bars on a terminal only: a job's log file (``results/{experiment}/logs/``) gets log lines, never tqdm's
carriage returns.

Call :func:`bars_only_on_a_terminal` at the top of a script, before tqdm, transformers or lm-eval are
imported: when stderr is not a terminal it switches off tqdm's bars through tqdm's own environment
override (``TQDM_DISABLE``) and the Hugging Face libraries' (``HF_HUB_DISABLE_PROGRESS_BARS``). Run by
hand on a terminal, the bars show as before. A variable the user set is left as it is.
"""

from __future__ import annotations

import os
import sys


def on_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bars_only_on_a_terminal() -> bool:
    """Switch progress bars off when stderr is not a terminal; return whether it is one."""
    tty = on_a_terminal()
    if not tty:
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return tty
