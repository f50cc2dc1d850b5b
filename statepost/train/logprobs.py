"""Log-probabilities at the completion states of a batch, in bounded memory: what every signal (and the
learner's old log-probs) reads.

``batch`` is a :class:`statepost.train.batch.StateBatch` (``input_ids``, ``attention_mask``,
``completion_mask``). The model's output at position ``t`` predicts ``input_ids[:, t+1]``; a
completion state is a position whose target is a completion token.

**Why not the model's logits.** A causal LM's forward returns ``[B, T, V]`` logits (float32 under
accelerate's mixed precision); with V = 151,936 one RL micro-batch of 32 rows x 460 tokens is 9 GB
before any log-softmax. Here no ``[B, T, V]`` (nor ``[N, V]``) tensor exists:

1. :func:`completion_states` runs the model's *trunk* only and keeps its last hidden state (after
   the final norm) at the N completion states, ``[N, H]``. The call still goes through the model
   object the signal was given, ``model(input_ids=..., attention_mask=..., logits_to_keep=...)``, so
   a DDP wrapper's ``forward`` runs (it prepares the gradient all-reduce) and so does accelerate's
   autocast wrapper. The hidden state comes from a forward hook on the trunk
   (``get_decoder()``, e.g. ``Qwen3Model``), registered for that one call; ``logits_to_keep`` (a
   transformers forward argument: an int or a 1-D tensor of positions) makes the model's own head
   project no position at all (an empty tensor), or only the last position on the first call per
   model, where the model's logits there are compared with ``head(hidden)``: this checks that the
   logits are nothing but the output embedding applied to the trunk's output (a model with logit
   soft-capping or scaling fails loudly instead of training on wrong log-probs). The head is
   ``get_output_embeddings()``, the same module the forward uses, so tied input/output embeddings
   (Qwen3) get their gradient from both uses, as before. Hooks and ``logits_to_keep`` leave the
   model unchanged: no module is swapped, nothing is wrapped.
2. :meth:`CompletionStates.map` applies the head and a per-state function (log-prob of the target,
   a divergence to the teacher, entropy, ...) to chunks of at most ``CHUNK_ELEMENTS // V`` states.
   Every signal's loss is a mean over states of per-state terms, so the loss and all metrics come
   out of per-state vectors ``[N]``. Under grad each chunk is *checkpointed*
   (``torch.utils.checkpoint``, non-reentrant): the forward keeps only the chunk's hidden states
   and the backward recomputes that chunk's logits, so at most one chunk's ``[n, V]`` temporaries
   are alive at any time, forward or backward. The price is one more head matmul per state, and
   a fixed ``V x H`` one: each chunk's weight gradient exists next to the running sum before
   autograd adds them (a fused linear + loss kernel would avoid both). In fp32 the head is applied
   by ``_LinearHead``, whose weight gradient autograd can accumulate into in place (see there).
3. The head runs under the autocast state the model's forward ran under (recorded by the hook), so
   with bf16 mixed precision the logits are bf16 ``head(hidden)`` cast to float32, exactly what the
   model's own forward would have returned at those positions.

Values and gradients equal those of the full-logits computation up to float summation order: the
head's weight gradient is summed over the completion states only, chunk by chunk, where the model's
own backward summed over every position (``tests/test_bounded_logprobs.py`` compares with the
full-logits reference kept in ``tests/_fulllogits.py``: float32 within 1e-5, bf16 autocast within
bf16 rounding of the per-chunk weight gradients). A model without a separable head (no
``get_output_embeddings`` / ``get_decoder``, e.g. the tests' fixed-logit fakes) falls back to its
own logits at the completion states, ``[N, V]``; the per-state functions are the same.
"""

from __future__ import annotations

import inspect
import math
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 25  # logits per chunk: 32 Mi floats, 128 MiB per [n, V] float32 temporary

_VERIFIED: weakref.WeakSet = weakref.WeakSet()  # models whose logits were checked to be head(trunk)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over the whole batch)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def chunk_rows(vocab_size: int) -> int:
    """States per chunk: ``CHUNK_ELEMENTS // vocab_size``, at least 1."""
    return max(1, CHUNK_ELEMENTS // max(1, int(vocab_size)))


class _LinearHead(torch.autograd.Function):
    """``hidden @ weight.T``, as ``nn.Linear`` without bias computes it, forward and backward (the same
    matmuls), except that the weight's gradient is a fresh ``[V, H]`` tensor where ``nn.Linear``'s is a
    transposed view. With tied embeddings (Qwen3) autograd sums the head's and the input embedding's
    ``V x H`` gradients; it adds in place into a tensor it holds the last reference to, and into a view
    it cannot, so it allocates a third ``V x H`` tensor for the sum (0.6B: 622 MB, about a fifth of an
    SFT step on a CPU, mostly page faults). Used without autocast (fp32); under autocast the weight's
    cast already gives a fresh gradient."""

    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.save_for_backward(hidden, weight)
        return hidden.mm(weight.t())

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        grad_hidden = grad.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(hidden) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight


@dataclass
class CompletionStates:
    """The N completion states of a batch, before the head.

    ``hidden [N, H]``: the trunk's last hidden state (after its final norm) at each state, with the
    model's autograd graph; ``targets [N]``: the token each state predicts; ``head``: the model's
    output embedding (None for a model without a separable head: then ``hidden`` holds its float32
    logits ``[N, V]``); ``autocast``: ``(device type, dtype, enabled)`` of the model's forward.
    """

    hidden: torch.Tensor
    targets: torch.Tensor
    head: torch.nn.Module | None = None
    autocast: tuple = ("cpu", torch.bfloat16, False)

    @property
    def vocab_size(self) -> int:
        if self.head is None:
            return int(self.hidden.shape[-1])
        weight = getattr(self.head, "weight", None)
        return int(weight.shape[0]) if weight is not None else int(self.head.out_features)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[n, V]`` of rows of :attr:`hidden`."""
        if self.head is None:
            return hidden.float()
        device_type, dtype, enabled = self.autocast
        if not enabled and type(self.head) is torch.nn.Linear and self.head.bias is None:
            return _LinearHead.apply(hidden, self.head.weight).float()
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return self.head(hidden).float()

    def map(self, fn: Callable, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn(logits [n, V] float32, targets [n], *extra_rows)`` -> a tuple of ``[n]`` tensors, over
        chunks of :func:`chunk_rows` states, concatenated to ``[N]`` each.

        ``extra`` are ``[N, ...]`` tensors cut into the same chunks (e.g. a teacher's hidden states).
        Under grad every chunk is checkpointed: its logits are recomputed in the backward, never
        stored. A batch without states still calls ``fn`` once (on empty rows), so outputs keep their
        graph: ``out.sum() * 0`` is a zero loss that reaches every parameter.
        """
        n, rows = int(self.targets.shape[0]), chunk_rows(self.vocab_size)

        def run(h, y, *xs):
            return tuple(fn(self.logits(h), y, *xs))

        chunks = []
        for start in range(0, max(n, 1), rows):
            part = [t[start : start + rows] for t in (self.hidden, self.targets, *extra)]
            if torch.is_grad_enabled():
                chunks.append(checkpoint(run, *part, use_reentrant=False))
            else:
                chunks.append(run(*part))
        return tuple(col[0] if len(col) == 1 else torch.cat(col) for col in zip(*chunks))


def unwrap(model):
    """The bare model under DDP / accelerate / compile wrappers: the module that has the head and ``generate``."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _is_fsdp(model) -> bool:
    """Sharded by FSDP2 (``fully_shard``)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _takes(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def completion_states(model, batch) -> CompletionStates:
    """The completion states of ``batch`` under ``model``: its trunk's hidden states there (see the module docstring)."""
    keep = batch.completion_mask[:, 1:] > 0  # [B, T-1]: the target of position t is token t+1
    targets = batch.input_ids[:, 1:][keep]
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    trunk = base.get_decoder() if hasattr(base, "get_decoder") else None
    if not isinstance(head, torch.nn.Module) or not isinstance(trunk, torch.nn.Module) or trunk is base:
        logits = model(**inputs).logits  # no separable head: the model's own logits
        return CompletionStates(logits[:, :-1][keep].float(), targets)

    seen = {}

    def grab(module, args, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        dev = hidden.device.type
        seen.update(hidden=hidden, autocast=(dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev)))

    verify = base not in _VERIFIED
    if _takes(base, "logits_to_keep"):  # project no position (the last one on a model's first call)
        last = [batch.input_ids.shape[1] - 1] if verify else []
        inputs["logits_to_keep"] = torch.tensor(last, dtype=torch.long, device=batch.input_ids.device)
    handle = trunk.register_forward_hook(grab)
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    if "hidden" not in seen:
        raise RuntimeError(f"{type(base).__name__}: its decoder {type(trunk).__name__} did not run in forward")
    hidden = seen["hidden"]
    if _is_fsdp(base):
        # FSDP2 runs the root's pre-backward hook (which readies its parameters, the head's among them, for
        # the backward) only when a gradient reaches one of the forward's outputs; the loss here reaches the
        # trunk's output only. An exact zero from the (empty) logits ties them in: values are unchanged.
        hidden = hidden + out.logits[..., :0].sum()
    states = CompletionStates(hidden[:, :-1][keep], targets, head, seen["autocast"])
    if verify:
        _check_head(base, states, out.logits[:, -1], seen["hidden"][:, -1])
    return states


@torch.no_grad()
def _check_head(base, states: CompletionStates, theirs: torch.Tensor, hidden: torch.Tensor) -> None:
    """Raise unless the model's own last-position logits equal ``head(trunk output)`` there."""
    ours = states.logits(hidden)
    device_type, dtype, enabled = states.autocast
    compute = dtype if enabled else getattr(states.head, "weight", hidden).dtype  # the head matmul: its rounding
    tol = 8 * torch.finfo(compute).eps * max(1.0, float(theirs.abs().max()))
    err = float((theirs.float() - ours).abs().max()) if ours.numel() else 0.0
    if not math.isfinite(err):  # non-finite weights: the loop reports the non-finite loss
        return
    if err > tol:
        raise ValueError(
            f"{type(base).__name__}: its logits are not get_output_embeddings() applied to its decoder's output "
            f"(max difference {err:.3g} at the last position; logit soft-capping or scaling?): the bounded-memory "
            "log-probs of statepost.train.logprobs do not support it"
        )
    _VERIFIED.add(base)


def completion_token_logprobs(model, batch) -> torch.Tensor:
    """``log p(target)`` at each completion state: ``[N]`` float32 (the states in row-major order)."""
    (logp,) = completion_states(model, batch).map(lambda logits, y: (token_logprobs(logits, y),))
    return logp


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., target]``: the log-probability of each target token."""
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


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
