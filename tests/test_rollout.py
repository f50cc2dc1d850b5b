"""The rollout fast path draws what ``generate`` draws, with a group's prompt prefilled once and
finished rows dropped from the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from _train_toy import build_model, word_tokenizer

from statepost.train.rollout import sample_groups
from statepost.train.stopping import holds_stop
from statepost.train import states
from statepost.train.states import LearnerStates

WORDS = ["Question:", "Answer:", "What", "is", "+", "?", "####", "="] + [str(i) for i in range(10)]
QUESTIONS = [f"What is {a} + {b} ?" for a in range(4) for b in range(3)]
ANSWERS = [f"#### {a + b}" for a in range(4) for b in range(3)]


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model(tok):
    m = build_model(len(tok), layers=2, heads=2, kv_heads=1, max_positions=64, eos_id=tok.eos_token_id)
    with torch.no_grad():  # some rows end at EOS, some at "Question:", some run out
        m.model.embed_tokens.weight[tok.eos_token_id] *= 3.0
        m.model.embed_tokens.weight[tok.convert_tokens_to_ids("Question:")] *= 3.0
    return m.eval()


def prompts(tok, n):
    return [tok(f"Question: {q}\nAnswer:")["input_ids"] for q in QUESTIONS[:n]]


def generate_rows(model, rows, eos, *, temperature, top_p, max_new_tokens):
    """``generate`` on left-padded rows; each completion cut after its first EOS."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    model.generation_config = GenerationConfig()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=eos))
    gen = out[:, width:].tolist()
    return [g[: g.index(eos) + 1] if eos in g else g for g in gen]


@pytest.mark.parametrize("group_size,temperature,top_p", [(1, 1.0, 1.0), (3, 1.0, 1.0), (4, 0.7, 0.9), (2, 1.5, 1.0)])
def test_same_samples_as_generate(tok, model, group_size, temperature, top_p):
    ps = prompts(tok, 5)
    rows = [p for p in ps for _ in range(group_size)]
    eos = tok.eos_token_id
    for seed in range(3):
        torch.manual_seed(seed)
        want = generate_rows(model, rows, eos, temperature=temperature, top_p=top_p, max_new_tokens=12)
        torch.manual_seed(seed)
        got, stopped = sample_groups(model, ps, group_size, temperature=temperature, top_p=top_p,
                                     max_new_tokens=12, eos_token_id=eos, pad_token_id=eos)
        assert got == want
        assert stopped == [False] * len(rows)
    lengths = [len(c) for c in got]
    assert min(lengths) < 12 and any(c[-1] != eos for c in got)  # some rows end early, some run out


class StopAt(StoppingCriteria):
    """A ``generate`` stopping criterion: a row is done once its completion holds a stop string."""

    def __init__(self, tok, stop, width):
        self.tok, self.stop, self.width, self.at = tok, stop, width, {}

    def __call__(self, input_ids, scores=None, **kwargs):
        gen = input_ids[:, self.width :].tolist()
        for r, held in enumerate(holds_stop(self.tok, self.stop, gen)):
            if held and r not in self.at:
                self.at[r] = len(gen[r])
        return torch.tensor([r in self.at for r in range(len(gen))])


def generate_reference(tok, stop):
    """What sample_groups returns, from ``generate`` with a stop-string criterion on every row."""
    def sample(model, prompts, G, *, temperature, top_p, max_new_tokens, eos_token_id, pad_token_id, **kw):
        rows = [list(p) for p in prompts for _ in range(G)]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        crit = StopAt(tok, stop, width)
        model.generation_config = GenerationConfig()
        out = model.generate(input_ids=ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([crit]),
                             generation_config=GenerationConfig(
                                 do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id))
        completions, stopped = [], []
        for r, row in enumerate(out[:, width:].tolist()):
            eos_at = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
            at = crit.at.get(r)  # generate pads a stopped row (pad may be EOS)
            stopped.append(at is not None and (at < eos_at or row[eos_at - 1] != eos_token_id))
            completions.append(row[: at if stopped[-1] else eos_at])
        return completions, stopped
    return sample


def learner(tok):
    return LearnerStates(tok, QUESTIONS, ANSWERS, temperature=1.0, top_p=1.0, max_new_tokens=10, samples_per_prompt=3,
                         refresh_every=1, batch_size=4, grad_accum=1, max_length=64, seed=1, stop=["Question:"])


def test_learner_states_match_generate_with_stop_strings(tok, model, monkeypatch):
    """A LearnerStates micro-batch is the same through the sampler and through ``generate`` with a
    stop-string criterion."""
    src = learner(tok)
    fast_batches = [src.generate(model) for _ in range(3)]
    monkeypatch.setattr(states, "sample_groups", generate_reference(tok, ["Question:"]))
    slow = learner(tok)
    for a in fast_batches:
        b = slow.generate(model)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
        assert a.extras["completions"] == b.extras["completions"]
        assert torch.equal(a.extras["stopped"], b.extras["stopped"]) and torch.equal(a.extras["eos"], b.extras["eos"])
    assert a.extras["stopped"].any() and a.extras["eos"].any()  # both endings were exercised


def test_lockstep_keeps_every_row_and_decodes_until_all_processes_are_done(tok, model):
    """FSDP's mode (``all_done``): the same samples, no row dropped, and as many forwards as the
    slowest process needs (here a fake other process that is never done before the last step)."""
    ps, G, eos = prompts(tok, 4), 3, tok.eos_token_id
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=12, eos_token_id=eos, pad_token_id=eos,
              stopped=lambda rows: [len(r) >= 6 for r in rows])  # every row ends within 6 tokens
    torch.manual_seed(0)
    want, want_stopped = sample_groups(model, ps, G, **kw)
    for other_done in (True, False):
        shapes, asked = [], []
        hook = model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(kwargs["input_ids"].shape),
                                               with_kwargs=True)
        try:
            torch.manual_seed(0)
            got, got_stopped = sample_groups(model, ps, G, all_done=lambda local: asked.append(local) or (
                local and other_done), **kw)
        finally:
            hook.remove()
        assert (got, got_stopped) == (want, want_stopped)
        assert all(s[0] == len(ps) * G for s in shapes[1:])  # no row left the batch
        local_steps = max(len(c) for c in want)
        assert asked[:local_steps] == [False] * (local_steps - 1) + [True] or local_steps == kw["max_new_tokens"]
        # forwards: the prefill, then one per step until every process is done
        assert len(shapes) == 1 + (local_steps - 1 if other_done else kw["max_new_tokens"] - 1)
    assert max(len(c) for c in want) < kw["max_new_tokens"] and any(want_stopped) and not all(want_stopped)


def test_prefills_each_prompt_once_and_drops_finished_rows(tok, model):
    ps, G, eos = prompts(tok, 4), 3, tok.eos_token_id
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        torch.manual_seed(0)
        got, _ = sample_groups(model, ps, G, temperature=1.0, top_p=1.0, max_new_tokens=12,
                               eos_token_id=eos, pad_token_id=eos)
    finally:
        hook.remove()
    prefill, decode = batch_sizes[0], [s[0] for s in batch_sizes[1:]]
    assert prefill == (len(ps), max(len(p) for p in ps))  # the distinct prompts, not P * G rows
    assert all(s[1] == 1 for s in batch_sizes[1:])  # one new token per row with the KV cache
    # at decode step t the batch holds exactly the rows still going after t tokens
    assert decode == [sum(len(c) > t for c in got) for t in range(1, len(decode) + 1)]
    assert decode[-1] < len(ps) * G  # rows did leave the batch
    assert sum(decode) + len(ps) * prefill[1] < len(ps) * G * (prefill[1] + len(decode))  # less work than generate


def test_bad_arguments_are_named(tok, model):
    with pytest.raises(ValueError, match="group_size 0"):
        sample_groups(model, prompts(tok, 1), 0, temperature=1.0, top_p=1.0, max_new_tokens=4,
                      eos_token_id=1, pad_token_id=1)
