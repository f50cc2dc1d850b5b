"""Stop strings for learner states: end each sampled completion where lm-eval's generation ends it.

lm-eval generates a GSM8K answer until a stop string of the task (``Question:``, ``</s>``,
``<|im_end|>``) or EOS, and scores the text before the first stop string. :class:`StopStrings` is
the stopping criterion that ends a row of ``generate`` once its completion's text holds a stop
string, and records where: the number of completion tokens up to and including the token that
completed it. The text is decoded with special tokens (``<|im_end|>`` is one), in full at every
step, so where a row stops is a property of its tokens alone (not of a lookback window); like
lm-eval's own criterion it reads the tokens on the host at every step. :func:`holds_stop` is that
check on token lists, for :func:`statepost.train.rollout.sample_groups`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria


def holds_stop(tokenizer, stop: Sequence[str], completions: list[list[int]]) -> list[bool]:
    """Per completion (token list), whether its text, decoded with special tokens, holds a stop string."""
    texts = tokenizer.batch_decode(completions, skip_special_tokens=False) if completions else []
    return [any(s in text for s in stop) for text in texts]


class StopStrings(StoppingCriteria):
    """Done per row once the decoded completion (the tokens after ``prompt_width``) holds a stop string.

    ``stopped_at[row]``: the completion length at which the row first held one.
    """

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.width = tokenizer, tuple(stop), int(prompt_width)
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        gen = input_ids[:, self.width :]
        todo = [r for r in range(gen.shape[0]) if r not in self.stopped_at]
        if todo and gen.shape[1]:
            for r, held in zip(todo, holds_stop(self.tokenizer, self.stop, gen[todo].tolist())):
                if held:
                    self.stopped_at[r] = gen.shape[1]
        done = [r in self.stopped_at for r in range(gen.shape[0])]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
