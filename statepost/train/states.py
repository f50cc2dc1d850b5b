"""State sources: where the states a signal is applied to come from.

A *state* is a prompt plus a prefix of a completion. A batch of states is a
right-padded token matrix whose ``completion_mask`` marks the completion tokens;
every completion position is one state (its prefix) with one target token.
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
    def __len__(self) -> int | None: ...

    def sample(self, policy, step: int) -> StateBatch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
