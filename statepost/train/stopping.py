"""Stop strings for learner states: end each sampled completion where lm-eval's generation ends it.

lm-eval generates a GSM8K answer until a stop string of the task (``Question:``, ``</s>``,
``<|im_end|>``) or EOS, and scores the text before the first stop string. :func:`holds_stop` is the
check :func:`statepost.train.rollout.sample_groups` makes after every sampled token: whether a
completion's text holds a stop string, so a row ends at the token that completed one. The text is
decoded with special tokens (``<|im_end|>`` is one), in full at every step, so where a row stops is
a property of its tokens alone (not of a lookback window); like lm-eval's own criterion it reads
the tokens on the host at every step.
"""

from __future__ import annotations

from collections.abc import Sequence


def holds_stop(tokenizer, stop: Sequence[str], completions: list[list[int]]) -> list[bool]:
    """Per completion (token list), whether its text, decoded with special tokens, holds a stop string."""
    texts = tokenizer.batch_decode(completions, skip_special_tokens=False) if completions else []
    return [any(s in text for s in stop) for text in texts]
