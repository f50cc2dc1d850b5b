"""NLL signal, completion masks and dataset-state batching (core training parts)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from _train_toy import build_tokenizer, toy_rows
from statepost.gsm8k import format_prompt
from statepost.train.logprobs import completion_token_logprobs
from statepost.train.signals import NLLSignal
from statepost.train.batch import StateBatch, collate_states, padding_waste
from statepost.train.states import DatasetStates, encode_sft_example


class FixedLogits(torch.nn.Module):
    """A fake causal LM: the logits at position t depend only on t (a fixed table), plus a bias
    parameter so the loss has a gradient."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [T, V]
        self.bias = torch.nn.Parameter(torch.zeros(table.shape[1]))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.table[:t].unsqueeze(0).expand(b, t, -1) + self.bias)


TABLE = torch.tensor(
    [
        [2.0, 0.0, -1.0, 0.5, 0.0],
        [0.0, 1.0, 3.0, -2.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [-1.0, 2.0, 0.0, 0.0, 4.0],
        [0.5, -0.5, 2.5, 0.0, 1.0],
    ]
)


def dataset_states(rows, tok, **kw):
    """DatasetStates with the schema's grouping settings unless a test sets them."""
    return DatasetStates(rows, tok, **{"group_by_length": True, "bucket_steps": 64, **kw})


def _nll_by_hand(t: int, token: int) -> float:
    """-log softmax(TABLE[t])[token], with math only."""
    row = TABLE[t].tolist()
    return -(row[token] - math.log(sum(math.exp(x) for x in row)))


def _batch() -> StateBatch:
    # row 0: prompt [1, 2], completion [3, 4, 0]  (0 = EOS = pad)
    # row 1: prompt [4], completion [2, 0], then padding
    return collate_states([([1, 2, 3, 4, 0], 2), ([4, 2, 0], 1)], pad_token_id=0)


def test_collate_masks():
    b = _batch()
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 0], [4, 2, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # EOS (id 0) is a completion token in both rows although it equals the pad id
    assert b.completion_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert padding_waste(b) == pytest.approx(2 / 10)
    with pytest.raises(ValueError):
        collate_states([([1, 2], 2)], pad_token_id=0)  # no completion token


def test_nll_matches_hand_computed_values():
    b = _batch()
    model = FixedLogits(TABLE)
    loss, metrics = NLLSignal()(model, b)
    # targets: row 0 predicts 3 at t=1, 4 at t=2, 0 at t=3; row 1 predicts 2 at t=0, 0 at t=1
    terms = [_nll_by_hand(1, 3), _nll_by_hand(2, 4), _nll_by_hand(3, 0), _nll_by_hand(0, 2), _nll_by_hand(1, 0)]
    expected = sum(terms) / len(terms)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["nll"] == pytest.approx(expected, rel=1e-6)
    # the shared helper path gives the same number
    token_logp = completion_token_logprobs(model, b)  # [N]: the completion states only
    assert (-token_logp).mean().item() == pytest.approx(expected, rel=1e-6)
    # padding never contributes: change the logits at padded positions of row 1 only (t=3, 4)
    # by changing the table rows the padded positions would use for row 1 alone is impossible
    # with a position table, so instead check the mask count
    assert token_logp.numel() == len(terms)
    # gradient flows to the bias
    loss.backward()
    assert model.bias.grad is not None and model.bias.grad.abs().sum() > 0


def test_token_weighted_microbatches_equal_full_batch():
    """The loop's token weighting: sum_i loss_i * n_i / N equals the loss of the whole batch."""
    model = FixedLogits(TABLE)
    full = _batch()
    parts = [collate_states([([1, 2, 3, 4, 0], 2)], 0), collate_states([([4, 2, 0], 1)], 0)]
    sig = NLLSignal()
    n = [p.completion_mask[:, 1:].sum().item() for p in parts]
    combined = sum(sig(model, p)[0].item() * k / sum(n) for p, k in zip(parts, n))
    assert combined == pytest.approx(sig(model, full)[0].item(), rel=1e-6)


@pytest.fixture(scope="module")
def tok():
    rows = toy_rows(40)
    return build_tokenizer([f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows])


def test_completion_mask_is_answer_plus_eos(tok):
    row = toy_rows(1, seed=3)[0]
    ids, n_prompt = encode_sft_example(tok, row["question"], row["answer"])
    b = collate_states([(ids, n_prompt), (ids[:-3] + [tok.eos_token_id], n_prompt)], tok.pad_token_id)
    mask = b.completion_mask[0].bool()
    completion = b.input_ids[0][mask].tolist()
    assert completion[-1] == tok.eos_token_id
    assert tok.decode(completion[:-1]) == " " + row["answer"]
    assert tok.decode(b.input_ids[0][~mask].tolist()) == format_prompt(row["question"])
    assert tok.decode(b.input_ids[0][:n_prompt].tolist()).endswith("\nAnswer:")
    # row 1 is shorter: its padding (pad == eos) is outside both masks
    n1 = len(ids) - 2
    assert b.attention_mask[1].sum().item() == n1
    assert b.completion_mask[1, n1:].sum().item() == 0


def _epoch_indices(src, epoch_micro):
    return [src.sample().extras["example_index"].tolist() for _ in range(epoch_micro)]


def test_dataset_states_split_over_processes_and_accumulation(tok):
    rows = toy_rows(50, seed=1)
    single = dataset_states(rows, tok, batch_size=4, seed=7, max_length=256)
    procs = [
        dataset_states(rows, tok, batch_size=1, grad_accum=2, num_processes=2, process_index=p, seed=7, max_length=256)
        for p in range(2)
    ]
    assert len(single) == 12 and single.steps_per_epoch == 12 and len(procs[0]) == 24
    for step in range(12):
        whole = single.sample().extras["example_index"].tolist()
        # micro-batch a of process p = rows (a * P + p) * B ... of the step batch
        parts = [procs[p].sample().extras["example_index"].tolist() for p in range(2)]  # a = 0
        parts += [procs[p].sample().extras["example_index"].tolist() for p in range(2)]  # a = 1
        assert sum(parts, []) == whole, step
    # one epoch visits each example at most once; 50 % 4 = 2 dropped
    seen = sum(_epoch_indices(dataset_states(rows, tok, batch_size=4, seed=7, max_length=256), 12), [])
    assert len(seen) == len(set(seen)) == 48


def test_dataset_states_order_seeded_and_resumable(tok):
    rows = toy_rows(50, seed=1)
    a = dataset_states(rows, tok, batch_size=4, seed=7, max_length=256)
    b = dataset_states(rows, tok, batch_size=4, seed=7, max_length=256)
    c = dataset_states(rows, tok, batch_size=4, seed=8, max_length=256)
    ea, eb, ec = _epoch_indices(a, 30), _epoch_indices(b, 30), _epoch_indices(c, 30)
    assert ea == eb and ea != ec
    assert ea[:12] != ea[12:24]  # a new order each epoch
    # resume mid-epoch-2 from the state dict
    d = dataset_states(rows, tok, batch_size=4, seed=7, max_length=256)
    _epoch_indices(d, 17)
    e = dataset_states(rows, tok, batch_size=4, seed=7, max_length=256)
    e.load_state_dict(d.state_dict())
    assert _epoch_indices(e, 13) == ea[17:30]
    with pytest.raises(ValueError, match="seed"):
        c.load_state_dict(d.state_dict())


def test_length_grouping_reduces_padding(tok):
    rows = toy_rows(200, seed=2)
    waste = {}
    for grouped in (True, False):
        src = dataset_states(rows, tok, batch_size=8, seed=0, max_length=256, group_by_length=grouped)
        ws = [padding_waste(src.sample()) for _ in range(len(src))]
        waste[grouped] = sum(ws) / len(ws)
    assert waste[True] < 0.5 * waste[False]
    assert waste[False] > 0.05


def test_long_examples_skipped(tok):
    rows = toy_rows(20, seed=4)
    lengths = sorted(len(encode_sft_example(tok, r["question"], r["answer"])[0]) for r in rows)
    limit = lengths[10]
    src = dataset_states(rows, tok, batch_size=2, seed=0, max_length=limit)
    assert src.n_skipped == sum(n > limit for n in lengths)
    assert all(len(ids) <= limit for ids, _ in src.examples)
    with pytest.raises(ValueError, match="max_length"):
        dataset_states(rows, tok, batch_size=2, seed=0, max_length=lengths[0] - 1)
