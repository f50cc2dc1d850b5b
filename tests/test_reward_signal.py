"""Reward signal: group advantages, REINFORCE-with-baseline gradient, clipping, k3 KL penalty."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from statepost import gsm8k
from statepost.config import with_defaults
from statepost.io import ConfigError
from statepost.train.signals import RewardSignal, group_advantages, group_advantages_by_id
from statepost.train.batch import StateBatch

EPS = 1e-4


def reward_cfg(**keys):
    """A reward signal config with the schema's defaults."""
    return with_defaults({"type": "reward", **keys}, "signal")


def test_group_advantages_hand_computed():
    # group 1: rewards 1,0,1,1 -> mean .75, sample std .5; group 2: all 0 (zero variance)
    adv, zero = group_advantages([1, 0, 1, 1, 0, 0, 0, 0], 4, normalize_std=True, eps=EPS)
    expected = torch.tensor([0.25, -0.75, 0.25, 0.25]) / (0.5 + EPS)
    torch.testing.assert_close(adv[:4], expected)
    assert torch.equal(adv[4:], torch.zeros(4))
    assert zero.tolist() == [False, True]

    adv, zero = group_advantages([1, 0, 1, 1, 0, 0, 0, 0], 4, normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.25, -0.75, 0.25, 0.25, 0, 0, 0, 0]))

    # all-equal non-zero rewards (e.g. all correct) also give exactly zero advantage
    adv, zero = group_advantages([1.0, 1.0, 0.5, 1.5], 2)
    assert adv[:2].tolist() == [0.0, 0.0] and zero.tolist() == [True, False]
    # pair (0.5, 1.5): mean 1, sample std sqrt(0.5)
    torch.testing.assert_close(adv[2:], torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + EPS))

    adv, zero = group_advantages([3.0, 1.0], 1)  # groups of one: nothing to compare with
    assert adv.tolist() == [0.0, 0.0] and zero.tolist() == [True, True]
    with pytest.raises(ValueError):
        group_advantages([1, 0, 1], 2)


def test_group_advantages_by_id_unequal_groups():
    adv, zero = group_advantages_by_id([1.0, 0.0, 2.0, 5.0, 5.0], [7, 7, 7, 2, 2], normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0]))
    assert sorted(zero.tolist()) == [False, True]


class TableLM(torch.nn.Module):
    """A linear softmax (bigram) policy: logits at position t are W[input_ids[t]]."""

    def __init__(self, vocab, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.W[input_ids])


V = 6
# 2 prompts x 2 samples. Rows: prompt tokens then completion tokens, right-padded with 0.
ROWS = [([1, 2], [3, 4, 5]), ([1, 2], [4]), ([2, 3], [5, 5]), ([2, 3], [1, 2, 3, 0])]


def make_batch(rewards, with_text=False):
    width = max(len(p) + len(c) for p, c in ROWS)
    ids = torch.zeros((len(ROWS), width), dtype=torch.long)
    am = torch.zeros_like(ids)
    cm = torch.zeros((len(ROWS), width))
    for b, (p, c) in enumerate(ROWS):
        ids[b, : len(p) + len(c)] = torch.tensor(p + c)
        am[b, : len(p) + len(c)] = 1
        cm[b, len(p) : len(p) + len(c)] = 1.0
    extras = {"rewards": torch.tensor(rewards, dtype=torch.float32), "group": torch.tensor([0, 0, 1, 1])}
    return StateBatch(input_ids=ids, attention_mask=am, completion_mask=cm, answers=["#### 7"] * 4, extras=extras)


def hand_reinforce_grad(W, adv):
    """d/dW of -(1/N) sum_i A_i sum_t log pi(y_t | x_{t-1}): the REINFORCE-with-baseline gradient."""
    grad = torch.zeros_like(W)
    n_tok = sum(len(c) for _, c in ROWS)
    for (p, c), a in zip(ROWS, adv):
        seq = p + c
        for t in range(len(p), len(seq)):
            x, y = seq[t - 1], seq[t]
            probs = torch.softmax(W[x], -1)
            onehot = torch.zeros(V)
            onehot[y] = 1.0
            grad[x] -= a * (onehot - probs) / n_tok
    return grad


@pytest.mark.parametrize("normalize_std", [False, True])
def test_one_update_gradient_is_reinforce_with_group_baseline(normalize_std):
    policy = TableLM(V)
    rewards = [1.0, 0.0, 0.0, 1.0]
    sig = RewardSignal(reward_cfg(normalize_std=normalize_std, clip_eps=0.2))
    loss, metrics = sig(policy, make_batch(rewards))
    loss.backward()
    if normalize_std:  # each pair (1, 0): mean .5, sample std sqrt(.5)
        s = math.sqrt(0.5) + EPS
        adv = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]
    else:
        adv = [0.5, -0.5, -0.5, 0.5]
    expected = hand_reinforce_grad(policy.W.detach(), adv)
    torch.testing.assert_close(policy.W.grad, expected, atol=1e-6, rtol=1e-5)
    assert metrics["reward"] == 0.5 and metrics["zero_var_frac"] == 0.0
    assert metrics["clip_frac"] == 0.0
    assert metrics["completion_len"] == pytest.approx(10 / 4)
    assert metrics["completion_tokens"] == 10.0
    assert metrics["entropy"] > 0
    assert "kl_to_init" not in metrics


def test_zero_variance_groups_give_zero_gradient():
    policy = TableLM(V)
    loss, metrics = RewardSignal(reward_cfg())(policy, make_batch([1.0, 1.0, 0.0, 0.0]))
    loss.backward()
    assert float(policy.W.grad.abs().max()) == 0.0
    assert metrics["zero_var_frac"] == 1.0 and metrics["accuracy"] == 0.5


def test_clipping_with_old_logprobs():
    policy = TableLM(V)
    batch = make_batch([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        logits = policy(batch.input_ids).logits[:, :-1]
        logp = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    old = torch.zeros(batch.input_ids.shape)
    old[:, 1:] = (logp - 1.0) * batch.completion_mask[:, 1:]  # ratio = e > 1 + eps everywhere
    batch.extras["old_logprobs"] = old
    loss, metrics = RewardSignal(reward_cfg(normalize_std=False, clip_eps=0.2))(policy, batch)
    loss.backward()
    # positive advantages (rows 0 and 2) are clipped: only rows 1 and 3 (A = -.5) carry gradient,
    # with weight ratio * A = e * (-.5)
    adv_unclipped = [0.0, -0.5 * math.e, 0.0, -0.5 * math.e]
    torch.testing.assert_close(policy.W.grad, hand_reinforce_grad(policy.W.detach(), adv_unclipped), atol=1e-5, rtol=1e-4)
    n_pos_tokens = len(ROWS[0][1]) + len(ROWS[2][1])
    assert metrics["clip_frac"] == pytest.approx(n_pos_tokens / 10)


def test_k3_kl_penalty_to_reference():
    policy = TableLM(V, seed=0)
    batch = make_batch([1.0, 0.0, 1.0, 0.0])
    # reference = policy: k3 is 0 and the loss is unchanged
    same = copy.deepcopy(policy)
    l0, m0 = RewardSignal(reward_cfg(kl_coef=0.5), same)(policy, batch)
    l1, _ = RewardSignal(reward_cfg(kl_coef=0.0))(policy, batch)
    assert m0["kl_to_init"] == pytest.approx(0.0, abs=1e-7)
    assert float(l0.detach()) == pytest.approx(float(l1.detach()), abs=1e-7)
    # a different reference: kl_to_init is the mean over completion tokens of exp(d) - d - 1
    ref = TableLM(V, seed=1)
    loss, m = RewardSignal(reward_cfg(kl_coef=0.5, normalize_std=False), ref)(policy, batch)
    with torch.no_grad():
        tgt = batch.input_ids[:, 1:, None]
        lp = torch.log_softmax(policy(batch.input_ids).logits[:, :-1], -1).gather(-1, tgt).squeeze(-1)
        lr = torch.log_softmax(ref(batch.input_ids).logits[:, :-1], -1).gather(-1, tgt).squeeze(-1)
        d = lr - lp
        k3 = torch.exp(d) - d - 1
        mask = batch.completion_mask[:, 1:]
        expected = float((k3 * mask).sum() / mask.sum())
    assert m["kl_to_init"] == pytest.approx(expected, rel=1e-5)

    adv = torch.tensor([0.5, -0.5, 0.5, -0.5])[:, None].expand_as(mask)
    pg = float(-(adv * mask).sum() / mask.sum())
    assert float(loss.detach()) == pytest.approx(pg + 0.5 * expected, rel=1e-5)


def graded(batch, texts, mode="strict"):
    """``batch`` with the grades learner states give its completions ``texts`` (statepost.train.states)."""
    batch.extras.pop("rewards")
    batch.extras["correct"] = torch.tensor([float(gsm8k.is_correct(t, a, mode)) for t, a in zip(texts, batch.answers)])
    batch.extras["formatted"] = torch.tensor([gsm8k.has_answer_line(t) for t in texts])
    return batch


def test_rewards_are_the_grades_with_format_bonus():
    texts = ["so\n#### 7", "it is 7", "#### 8", "nothing"]
    sig = RewardSignal(reward_cfg(answer_mode="hash_then_last", format_reward=0.5, normalize_std=False))
    batch = graded(make_batch([0.0, 0.0, 0.0, 0.0]), texts, "hash_then_last")
    r, c = sig.rewards(batch)
    assert r.tolist() == [1.5, 1.0, 0.5, 0.0]
    assert c.tolist() == [1.0, 1.0, 0.0, 0.0]
    _, m = sig(TableLM(V), batch)
    assert m["reward"] == pytest.approx(0.75) and m["accuracy"] == 0.5
    no_bonus = RewardSignal(reward_cfg(answer_mode="hash"))
    assert no_bonus.rewards(graded(make_batch([0.0] * 4), texts, "hash"))[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    del batch.extras["group"]
    with pytest.raises(ValueError, match="group"):
        sig(TableLM(V), batch)
    del batch.extras["correct"]
    with pytest.raises(ValueError, match="correct"):
        sig.rewards(batch)


def test_default_reward_is_lm_evals_strict_match():
    """The reward the claims read: "The answer is 7." earns nothing, "#### 7.00" neither (a string match)."""
    texts = ["so\n#### 7", "The answer is 7.", "#### 7.00", "#### 7 then 8"]
    assert reward_cfg()["answer_mode"] == "strict"
    r, c = RewardSignal(reward_cfg()).rewards(graded(make_batch([0.0] * 4), texts))
    assert r.tolist() == [1.0, 0.0, 0.0, 1.0] and c.tolist() == r.tolist()
    flexible = RewardSignal(reward_cfg(answer_mode="flexible"))
    assert flexible.rewards(graded(make_batch([0.0] * 4), texts, "flexible"))[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="answer_mode"):  # the schema's to refuse, naming the key
        reward_cfg(answer_mode="exact")


def test_all_equal_groups_leave_the_token_mean():
    """Group 0 (rewards 1, 1) has no signal: its rows leave the mask and the mean, so the gradient is the
    REINFORCE gradient of group 1 alone, averaged over group 1's tokens (not over all tokens)."""
    policy = TableLM(V)
    sig = RewardSignal(reward_cfg(normalize_std=False))
    batch = sig.prepare(make_batch([1.0, 1.0, 1.0, 0.0]))
    assert batch.completion_mask[:2].sum() == 0 and batch.completion_mask[2:].sum() == 2 + 4
    assert batch.extras["advantages"].tolist() == [0.0, 0.0, 0.5, -0.5]
    loss, metrics = sig(policy, batch)
    loss.backward()
    grad = torch.zeros_like(policy.W)
    for (p, c), a in list(zip(ROWS, [0.0, 0.0, 0.5, -0.5]))[2:]:
        seq = p + c
        for t in range(len(p), len(seq)):
            probs = torch.softmax(policy.W.detach()[seq[t - 1]], -1)
            grad[seq[t - 1]] -= a * (torch.nn.functional.one_hot(torch.tensor(seq[t]), V) - probs) / 6
    torch.testing.assert_close(policy.W.grad, grad, atol=1e-6, rtol=1e-5)
    assert metrics["completion_tokens"] == 6.0 and metrics["zero_var_frac"] == 0.5
    assert metrics["reward"] == 0.75 and metrics["completion_len"] == pytest.approx(10 / 4)  # of every sample


def test_a_batch_of_only_all_equal_groups_has_no_token_left():
    """The loop counts the prepared mask: no token left means no update (the empty-step path)."""
    batch = RewardSignal(reward_cfg()).prepare(make_batch([1.0, 1.0, 0.0, 0.0]))
    assert batch.num_completion_tokens == 0 and batch.metrics["zero_var_frac"] == 1.0
    assert make_batch([1.0, 1.0, 0.0, 0.0]).num_completion_tokens == 10  # the sampled batch is untouched
