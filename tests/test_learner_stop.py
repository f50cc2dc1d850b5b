"""Learner states stop where lm-eval's generation stops, and rewards, filters and signals see lm-eval's text.

A scripted policy (a Qwen3 whose next token is a fixed function of the current one) answers a GSM8K
prompt, then invents a new ``Question:`` with an answer of its own. Evaluation never sees the
invented part; neither may training.
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from _train_toy import build_tokenizer, word_tokenizer

from statepost import config as cfglib
from statepost import gsm8k
from statepost.config import with_defaults
from statepost.io import ConfigError
from statepost.train.registry import learner_states
from statepost.train.signals import RewardSignal, TeacherKLSignal
from statepost.train.stopping import holds_stop

WORDS = ["Question:", "Answer:", "What", "is", "1", "+", "2", "?", "so", "3", "Tell", "me", "####", "7"]
QUESTION = "What is 1 + 2 ?"
# the scripted continuation of "...\nAnswer:": a first answer, then an invented question and answer
SCRIPTS = {
    # no "#### N" in the first answer: strict-match 0, flexible-extract reads 3; the old checker read "#### 7"
    "bare": ["so", "3", "Question:", "Tell", "me", "####", "7"],
    # "#### 3" first: strict-match reads 3 either way; flexible-extract (the last number) read 7 before the cut
    "hash": ["####", "3", "Question:", "Tell", "me", "7"],
}


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


def scripted_model(tok, script: list[str]):
    """A 1-layer Qwen3 that is a deterministic bigram: after "Answer:" it writes ``script`` then EOS.

    Attention and MLP outputs are zero, so the last hidden state is the current token's one-hot
    embedding; the (untied) head maps it to a logit of 40 for the scripted successor, 0 elsewhere.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    V, H = len(tok), 32
    cfg = Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=None)
    model = Qwen3ForCausalLM(cfg).float()
    ids = tok.convert_tokens_to_ids(["Answer:"] + script + ["<eos>"])
    successor = {v: tok.eos_token_id for v in range(V)}
    successor.update(zip(ids[:-1], ids[1:]))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, H))
        model.lm_head.weight.zero_()
        for v, nxt in successor.items():
            model.lm_head.weight[nxt, v] = 40.0 / H**0.5  # the final RMSNorm scales a one-hot by sqrt(H)
    return model


def run_cfg(signal=None, **states):
    entry = {
        "init": "base",
        "states": {"source": "learner", "temperature": 1.0, "max_new_tokens": 10, "samples_per_prompt": 2, **states},
        "signal": signal or {"type": "reward"},
        "optim": {"batch_size": 1, "max_length": 32},
    }
    return {**with_defaults(entry, "run"), "seed": 0}


def sample(tok, model, gold="1 + 2 = 3\n#### 3", signal=None, **states):
    cfg = run_cfg(signal, **states)
    src = learner_states(cfg, tok, [{"question": QUESTION, "answer": gold}])
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        batch = src.sample(model, 0)
    finally:
        hook.remove()
    return batch, len(calls), src


def completion_words(tok, batch, row=0):
    ids = batch.input_ids[row][batch.completion_mask[row] > 0].tolist()
    return tok.convert_ids_to_tokens(ids)


def test_generation_stops_at_the_task_stop_string(tok):
    model = scripted_model(tok, SCRIPTS["bare"])
    batch, forwards, src = sample(tok, model)
    assert src.stop == ("Question:", "</s>", "<|im_end|>")  # the lm-eval task's, by default
    # the state ends with the token that completed the stop string; nothing after it is trained on
    assert completion_words(tok, batch) == ["so", "3", "Question:"]
    assert batch.extras["completions"] == ["so 3 ", "so 3 "]  # lm-eval's cut: the text before "Question:"
    assert batch.extras["stopped"].tolist() == [True, True] and batch.extras["eos"].tolist() == [False, False]
    assert batch.metrics["stop_frac"] == 1.0 and batch.metrics["finished_frac"] == 1.0
    assert batch.metrics["eos_frac"] == 0.0
    assert forwards == 3  # generation itself stopped: one forward per generated token, not 10

    # without stop strings the same policy runs on to EOS, through the invented question
    batch, forwards, _ = sample(tok, model, stop=[])
    assert completion_words(tok, batch) == SCRIPTS["bare"] + ["<eos>"]
    assert batch.extras["completions"][0] == "so 3 Question: Tell me #### 7"
    assert forwards == len(SCRIPTS["bare"]) + 1


def rewards(tok, script, mode, gold="1 + 2 = 3\n#### 3"):
    """The rewards of a scripted sample, graded (once, by the state source) under a reward signal's ``mode``."""
    cfg = run_cfg(signal={"type": "reward", "answer_mode": mode})
    batch = learner_states(cfg, tok, [{"question": QUESTION, "answer": gold}]).sample(scripted_model(tok, script), 0)
    return RewardSignal(cfg["signal"]).rewards(batch)[0].tolist(), batch


def test_a_sample_past_question_is_scored_on_its_first_answer_only(tok):
    # before: the checker read the invented "#### 7" and rewarded the whole continuation
    assert gsm8k.reward("so 3 Question: Tell me #### 7", "#### 7", "hash_then_last") == 1.0

    for mode in gsm8k.ANSWER_MODES:  # the invented answer earns nothing in any mode
        assert rewards(tok, SCRIPTS["bare"], mode, gold="1 + 2 = 7\n#### 7")[0] == [0.0, 0.0], mode
    expected = {"strict": 0.0, "flexible": 1.0, "hash": 0.0, "hash_then_last": 1.0}  # gold 3
    for mode, value in expected.items():
        r, batch = rewards(tok, SCRIPTS["bare"], mode)
        assert r == [value, value] and batch.extras["correct"].tolist() == r, mode  # accuracy: the reward's mode
    assert sample(tok, scripted_model(tok, SCRIPTS["bare"]), signal={"type": "nll"})[0].extras["correct"].tolist() == [
        0.0, 0.0]  # other signals' accuracy and filter read strict-match  # fmt: skip

    for mode in gsm8k.ANSWER_MODES:
        r, batch = rewards(tok, SCRIPTS["hash"], mode)
        assert batch.extras["completions"][0] == "#### 3 " and r == [1.0, 1.0], mode
    # uncut, flexible-extract would have read the invented 7
    assert not gsm8k.is_correct("#### 3 Question: Tell me 7", "#### 3", "flexible")


def test_the_default_reward_and_filter_read_strict_match(tok):
    assert with_defaults({"type": "reward"}, "signal")["answer_mode"] == "strict"
    model = scripted_model(tok, SCRIPTS["hash"])
    kept, _, _ = sample(tok, model, filter={"reward": "gsm8k", "min": 1.0})
    assert kept.metrics["filter_keep_frac"] == 1.0
    model = scripted_model(tok, SCRIPTS["bare"])  # "so 3": flexible-extract would keep it, strict-match does not
    dropped, _, _ = sample(tok, model, filter={"reward": "gsm8k", "min": 1.0})
    assert dropped.metrics["filter_keep_frac"] == 0.0 and dropped.num_completion_tokens == 0


def test_opd_states_end_at_the_stop_string(tok):
    model = scripted_model(tok, SCRIPTS["bare"])
    batch, _, _ = sample(tok, model, signal={"type": "teacher_kl", "teacher": "base"})
    teacher = copy.deepcopy(model)
    _, metrics = TeacherKLSignal(with_defaults({"type": "teacher_kl", "teacher": "base"}, "signal"), teacher)(model, batch)
    assert metrics["completion_tokens"] == 2 * 3  # "so", "3", "Question:" per sample


def test_config_stop_overrides_the_task(tok):
    model = scripted_model(tok, SCRIPTS["bare"])
    batch, forwards, src = sample(tok, model, stop=["me"])
    assert src.stop == ("me",)
    assert completion_words(tok, batch) == ["so", "3", "Question:", "Tell", "me"]
    assert batch.extras["completions"][0] == "so 3 Question: Tell "
    assert forwards == 5
    assert run_cfg()["states"]["stop"] is None  # schema default: the task's


@pytest.mark.parametrize("bad", [[""], "Question:", [1]])
def test_config_rejects_bad_stop(bad):
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "toy.yaml").read_text())
    raw["runs"]["rl"]["states"]["stop"] = bad
    with pytest.raises(ConfigError, match="runs.rl.states.stop"):
        cfglib.validate(copy.deepcopy(raw))


def test_stop_strings_over_bpe_tokens_and_special_tokens():
    """A stop string split over byte-level BPE tokens, or a special token, ends the row at the token completing it."""
    tok = build_tokenizer(["Question: how many?\nAnswer: 3 + 4 = 7.\nThe answer is 7."] * 20)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    stop = gsm8k.task_stop_sequences()
    for text, expect in [(" 3 + 4 = 7.\n\nQuestion: how", "Question:"), (" 7.<|im_end|>The answer", "<|im_end|>"),
                         (" 7.\nThe answer is 7.", None)]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        held = holds_stop(tok, stop, [ids[:k] for k in range(1, len(ids) + 1)])
        fired = held.index(True) + 1 if any(held) else None
        if expect is None:
            assert fired is None
            continue
        assert all(held[fired - 1 :])  # once held, held at every later length
        prefix = tok.decode(ids[:fired], skip_special_tokens=False)
        assert prefix.endswith(expect) or expect in prefix and expect not in tok.decode(ids[: fired - 1])
        assert expect not in tok.decode(ids[: fired - 1], skip_special_tokens=False)
        assert gsm8k.cut_at_stop(tok.decode(ids[:fired], skip_special_tokens=True), stop) == text.split(expect)[0]
