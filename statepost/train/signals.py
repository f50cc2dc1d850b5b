"""Signals: what a method applies at each state (NLL of a target, a teacher's distribution, a reward)."""

from __future__ import annotations

import torch

from .states import StateBatch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over the whole batch)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def shifted_logits(model, batch: StateBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits that predict each completion token, aligned with it.

    Returns ``(logits [B, T-1, V], targets [B, T-1], mask [B, T-1])``: ``logits[:, t]``
    is the model's output at position ``t`` and predicts ``targets[:, t] = input_ids[:, t+1]``.
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    targets = batch.input_ids[:, 1:]
    mask = batch.completion_mask[:, 1:].to(logits.dtype)
    return logits, targets, mask


def completion_logprobs(model, batch: StateBatch):
    """``(logits, token_logprobs, mask)``: log-probabilities of the realised completion tokens."""
    logits, targets, mask = shifted_logits(model, batch)
    logp = torch.log_softmax(logits, dim=-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logits, token_logp, mask
