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


# ---------------------------------------------------------------------------------------------
# NLL signal (core helper): next-token negative log-likelihood of the state's next (gold) token.
# ---------------------------------------------------------------------------------------------


def completion_token_logits(model, batch: StateBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the completion states only: ``(logits [N, V] float32, targets [N])``.

    Same alignment as :func:`shifted_logits` (the output at ``t`` predicts ``input_ids[:, t+1]``),
    but only the ``N`` positions whose target is a completion token are kept before the float32
    cast, so memory is ``N x V`` rather than ``B x T x V`` (a 152k vocabulary makes the
    difference).
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    keep = batch.completion_mask[:, 1:] > 0
    logits = out.logits[:, :-1, :][keep].float()
    targets = batch.input_ids[:, 1:][keep]
    return logits, targets


class NLLSignal:
    """Mean next-token NLL over the completion tokens of the batch (SFT).

    ``loss_reduction = "token_mean"`` tells the loop that the loss is a mean over completion
    tokens, so it re-weights micro-batches by their token counts: the optimiser step then
    minimises the mean over all completion tokens of the step, whatever the split over
    processes and gradient accumulation.
    """

    loss_reduction = "token_mean"
    needs_teacher = False
    needs_reference = False

    def __call__(self, policy, batch: StateBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = completion_token_logits(policy, batch)
        if targets.numel() == 0:
            raise ValueError("NLL signal: the batch has no completion tokens")
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="mean")
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean()
        return nll, {"nll": float(nll.detach()), "token_acc": float(acc), "completion_tokens": float(targets.numel())}
