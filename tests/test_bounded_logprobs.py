"""Bounded-memory log-probs (statepost.train.logprobs): every signal's loss, metrics and parameter
gradients equal the full-logits reference (tests/_fulllogits.py) on a tiny Qwen3: in float32, under
bf16 autocast, in chunks of a few states, with an untied head, with activation checkpointing and
through DDP."""

from __future__ import annotations

import copy

import pytest
import torch
from _fulllogits import reference

from statepost.config import with_defaults
from statepost.models import set_gradient_checkpointing
from statepost.train import logprobs
from statepost.train.batch import StateBatch
from statepost.train.signals import NLLSignal, RewardSignal, TeacherKLSignal

VOCAB = 48
# rows: (prompt length, completion length); right-padded to the longest
ROWS = [(3, 6), (5, 2), (2, 7), (4, 1)]


def qwen(seed: int, tied: bool = True):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=tied,
        eos_token_id=0, pad_token_id=0, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg).float()
    if not tied:  # an output embedding of its own, visibly different from the input one
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 0.1)
    return model.train()


def make_batch(seed: int = 0, old_logprobs: bool = False) -> StateBatch:
    g = torch.Generator().manual_seed(seed)
    width = max(p + c for p, c in ROWS)
    ids = torch.randint(1, VOCAB, (len(ROWS), width), generator=g)
    am = torch.zeros_like(ids)
    cm = torch.zeros(ids.shape)
    for b, (p, c) in enumerate(ROWS):
        ids[b, p + c :] = 0
        am[b, : p + c] = 1
        cm[b, p : p + c] = 1.0
    extras = {"rewards": torch.tensor([1.0, 0.0, 0.25, 1.0]), "group": torch.tensor([0, 0, 1, 1])}
    if old_logprobs:  # a rollout batch reused: ratios away from 1, some clipped
        extras["old_logprobs"] = (-4.0 + torch.randn(ids.shape, generator=g)) * cm
    return StateBatch(input_ids=ids, attention_mask=am, completion_mask=cm, answers=["#### 1"] * 4, extras=extras)


def kl_cfg(**keys):
    return {**with_defaults({"type": "teacher_kl", "teacher": "teacher"}, "signal"), **keys}


def reward_cfg(**keys):
    return with_defaults({"type": "reward", **keys}, "signal")


VARIANTS = {
    "nll": lambda teacher, ref: NLLSignal(),
    "kl_reverse": lambda teacher, ref: TeacherKLSignal(kl_cfg(direction="reverse"), teacher),
    "kl_forward": lambda teacher, ref: TeacherKLSignal(kl_cfg(direction="forward"), teacher),
    "kl_jsd": lambda teacher, ref: TeacherKLSignal(kl_cfg(direction="jsd", beta=0.5), teacher),
    "kl_sampled": lambda teacher, ref: TeacherKLSignal(kl_cfg(direction="reverse", estimator="sampled"), teacher),
    "reward": lambda teacher, ref: RewardSignal(reward_cfg(kl_coef=0.0)),
    "reward_kl_metric": lambda teacher, ref: RewardSignal(reward_cfg(kl_coef=0.0), reference=ref),
    "reward_kl": lambda teacher, ref: RewardSignal(reward_cfg(kl_coef=0.1), reference=ref),
}


def compare(variant, *, chunk_states=None, autocast=False, tied=True, checkpointing=False, old=False,
            monkeypatch=None, rtol=1e-5, atol=1e-6, gtol=2e-5):
    """Loss, metrics and gradients of the signal vs the full-logits reference on a copy of the policy:
    returns ``(loss, metrics, differences)``, every difference beyond the tolerances named.

    Loss and metrics within ``rtol`` / ``atol``; each parameter's gradient within ``gtol`` times its
    largest element (chunks sum the head's weight gradient in another order; under bf16 autocast
    each chunk's share is rounded to bf16, so there the tolerance is bf16's, 2e-2).
    """
    if chunk_states is not None:
        monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", chunk_states * VOCAB)
    policy, frozen_dtype = qwen(0, tied), torch.bfloat16 if autocast else torch.float32
    teacher, ref = qwen(1, tied).to(frozen_dtype), qwen(2, tied).to(frozen_dtype)
    twin = copy.deepcopy(policy)
    if checkpointing:
        set_gradient_checkpointing(policy, True)
    signal = VARIANTS[variant](teacher, ref)
    batch = make_batch(old_logprobs=old)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else torch.enable_grad
    with ctx():
        loss, metrics = signal(policy, batch)
    loss.backward()
    with ctx():
        ref_loss, ref_metrics = reference(signal, twin, batch)
    ref_loss.backward()
    differences = []
    if not torch.allclose(loss.detach(), ref_loss.detach(), rtol=rtol, atol=atol):
        differences.append(f"loss {float(loss):.8g} != {float(ref_loss):.8g}")
    for key, value in ref_metrics.items():
        if metrics.get(key) != pytest.approx(value, rel=rtol, abs=atol):
            differences.append(f"metric {key}: {metrics.get(key)} != {value}")
    grads = dict(twin.named_parameters())
    for name, p in policy.named_parameters():
        want = grads[name].grad
        if p.grad is None:
            differences.append(f"{name}: no gradient")
            continue
        err, scale = float((p.grad - want).abs().max()), float(want.abs().max())
        if err > gtol * scale + 1e-12:
            differences.append(f"{name}: gradient differs by {err:.3g} (largest {scale:.3g})")
    return loss, metrics, differences


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("chunk_states", [None, 3])  # one chunk; chunks of 3 states (the last one ragged)
def test_float32_equals_full_logits(variant, chunk_states, monkeypatch):
    *_, differences = compare(variant, chunk_states=chunk_states, monkeypatch=monkeypatch)
    assert not differences, differences


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_autocast_equals_full_logits(variant, monkeypatch):
    """As the loop runs signals: inside autocast, float32 master weights, bf16 teacher / reference."""
    *_, differences = compare(
        variant, chunk_states=5, autocast=True, monkeypatch=monkeypatch, rtol=1e-4, atol=1e-6, gtol=2e-2
    )
    assert not differences, differences


@pytest.mark.parametrize("variant", ["nll", "kl_jsd", "reward_kl"])
def test_untied_head_and_activation_checkpointing(variant, monkeypatch):
    *_, differences = compare(variant, chunk_states=4, tied=False, checkpointing=True, monkeypatch=monkeypatch)
    assert not differences, differences


def test_reused_rollouts_with_clipping(monkeypatch):
    _, metrics, differences = compare("reward_kl", chunk_states=3, old=True, monkeypatch=monkeypatch)
    assert not differences, differences
    assert metrics["clip_frac"] > 0


def test_no_logits_beyond_one_chunk(monkeypatch):
    """The model's own head projects nothing (after the first call's check); the signal's head sees
    at most one chunk of states at a time, forward and backward."""
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 3 * VOCAB)
    policy, teacher = qwen(0), qwen(1)
    seen = []
    policy.lm_head.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    signal = TeacherKLSignal(kl_cfg(direction="reverse"), teacher)
    batch = make_batch()
    signal(policy, batch)[0].backward()  # first call: the head check projects the last position
    seen.clear()
    signal(policy, batch)[0].backward()
    assert seen and max(s[-2] for s in seen) <= 3
    assert all(len(s) == 2 or s[1] == 0 for s in seen)  # the forward's own projection: no position


def test_ddp_wrapped_policy_gets_every_gradient(tmp_path, monkeypatch):
    """Through DDP (gloo, one process): the trunk runs in DDP's forward, the head outside it; every
    parameter is reduced (a second step would fail otherwise) and the gradients equal the reference."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 3 * VOCAB)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        policy = qwen(0, tied=False)
        twin = copy.deepcopy(policy)
        wrapped = DDP(policy)
        signal = RewardSignal(reward_cfg(kl_coef=0.1), reference=qwen(2))
        batch = make_batch()
        for _ in range(2):
            policy.zero_grad()
            signal(wrapped, batch)[0].backward()
        reference(signal, twin, batch)[0].backward()
        grads = dict(twin.named_parameters())
        for name, p in policy.named_parameters():
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()


def test_logits_that_are_not_head_of_trunk_raise():
    from transformers import Qwen3ForCausalLM

    class Scaled(Qwen3ForCausalLM):  # logit scaling outside the output embedding
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5
            return out

    model = Scaled(qwen(0).config)
    with pytest.raises(ValueError, match="not get_output_embeddings"):
        NLLSignal()(model, make_batch())


def test_fp32_head_is_nn_linear_bit_for_bit_with_a_fresh_weight_gradient():
    """The fp32 head (``_LinearHead``) computes what ``nn.Linear`` computes, value and gradients bit for
    bit, but its weight gradient is no view, so a tied embedding's gradient is added to it in place."""
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, 32, requires_grad=True)
    hidden = torch.randn(7, 32, requires_grad=True)
    grad = torch.randn(7, VOCAB)
    ours = logprobs._LinearHead.apply(hidden, weight)
    theirs = torch.nn.functional.linear(hidden, weight)
    assert torch.equal(ours, theirs)
    g_ours = torch.autograd.grad(ours, (hidden, weight), grad)
    g_theirs = torch.autograd.grad(theirs, (hidden, weight), grad)
    assert all(torch.equal(a, b) for a, b in zip(g_ours, g_theirs))
    assert g_ours[1]._base is None and g_theirs[1]._base is not None


def test_tied_weight_gradients_are_summed_in_place():
    """A tied Qwen3's two V x H gradients (head and input embedding) are summed without a third V x H
    tensor: no out-of-place add of that shape in the backward, and the same gradient as before."""
    from torch.profiler import ProfilerActivity, profile

    model = qwen(0)
    batch = make_batch()
    ref = copy.deepcopy(model)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        (-logprobs.completion_token_logprobs(model, batch).mean()).backward()
    shape = [VOCAB, 32]
    adds = [e for e in prof.key_averages(group_by_input_shape=True)
            if e.key == "aten::add" and e.input_shapes[:2] == [shape, shape]]
    assert not adds
    # the module path (a transposed-view gradient) gives the same numbers
    states = logprobs.completion_states(ref, batch)
    with torch.autocast("cpu", enabled=False):
        head = states.head
        logits = torch.nn.functional.linear(states.hidden, head.weight).float()
    (-logprobs.token_logprobs(logits, states.targets).mean()).backward()
    assert torch.equal(model.model.embed_tokens.weight.grad, ref.model.embed_tokens.weight.grad)
