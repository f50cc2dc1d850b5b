"""Log-probabilities at the completion states of a batch: what every signal (and the learner's old log-probs) reads.

``batch`` is a :class:`statepost.train.states.StateBatch` (``input_ids``, ``attention_mask``,
``completion_mask``). The model's output at position ``t`` predicts ``input_ids[:, t+1]``; a
completion state is a position whose target is a completion token.
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over the whole batch)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def shifted_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [B, T-1, V] float32, targets [B, T-1], mask [B, T-1])``; ``logits[:, t]`` predicts ``targets[:, t]``.
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    targets = batch.input_ids[:, 1:]
    mask = batch.completion_mask[:, 1:].to(logits.dtype)
    return logits, targets, mask


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., target]``: the log-probability of each target token."""
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def completion_logprobs(model, batch):
    """``(logits, token_logprobs, mask)`` as :func:`shifted_logits`, with the realised tokens' log-probabilities."""
    logits, targets, mask = shifted_logits(model, batch)
    return logits, token_logprobs(logits, targets), mask


def completion_token_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the completion states only: ``(logits [N, V] float32, targets [N])``.

    Only the ``N`` completion positions are kept before the float32 cast, so memory is ``N x V``
    rather than ``B x T x V`` (a 152k vocabulary makes the difference).
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    keep = batch.completion_mask[:, 1:] > 0
    logits = out.logits[:, :-1, :][keep].float()
    targets = batch.input_ids[:, 1:][keep]
    return logits, targets


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: ``[..., V] -> [...]``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1)


def token_divergence(student_logits, teacher_logits, direction: str = "reverse", beta: float = 0.5):
    """Per-position divergence between student and teacher next-token distributions, exact over V.

    ``[..., V]`` logits in, ``[...]`` float32 out. ``reverse``: KL(student || teacher);
    ``forward``: KL(teacher || student); ``jsd``: the generalized JSD of GKD (Agarwal et al. 2024),
    as TRL's ``generalized_jsd_loss``: ``beta * KL(teacher || M) + (1 - beta) * KL(student || M)``
    with ``M = beta * teacher + (1 - beta) * student``; ``beta == 0`` is forward KL, ``beta == 1``
    reverse KL, ``0.5`` the symmetric Jensen-Shannon divergence.
    """
    ls = torch.log_softmax(student_logits.float(), dim=-1)
    lt = torch.log_softmax(teacher_logits.float(), dim=-1)
    if direction == "jsd":
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
        if beta == 0.0:
            direction = "forward"
        elif beta == 1.0:
            direction = "reverse"
        else:
            lm = torch.logsumexp(torch.stack([ls + math.log(1.0 - beta), lt + math.log(beta)]), dim=0)
            kl_t = (lt.exp() * (lt - lm)).sum(-1)
            kl_s = (ls.exp() * (ls - lm)).sum(-1)
            return beta * kl_t + (1.0 - beta) * kl_s
    if direction == "reverse":
        return (ls.exp() * (ls - lt)).sum(-1)
    if direction == "forward":
        return (lt.exp() * (lt - ls)).sum(-1)
    raise ValueError(f"unknown KL direction {direction!r} (reverse | forward | jsd)")
