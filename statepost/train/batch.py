"""A batch of states: what a state source produces and a signal consumes.

A *state* is a prompt plus a prefix of a completion. A batch of states is a right-padded token
matrix whose ``completion_mask`` marks the completion tokens; every completion position is one
state (its prefix) with one target token. Sources (:mod:`.states`) and signals (:mod:`.signals`)
both depend on this module and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class StateBatch:
    input_ids: torch.LongTensor  # [B, T] prompt + completion, right-padded
    attention_mask: torch.LongTensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] float, 1.0 where input_ids[:, t] is a completion token
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to(self, device) -> "StateBatch":
        def move(x):
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return StateBatch(
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            completion_mask=move(self.completion_mask),
            prompts=self.prompts,
            answers=self.answers,
            extras={k: move(v) for k, v in self.extras.items()},
            metrics=dict(self.metrics),
        )

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum().item())


class StateSource(Protocol):
    """What the loop uses of a state source; a source with epochs also has ``__len__`` (micro-batches per epoch)."""

    n_skipped: int  # examples / prompts left out (too long for optim.max_length)

    def sample(self, policy, step: int) -> StateBatch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def collate_states(
    sequences: list[tuple[list[int], int]],
    pad_token_id: int,
    *,
    prompts: list[str] | None = None,
    answers: list[str] | None = None,
) -> StateBatch:
    """Right-pad ``(token_ids, n_prompt_tokens)`` pairs into a :class:`StateBatch`.

    ``completion_mask[b, t]`` is 1.0 exactly for ``n_prompt <= t < len(token_ids)``: the
    completion tokens (the targets). Padding is found from the lengths, never from the pad id
    (the pad token may equal EOS, as in Qwen3 base).
    """
    if not sequences:
        raise ValueError("collate_states: empty batch")
    width = max(len(ids) for ids, _ in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.float32)
    for b, (ids, n_prompt) in enumerate(sequences):
        if not 0 < n_prompt < len(ids):
            raise ValueError(f"collate_states: row {b} has {n_prompt} prompt tokens of {len(ids)}")
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        completion_mask[b, n_prompt : len(ids)] = 1.0
    return StateBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        prompts=list(prompts or []),
        answers=list(answers or []),
    )


def padding_waste(batch: StateBatch) -> float:
    """Padded tokens / all tokens of the (micro-)batch."""
    total = batch.attention_mask.numel()
    return float(1.0 - batch.attention_mask.sum().item() / total) if total else 0.0
