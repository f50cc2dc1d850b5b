"""Learner states mixed with gold solutions (``states.learner_frac``, lambda) and the NLL of a teacher's token."""

from __future__ import annotations

import copy
import math

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_learner_states import ANSWERS, QUESTIONS, make, model, run_cfg, tok  # noqa: F401  (fixtures)

from statepost import config as cfglib
from statepost.config import with_defaults
from statepost.io import ConfigError
from statepost.train.registry import SIGNALS, dataset_states, make_signal
from statepost.train.signals import NLLSignal
from statepost.train.states import encode_sft_example

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"question": q, "answer": a} for q, a in zip(QUESTIONS, ANSWERS)]
MAX_LENGTH = 40  # every gold solution and every prompt + MAX_NEW fits: no prompt is dropped by either source


def test_lambda_0_gives_the_dataset_states_in_the_same_order(tok, model):
    """At learner_frac 0 every state is a gold solution's, and the micro-batches are those of source: dataset
    without length grouping (same seed, batch size, pool): the dose-response's lambda = 0 is the dataset cell."""
    cfg = run_cfg(samples_per_prompt=1, learner_frac=0.0, optim={"max_length": MAX_LENGTH})
    src = make(tok, cfg=cfg)
    dcfg = {**with_defaults({"init": "base", "states": {"source": "dataset", "group_by_length": False},
                             "signal": {"type": "nll"}, "optim": {"batch_size": 3, "max_length": MAX_LENGTH}}, "run"),
            "seed": 0}  # fmt: skip
    gold = dataset_states(dcfg, tok, ROWS)
    assert src.n_skipped == gold.n_skipped == 0
    for step in range(2 * gold.steps_per_epoch + 1):  # over an epoch boundary
        a, b = src.sample(model, step), gold.sample(model, step)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
        assert not a.extras["from_learner"].any() and a.metrics["learner_frac"] == 0.0
        assert a.metrics["n_samples"] == 0 and "accuracy" not in a.metrics  # nothing sampled: no sampling metrics
        assert a.extras["correct"].eq(1.0).all()  # a gold solution is right


def test_realised_fraction_is_lambda_within_binomial_error_and_nested(tok, model):
    cfg = run_cfg(samples_per_prompt=1, optim={"max_length": MAX_LENGTH})
    srcs = {f: make(tok, cfg={**cfg, "states": {**cfg["states"], "learner_frac": f}}) for f in (0.25, 0.5, 0.75)}
    n_batches = 400
    coins = {f: np.concatenate([s.from_learner(c, 3) for c in range(n_batches)]) for f, s in srcs.items()}
    for f, got in coins.items():
        n = got.size
        assert abs(got.mean() - f) < 4 * math.sqrt(f * (1 - f) / n), (f, got.mean())
    # one uniform per prompt, whatever lambda: the learner's prompts at 0.25 are among those at 0.5, and so on
    assert (coins[0.25] <= coins[0.5]).all() and (coins[0.5] <= coins[0.75]).all()


def test_a_mixed_batch_puts_gold_rows_and_samples_in_prompt_order(tok, model):
    cfg = run_cfg(samples_per_prompt=1, learner_frac=0.5, optim={"max_length": MAX_LENGTH})
    src = make(tok, cfg=cfg, seed=3)
    seen = set()
    for step in range(8):
        coins = src.from_learner(src.cursor, 3)
        _, prompts = src.order.micro_batch(src.cursor)
        batch = src.sample(model, step)
        assert batch.extras["from_learner"].tolist() == coins.tolist()
        assert batch.extras["prompt_index"].tolist() == [int(i) for i in prompts]
        for row, (i, on) in enumerate(zip(prompts, coins)):
            ids = batch.input_ids[row][batch.attention_mask[row] > 0].tolist()
            gold, _ = encode_sft_example(tok, QUESTIONS[i], ANSWERS[i])
            if not on:
                assert ids == gold
            seen.add(bool(on))
        assert batch.metrics["n_samples"] == float(coins.sum())
    assert seen == {True, False}


def test_lambda_below_1_needs_one_sample_per_prompt_and_a_signal_without_samples():
    def fails(states, signal, match):
        config = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
        config["runs"]["r"] = {"init": "base", "signal": signal, "optim": {"max_steps": 4},
                               "states": {"source": "learner", "temperature": 1.0, "max_new_tokens": 8,
                                          "samples_per_prompt": 1, **states}}  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            cfglib.validate(config)

    kl = {"type": "teacher_kl", "teacher": "sft_stress"}
    fails({"learner_frac": 0.5, "samples_per_prompt": 4}, kl, r"runs.r.states.learner_frac: 0.5 .* samples_per_prompt 1")
    fails({"learner_frac": 0.5, "filter": {"reward": "gsm8k"}}, {"type": "nll"}, r"learner_frac: .*remove states.filter")
    fails({"learner_frac": 0.25}, {**kl, "estimator": "sampled"}, "estimator sampled")
    fails({"learner_frac": 0.0, "samples_per_prompt": 2}, {"type": "reward"}, "signal reward needs every state")
    fails({"learner_frac": 1.5}, kl, "learner_frac")  # the schema's range


def test_nll_of_the_teachers_token_by_hand(tok, model):
    """With a teacher the NLL's target at each state is the teacher's argmax: the loss is the mean of
    ``logsumexp(policy) - policy[argmax teacher]`` over the completion states, computed here from full logits."""
    src = make(tok, samples_per_prompt=1, seed=1)
    batch = src.sample(model, 0)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    signal = NLLSignal(teacher)
    loss, metrics = signal(model, batch)

    keep = batch.completion_mask[:, 1:] > 0
    with torch.no_grad():
        pl = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1][keep].double()
        tl = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1][keep]
    target = tl.argmax(-1)
    own = batch.input_ids[:, 1:][keep]
    expected = (torch.logsumexp(pl, -1) - pl.gather(1, target[:, None])[:, 0]).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert metrics["teacher_agree"] == pytest.approx(float((target == own).double().mean()))
    assert metrics["token_acc"] == pytest.approx(float((pl.argmax(-1) == target).double().mean()))
    loss.backward()  # the teacher is frozen: only the policy gets gradients
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_nll_loads_a_teacher_only_when_it_names_one():
    assert SIGNALS["nll"].models(with_defaults({"type": "nll"}, "signal_nll")) == ()
    assert SIGNALS["nll"].models(with_defaults({"type": "nll", "teacher": "sft_stress"}, "signal_nll")) == ("teacher",)
    assert make_signal(with_defaults({"type": "nll"}, "signal_nll")).teacher is None
