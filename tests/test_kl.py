"""Teacher-KL signal: exact divergences, the sampled estimator, the tokenizer check."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _fulllogits import FixedLogits
from _train_toy import build_model

from statepost.config import with_defaults
from statepost.train.logprobs import token_divergence
from statepost.train.signals import TeacherKLSignal, check_same_tokenizer
from statepost.train.batch import StateBatch

P_S = [0.5, 0.3, 0.2]
P_T = [0.2, 0.3, 0.5]


def kl_cfg(**keys):
    """A teacher_kl signal config: the schema's defaults, then ``keys`` (unvalidated: TeacherKLSignal checks them)."""
    return {**with_defaults({"type": "teacher_kl", "teacher": "teacher"}, "signal"), **keys}


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def logits_of(p):
    return torch.log(torch.tensor(p, dtype=torch.float64)) + 1.7  # any shift: softmax-invariant


def one_token_batch(tokens, prefix_len=1):
    """Rows ``[0]*prefix_len + [y]``: one completion token y per row (the last one)."""
    n = len(tokens)
    ids = torch.zeros((n, prefix_len + 1), dtype=torch.long)
    ids[:, -1] = torch.as_tensor(tokens)
    cm = torch.zeros((n, prefix_len + 1))
    cm[:, -1] = 1.0
    return StateBatch(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=cm)


def test_reverse_and_forward_kl_hand_computed():
    s, t = logits_of(P_S), logits_of(P_T)
    assert float(token_divergence(s, t, "reverse")) == pytest.approx(kl(P_S, P_T), rel=1e-6)
    assert float(token_divergence(s, t, "forward")) == pytest.approx(kl(P_T, P_S), rel=1e-6)
    # hand values: KL(s||t) = 0.5 ln 2.5 + 0.2 ln 0.4
    assert float(token_divergence(s, t, "reverse")) == pytest.approx(0.5 * math.log(2.5) + 0.2 * math.log(0.4), rel=1e-6)


@pytest.mark.parametrize("beta", [0.5, 0.3, 0.9])
def test_jsd_hand_computed(beta):
    m = [beta * t + (1 - beta) * s for s, t in zip(P_S, P_T)]
    expected = beta * kl(P_T, m) + (1 - beta) * kl(P_S, m)
    got = float(token_divergence(logits_of(P_S), logits_of(P_T), "jsd", beta))
    assert got == pytest.approx(expected, rel=1e-5)


def test_jsd_ends_are_forward_and_reverse():
    s, t = logits_of(P_S), logits_of(P_T)
    assert float(token_divergence(s, t, "jsd", 0.0)) == pytest.approx(kl(P_T, P_S), rel=1e-6)
    assert float(token_divergence(s, t, "jsd", 1.0)) == pytest.approx(kl(P_S, P_T), rel=1e-6)
    # near the ends JSD(beta)/beta -> forward KL and JSD(beta)/(1-beta) -> reverse KL
    assert float(token_divergence(s, t, "jsd", 1e-4)) / 1e-4 == pytest.approx(kl(P_T, P_S), rel=1e-2)
    assert float(token_divergence(s, t, "jsd", 1 - 1e-4)) / 1e-4 == pytest.approx(kl(P_S, P_T), rel=1e-2)
    with pytest.raises(ValueError):
        token_divergence(s, t, "jsd", 1.5)
    with pytest.raises(ValueError):
        token_divergence(s, t, "sideways")


@pytest.mark.parametrize("direction", ["reverse", "forward", "jsd"])
def test_signal_is_masked_mean_over_completion_tokens(direction):
    student = FixedLogits(logits_of(P_S))
    teacher = FixedLogits(logits_of(P_T))
    batch = one_token_batch([0, 1, 2, 1], prefix_len=2)
    batch.completion_mask[1, 1] = 1.0  # a second completion position in row 1
    sig = TeacherKLSignal(kl_cfg(direction=direction, beta=0.5), teacher)
    loss, metrics = sig(student, batch)
    expected = float(token_divergence(logits_of(P_S), logits_of(P_T), direction, 0.5))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)  # the same distribution at every state
    assert metrics["kl"] == pytest.approx(expected, rel=1e-5)
    assert metrics["completion_tokens"] == 5.0
    assert metrics["entropy"] == pytest.approx(-sum(p * math.log(p) for p in P_S), rel=1e-5)
    # teacher NLL of the realised tokens: targets are input_ids[:, t+1] at completion positions
    ys = [0, 1, 2, 1, 0]  # rows' last tokens, plus row 1's first completion token (id 0)
    assert metrics["teacher_nll"] == pytest.approx(sum(-math.log(P_T[y]) for y in ys) / 5, rel=1e-5)
    assert metrics["teacher_time_s"] >= 0.0
    assert not any(p.requires_grad for p in teacher.parameters())


def tiny_qwen(seed=0, vocab=40):
    return build_model(vocab, layers=1, heads=2, kv_heads=1, max_positions=64, seed=seed)


@pytest.mark.parametrize(
    "cfg",
    [
        {"direction": "reverse"},
        {"direction": "forward"},
        {"direction": "jsd", "beta": 0.5},
        {"direction": "reverse", "estimator": "sampled"},
    ],
)
def test_kl_and_gradient_vanish_when_teacher_is_student(cfg):
    student = tiny_qwen()
    teacher = copy.deepcopy(student)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (3, 9), generator=g)
    cm = torch.zeros(3, 9)
    cm[:, 4:] = 1.0
    cm[2, 7:] = 0.0
    am = torch.ones(3, 9, dtype=torch.long)
    am[2, 7:] = 0
    batch = StateBatch(input_ids=ids, attention_mask=am, completion_mask=cm)
    loss, metrics = TeacherKLSignal(kl_cfg(**cfg), teacher)(student, batch)
    loss.backward()
    assert abs(metrics["kl"]) < 1e-6
    if cfg.get("estimator") != "sampled":
        assert abs(float(loss.detach())) < 1e-6
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads
    assert max(float(g.abs().max()) for g in grads) < 1e-5
    assert metrics["teacher_nll"] > 0


def test_sampled_estimator_matches_reverse_kl_gradient():
    torch.manual_seed(0)
    V = 5
    s_logits = torch.randn(V)
    t_logits = torch.randn(V)
    teacher = FixedLogits(t_logits)

    # exact reverse-KL gradient (the full estimator) with respect to the student logits
    full_student = FixedLogits(s_logits)
    loss_full, m_full = TeacherKLSignal(kl_cfg(direction="reverse"), teacher)(full_student, one_token_batch([0]))
    loss_full.backward()
    g_full = full_student.logits.grad.clone()

    # exact expectation of the sampled estimator: enumerate y weighted by p_s(y)
    p_s = torch.softmax(s_logits, -1)
    g_exp = torch.zeros(V)
    for y in range(V):
        st = FixedLogits(s_logits)
        loss_y, _ = TeacherKLSignal(kl_cfg(estimator="sampled"), teacher)(st, one_token_batch([y]))
        loss_y.backward()
        g_exp += p_s[y] * st.logits.grad
    torch.testing.assert_close(g_exp, g_full, atol=1e-5, rtol=1e-4)

    # Monte Carlo: tokens sampled from the student, one state per row
    n = 40_000
    ys = torch.multinomial(p_s, n, replacement=True, generator=torch.Generator().manual_seed(3))
    mc_student = FixedLogits(s_logits)
    loss_mc, m_mc = TeacherKLSignal(kl_cfg(estimator="sampled"), teacher)(mc_student, one_token_batch(ys.tolist()))
    loss_mc.backward()
    torch.testing.assert_close(mc_student.logits.grad, g_full, atol=0.03, rtol=0.0)
    assert m_mc["kl"] == pytest.approx(m_full["kl"], rel=1e-5)  # the logged kl is exact
    assert m_mc["kl_sampled"] == pytest.approx(m_full["kl"], abs=0.05)  # the k1 estimate


def test_config_errors_are_the_configs():
    """The schema refuses an unknown direction or estimator, and the config's checks a sampled estimator of
    another divergence than the reverse KL, each naming the key, before any job (the signal takes them as given)."""
    from statepost.config import with_defaults
    from statepost.io import ConfigError

    with pytest.raises(ConfigError, match=r"signal_teacher_kl\.direction|direction"):
        with_defaults({"type": "teacher_kl", "teacher": "t", "direction": "up"}, "signal_teacher_kl")
    with pytest.raises(ConfigError, match="estimator"):
        with_defaults({"type": "teacher_kl", "teacher": "t", "estimator": "guess"}, "signal_teacher_kl")
    import copy
    from pathlib import Path

    import yaml

    from statepost import config as cfglib

    toy = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "toy.yaml").read_text())
    bad = copy.deepcopy(toy)
    bad["runs"]["opd"]["signal"].update(direction="forward", estimator="sampled")
    with pytest.raises(ConfigError, match=r"runs\.opd\.signal\.estimator: the sampled estimator estimates the reverse KL"):
        cfglib.validate(bad)


def test_empty_batch_gives_zero_loss():
    student = FixedLogits(logits_of(P_S))
    batch = one_token_batch([1, 2])
    batch.completion_mask.zero_()
    loss, metrics = TeacherKLSignal(kl_cfg(), FixedLogits(logits_of(P_T)))(student, batch)
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics["completion_tokens"] == 0.0
    assert float(student.logits.grad.abs().max()) == 0.0


def word_tokenizer(words, name, eos="<eos>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "<other>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token=eos, pad_token=eos)
    fast.name_or_path = name
    return fast


def test_same_tokenizer_passes_and_mismatch_raises_clear_error():
    a = word_tokenizer(["one", "two", "three"], "results/models/base")
    b = word_tokenizer(["one", "two", "three"], "results/models/sft_stress/seed0")
    check_same_tokenizer(a, b)
    c = word_tokenizer(["one", "three", "two"], "results/models/other")
    with pytest.raises(ValueError) as err:
        check_same_tokenizer(a, c, "results/models/base", "results/models/other")
    msg = str(err.value)
    assert "results/models/base" in msg and "results/models/other" in msg
    assert "'three'" in msg  # first differing token in sorted order
    d = word_tokenizer(["one", "two", "three", "four"], "results/models/bigger")
    with pytest.raises(ValueError, match="'four'.*results/models/bigger"):
        check_same_tokenizer(a, d)
    e = word_tokenizer(["one", "two", "three"], "results/models/eos")
    e.eos_token = "<other>"
    with pytest.raises(ValueError, match="eos_token.*results/models/eos"):
        check_same_tokenizer(a, e)
