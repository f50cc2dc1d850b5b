"""State-distribution diagnostics: how far a model's next-token distributions are from the base model's, state by
state, and how likely the states' tokens are under each.

A *state* is a prompt plus a prefix of a completion (:mod:`statepost.train.batch`); at every completion state of a
:class:`~statepost.train.batch.StateBatch`, :func:`state_stats` gives, from the model's logits ``m`` and the base
model's logits ``b`` there (``p = softmax``) and the state's next token ``y``:

* ``kl_model_base``: KL(p_m || p_b) = sum_v p_m(v) (log p_m(v) - log p_b(v)) (reverse KL from the base's side: where
  the model puts mass the base does not);
* ``kl_base_model``: KL(p_b || p_m) (forward: where the base puts mass the model lost);
* ``nll_model``, ``nll_base``: -log p_m(y), -log p_b(y);
* ``entropy_model``: -sum_v p_m(v) log p_m(v).

Both are exact sums over the vocabulary (:func:`statepost.train.logprobs.token_divergence`, the same divergence the
distillation signal uses). Memory is bounded as in training: the two trunks' hidden states are kept at the
completion states only, and the heads are applied to chunks of at most ``CHUNK_ELEMENTS // V`` states
(:class:`~statepost.train.logprobs.CompletionStates`), so no ``[B, T, V]`` logits (nor a pair of them) exist.
:class:`Totals` turns the per-state values into token means over many batches. A model compared with itself gives
exactly zero drift: its two log-softmaxes are the same numbers.
"""

from __future__ import annotations

import torch

from statepost.train.logprobs import completion_states, entropy, token_divergence, token_logprobs

STATS = ("kl_model_base", "kl_base_model", "nll_model", "nll_base", "entropy_model")


def token_stats(model_logits, base_logits, targets) -> tuple:
    """``[n, V]`` logits of the model and of the base at ``n`` states and their next tokens ``[n]`` -> the
    :data:`STATS` at each state, ``[n]`` float32 tensors, in that order."""
    return (
        token_divergence(model_logits, base_logits, "reverse"),
        token_divergence(model_logits, base_logits, "forward"),
        -token_logprobs(model_logits.float(), targets),
        -token_logprobs(base_logits.float(), targets),
        entropy(model_logits),
    )


@torch.no_grad()
def state_stats(model, base, batch) -> dict:
    """The :data:`STATS` at every completion state of ``batch`` (the states in row-major order, ``[N]`` each).

    ``base`` may be ``model`` itself (then its trunk runs once). Both models must be on the batch's device.
    """
    ms = completion_states(model, batch)
    bs = ms if base is model else completion_states(base, batch)
    if bs.vocab_size != ms.vocab_size:
        raise ValueError(f"diagnostics: the model has {ms.vocab_size} logits per state but the base {bs.vocab_size}")

    def per_state(logits, y, base_hidden):
        return token_stats(logits, bs.logits(base_hidden), y)

    return dict(zip(STATS, ms.map(per_state, bs.hidden)))


class Totals:
    """Token means of per-state values over many batches: ``add`` each batch's ``{name: [N]}``, then ``means()``."""

    def __init__(self, names=STATS):
        self.names = tuple(names)
        self.sums = dict.fromkeys(self.names, 0.0)
        self.tokens = 0

    def add(self, stats: dict) -> None:
        n = {int(stats[k].numel()) for k in self.names}
        if len(n) != 1:
            raise ValueError(f"Totals.add: the values have different lengths {sorted(n)}")
        for k in self.names:
            self.sums[k] += float(stats[k].double().sum())
        self.tokens += n.pop()

    def means(self) -> dict[str, float | int | None]:
        """``{name: mean over every token added}`` (None with no token) and ``tokens``."""
        out = {k: (self.sums[k] / self.tokens if self.tokens else None) for k in self.names}
        out["tokens"] = self.tokens
        return out
