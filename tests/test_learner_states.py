"""LearnerStates: on-policy sampling into a valid right-padded StateBatch."""

from __future__ import annotations

import copy

import pytest
import torch

from _train_toy import build_model, word_tokenizer

from statepost import gsm8k
from statepost.config import with_defaults
from statepost.train.logprobs import completion_token_logprobs
from statepost.train.signals import RewardSignal, TeacherKLSignal
from statepost.train.registry import learner_states, make_state_source
from statepost.train.states import LearnerStates

WORDS = ["Question:", "Answer:", "What", "is", "+", "?", "####", "="] + [str(i) for i in range(10)]
MAX_NEW = 10


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model(tok):
    m = build_model(len(tok), layers=1, heads=2, kv_heads=1, max_positions=64, eos_id=tok.eos_token_id)
    with torch.no_grad():  # make EOS likely enough that some samples stop and some run out
        m.model.embed_tokens.weight[tok.eos_token_id] *= 4.0
    m.train()
    return m


QUESTIONS = [f"What is {a} + {b} ?" for a in range(4) for b in range(3)] + ["What is 1 + 1 + 1 + 1 + 1 + 1 ?"]
ANSWERS = [f"{a} + {b} = {a + b}\n#### {a + b}" for a in range(4) for b in range(3)] + ["#### 6"]


def run_cfg(signal=None, optim=None, **states):
    """A complete run config (the schema's defaults) with learner states."""
    entry = {
        "init": "base",
        "states": {"source": "learner", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": MAX_NEW,
                   "samples_per_prompt": 2, "refresh_every": 1, "filter": None, **states},
        "signal": signal or {"type": "teacher_kl", "teacher": "base"},
        "optim": {"batch_size": 3, "grad_accum": 1, "max_length": 19, **(optim or {})},
    }
    return {**with_defaults(entry, "run"), "seed": 0}


def make(tok, answers=ANSWERS, seed=0, cfg=None, accelerator=None, **states):
    """Learner states over QUESTIONS as the registry builds them from ``cfg`` (default: ``run_cfg(**states)``)."""
    cfg = {**(cfg or run_cfg(**states)), "seed": seed}
    return learner_states(cfg, tok, [{"question": q, "answer": a} for q, a in zip(QUESTIONS, answers)], accelerator)


def test_batch_is_valid(tok, model):
    src = make(tok)
    assert src.n_skipped == 1  # the long prompt: 16 tokens + 10 new > max_length 19
    before = torch.random.get_rng_state()
    b = src.sample(model, 0)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    assert model.training  # train mode restored
    eos, stop_id = tok.eos_token_id, tok.convert_tokens_to_ids("Question:")
    assert src.stop == gsm8k.task_stop_sequences()  # default: the lm-eval task's
    B, T = b.input_ids.shape
    assert B == 6 and b.extras["group"].tolist() == [0, 0, 1, 1, 2, 2]
    assert b.completion_mask.dtype == torch.float32 and b.attention_mask.dtype == torch.long
    n_eos = n_stop = 0
    for r in range(B):
        q = b.prompts[r]
        prompt = tok(gsm8k.format_prompt(q), add_special_tokens=False)["input_ids"]
        n = int(b.attention_mask[r].sum())
        assert b.attention_mask[r, :n].all() and not b.attention_mask[r, n:].any()  # right padded
        assert b.input_ids[r, : len(prompt)].tolist() == prompt
        comp_pos = b.completion_mask[r].nonzero().squeeze(-1).tolist()
        assert comp_pos == list(range(len(prompt), n))  # completion = every non-prompt real token
        comp = b.input_ids[r, len(prompt) : n].tolist()
        assert 1 <= len(comp) <= MAX_NEW
        assert eos not in comp[:-1]  # nothing after the first EOS
        assert stop_id not in comp[:-1]  # nor after the first stop string ("Question:" is one word here)
        if comp[-1] == eos:
            n_eos += 1
        elif comp[-1] == stop_id:
            n_stop += 1
        else:
            assert len(comp) == MAX_NEW  # neither: ran to the limit
        assert b.extras["eos"][r].item() == (comp[-1] == eos)
        assert b.extras["stopped"][r].item() == (comp[-1] == stop_id)
        text = tok.decode(comp, skip_special_tokens=True)
        assert b.extras["completions"][r] == text.split("Question:")[0]  # lm-eval's cut
        assert b.answers[r] == ANSWERS[QUESTIONS.index(q)]
        assert not b.input_ids[r, n:].ne(tok.pad_token_id).any()
    assert n_eos and n_stop and n_eos + n_stop < B  # the seed gives all three kinds of row
    assert b.metrics["eos_frac"] == pytest.approx(n_eos / B)
    assert b.metrics["stop_frac"] == pytest.approx(n_stop / B)
    assert b.metrics["finished_frac"] == pytest.approx((n_eos + n_stop) / B)
    assert b.metrics["completion_len"] == pytest.approx(b.completion_mask.sum().item() / B)
    for key in ("gen_time_s", "accuracy", "states_age", "n_samples"):
        assert key in b.metrics
    correct = [float(gsm8k.is_correct(c, a)) for c, a in zip(b.extras["completions"], b.answers)]
    assert b.extras["correct"].tolist() == correct
    assert T == int(b.attention_mask.sum(1).max())


def test_deterministic_under_seed_and_resumable(tok, model):
    a, b = make(tok, seed=5), make(tok, seed=5)
    a0, b0 = a.sample(model, 0), b.sample(model, 0)
    assert torch.equal(a0.input_ids, b0.input_ids) and torch.equal(a0.completion_mask, b0.completion_mask)
    state = a.state_dict()
    a1 = a.sample(model, 1)
    c = make(tok, seed=5)
    c.load_state_dict(state)
    c1 = c.sample(model, 1)
    assert torch.equal(a1.input_ids, c1.input_ids) and a1.prompts == c1.prompts
    assert a1.prompts != a0.prompts  # the cursor moved on
    other = make(tok, seed=6).sample(model, 0)
    assert not torch.equal(other.input_ids[:, :5], a0.input_ids[:, :5]) or other.prompts != a0.prompts
    with pytest.raises(ValueError, match="seed"):
        make(tok, seed=7).load_state_dict(state)


def test_refresh_every_reuses_states(tok, model):
    src = make(tok, refresh_every=2)
    s0, s1, s2 = (src.sample(model, k) for k in range(3))
    assert s1.input_ids is s0.input_ids  # step 1 reuses step 0's rollout
    assert s1.metrics["states_age"] == 1.0 and s1.metrics["gen_time_s"] == 0.0
    assert s0.metrics["states_age"] == 0.0 and s2.metrics["states_age"] == 0.0
    assert s2.prompts != s0.prompts

    # a loop counting steps from 1 still uses the first rollout for a whole period
    one = make(tok, refresh_every=2)
    r1, r2, r3 = (one.sample(model, k) for k in (1, 2, 3))
    assert r2.input_ids is r1.input_ids and r3.input_ids is not r1.input_ids

    # resume in the middle of a period: regenerate now, keep the refresh phase (0, 3, 6, ...)
    src = make(tok, refresh_every=3)
    src.sample(model, 0)
    src.sample(model, 1)
    state = src.state_dict()
    res = make(tok, refresh_every=3)
    res.load_state_dict(state)
    b2 = res.sample(model, 2)
    b3 = res.sample(model, 3)
    b4 = res.sample(model, 4)
    assert b2.metrics["states_age"] == 0.0 and b3.input_ids is not b2.input_ids
    assert b4.input_ids is b3.input_ids and b4.metrics["states_age"] == 1.0


def test_filter_keeps_only_rewarded_samples(tok, model):
    # learn what the policy samples, then make some of those samples "correct" by choosing golds
    probe = make(tok, seed=3).sample(model, 0)
    answers = list(ANSWERS)
    chosen = set()
    for r in range(len(probe.prompts)):
        got = gsm8k.extract_answer(probe.extras["completions"][r])
        if got is not None and r % 2 == 0:
            qi = QUESTIONS.index(probe.prompts[r])
            if qi not in chosen:
                answers[qi] = f"#### {got}"
                chosen.add(qi)
    assert chosen, "seed gives no sample with a number"
    unfiltered = make(tok, answers=answers, seed=3).sample(model, 0)
    filtered = make(tok, answers=answers, seed=3, filter={"reward": "gsm8k", "min": 1.0}).sample(model, 0)
    keep = [r for r in range(len(unfiltered.prompts)) if unfiltered.extras["correct"][r] == 1.0]
    assert keep and len(filtered.prompts) == len(keep)
    assert filtered.extras["completions"] == [unfiltered.extras["completions"][r] for r in keep]
    assert filtered.metrics["filter_keep_frac"] == pytest.approx(len(keep) / len(unfiltered.prompts))
    assert filtered.metrics["filtered_empty"] == 0.0
    assert all(gsm8k.reward(c, a) >= 1.0 for c, a in zip(filtered.extras["completions"], filtered.answers))


def test_filter_with_no_survivor_gives_empty_batch(tok, model):
    answers = ["#### 123456789"] * len(QUESTIONS)  # the tiny vocabulary cannot write it
    b = make(tok, answers=answers, filter={"reward": "gsm8k", "min": 1.0}).sample(model, 0)
    assert b.num_completion_tokens == 0 and b.metrics["filtered_empty"] == 1.0
    assert b.metrics["filter_keep_frac"] == 0.0


def test_accelerate_wrapper_and_signals_on_learner_batch(tok, model):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    cfg = run_cfg(refresh_every=2, signal={"type": "reward", "normalize_std": True})
    src = make(tok, cfg=cfg, accelerator=acc)
    assert src.refresh_every == 2 and src.record_old_logprobs

    class Wrapper(torch.nn.Module):  # DDP-like: .module holds the model
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, **kw):
            return self.module(**kw)

    policy = Wrapper(model)
    b = src.sample(policy, 0)
    old = b.extras["old_logprobs"]
    assert old.shape == b.input_ids.shape
    assert not bool(old[b.completion_mask == 0].ne(0).any())
    token_logp = completion_token_logprobs(policy, b)
    torch.testing.assert_close(old[:, 1:][b.completion_mask[:, 1:] > 0], token_logp.detach(), atol=1e-5, rtol=1e-5)

    loss, metrics = RewardSignal(cfg["signal"])(policy, b)
    loss.backward()
    assert torch.isfinite(loss) and metrics["clip_frac"] == 0.0
    model.zero_grad()

    teacher = copy.deepcopy(model)
    kl_cfg = with_defaults({"type": "teacher_kl", "teacher": "t", "direction": "reverse"}, "signal")
    loss, metrics = TeacherKLSignal(kl_cfg, teacher)(policy, b)
    assert abs(metrics["kl"]) < 1e-6
    assert metrics["completion_tokens"] == b.num_completion_tokens


def test_too_few_prompts_raise(tok):
    with pytest.raises(ValueError, match="do not fill one"):
        make(tok, cfg=run_cfg(optim={"batch_size": 100}))
    with pytest.raises(ValueError, match="answers"):
        LearnerStates(tok, QUESTIONS, ANSWERS[:-1], temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW,
                      samples_per_prompt=2, refresh_every=1, batch_size=3, grad_accum=1, max_length=19, seed=0)


def test_max_rows_keeps_the_first_rows_of_the_split(tok, model, tmp_path, caplog):
    from statepost.io import write_jsonl

    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", [{"question": q, "answer": a} for q, a in zip(QUESTIONS, ANSWERS)])
    src = make_state_source(run_cfg(max_rows=4, optim={"batch_size": 2}), tok, tmp_path)
    assert src.questions == QUESTIONS[:4]
    seen = {q for step in range(1, 7) for q in src.sample(model, step).prompts}
    assert seen == set(QUESTIONS[:4])  # 6 steps x 2 prompts cycle through the pool of 4

    entry = {"init": "base", "states": {"source": "dataset", "max_rows": 5}, "signal": {"type": "nll"},
             "optim": {"batch_size": 1}}
    cfg = {**with_defaults(entry, "run"), "seed": 0}
    assert len(make_state_source(cfg, tok, tmp_path)) == 5  # one example per step

    cfg["states"]["max_rows"] = 100
    with caplog.at_level("WARNING"):
        assert len(make_state_source(cfg, tok, tmp_path)) == len(QUESTIONS)
    assert "has only 13 rows" in caplog.text


def test_recorded_logprobs_equal_the_training_forward(tok, model):
    """The log-probs kept at sampling time (for the clipped ratio of reused rollouts) are those of the
    training forward on the same states: each row alone, unpadded, in train mode (dropout off)."""
    from statepost.models import disable_dropout

    cfg = run_cfg(refresh_every=2, signal={"type": "reward"})
    b = make(tok, cfg=cfg).sample(model, 0)
    old = b.extras["old_logprobs"]
    policy = copy.deepcopy(model)
    disable_dropout(policy)
    policy.train()
    for r in range(b.input_ids.shape[0]):
        n = int(b.attention_mask[r].sum())
        ids = b.input_ids[r : r + 1, :n]
        with torch.no_grad():
            logp = torch.log_softmax(policy(input_ids=ids).logits[0, :-1].float(), -1)
        target = logp.gather(-1, ids[0, 1:, None])[:, 0]
        completion = b.completion_mask[r, 1:n] > 0
        torch.testing.assert_close(old[r, 1:n][completion], target[completion], atol=1e-5, rtol=1e-5)
        assert completion.any() or b.completion_mask[r].sum() == 0
