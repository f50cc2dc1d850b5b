"""The full-logits reference: the signals' losses and metrics as computed before the bounded-memory
log-probs (statepost.train.logprobs), from the model's own ``[B, T, V]`` logits. Tests only: the
package has no path that materialises them.

Each ``ref_*`` function is the former signal's ``__call__`` body, given the signal object for its
settings (and its teacher / reference model).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from statepost.train.logprobs import entropy, token_divergence, token_logprobs
from statepost.train.signals import ADV_EPS, group_advantages_by_id


def full_logits(model, batch):
    """``(logits [N, V] float32, targets [N])`` at the completion states, from the model's full logits."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    keep = batch.completion_mask[:, 1:] > 0
    return out.logits[:, :-1, :][keep].float(), batch.input_ids[:, 1:][keep]


def ref_nll(signal, policy, batch):
    logits, targets = full_logits(policy, batch)
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="mean")
    with torch.no_grad():
        token_acc = (logits.argmax(-1) == targets).float().mean()
    return nll, {"nll": float(nll.detach()), "token_acc": float(token_acc)}


def ref_teacher_kl(signal, policy, batch):
    s, y = full_logits(policy, batch)
    with torch.no_grad():
        t, _ = full_logits(signal.teacher, batch)
    ones = torch.ones(y.numel())
    lt_y = token_logprobs(t, y)
    metrics = {}
    if signal.estimator == "full":
        loss = (token_divergence(s, t, signal.direction, signal.beta) * ones).sum() / ones.sum()
        kl_value = float(loss.detach())
    else:
        ls_y = token_logprobs(s, y)
        logratio = (ls_y - lt_y).detach()
        loss = (logratio * ls_y * ones).sum() / ones.sum()
        kl_value = float(token_divergence(s.detach(), t, "reverse").mean())
        metrics["kl_sampled"] = float(logratio.mean())
    metrics.update(kl=kl_value, entropy=float(entropy(s.detach()).mean()), teacher_nll=float(-lt_y.mean()))
    return loss, metrics


def ref_reward(signal, policy, batch):
    rewards, _ = signal.rewards(batch)
    adv, _ = group_advantages_by_id(rewards, batch.extras["group"], signal.normalize_std, ADV_EPS)
    keep = batch.completion_mask[:, 1:] > 0
    row = keep.nonzero()[:, 0]
    logits, y = full_logits(policy, batch)
    logp = token_logprobs(logits, y)
    ones = torch.ones(y.numel())
    adv_tok = adv[row]
    old = batch.extras.get("old_logprobs")
    old_logp = old[:, 1:][keep] if old is not None else logp.detach()
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - signal.clip_eps, 1.0 + signal.clip_eps) * adv_tok
    loss = (-torch.minimum(ratio * adv_tok, clipped) * ones).sum() / ones.sum()
    metrics = {}
    if signal.reference is not None:
        with torch.no_grad():
            ref_logits, _ = full_logits(signal.reference, batch)
            ref_logp = token_logprobs(ref_logits, y)
        delta = ref_logp - (logp if signal.kl_coef > 0 else logp.detach())
        kl = ((torch.exp(delta) - delta - 1.0) * ones).sum() / ones.sum()
        if signal.kl_coef > 0:
            loss = loss + signal.kl_coef * kl
        metrics["kl_to_init"] = float(kl.detach())
    with torch.no_grad():
        low, high = 1.0 - signal.clip_eps, 1.0 + signal.clip_eps
        is_clipped = ((ratio < low) & (adv_tok < 0)) | ((ratio > high) & (adv_tok > 0))
        metrics.update(entropy=float(entropy(logits.detach()).mean()), clip_frac=float(is_clipped.float().mean()))
    return loss, metrics


def reference(signal, policy, batch):
    """The full-logits loss and metrics of ``signal`` (an NLLSignal, TeacherKLSignal or RewardSignal)."""
    name = type(signal).__name__
    fn = {"NLLSignal": ref_nll, "TeacherKLSignal": ref_teacher_kl, "RewardSignal": ref_reward}[name]
    return fn(signal, policy, batch)


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are the same parameter vector at every position (no separable head)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32).clone())

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, t, -1))
