"""State sources: where the states a signal is applied to come from.

A *state* is a prompt plus a prefix of a completion. A batch of states is a
right-padded token matrix whose ``completion_mask`` marks the completion tokens;
every completion position is one state (its prefix) with one target token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class StateBatch:
    input_ids: torch.LongTensor  # [B, T] prompt + completion, right-padded
    attention_mask: torch.LongTensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] float, 1.0 where input_ids[:, t] is a completion token
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to(self, device) -> "StateBatch":
        def move(x):
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return StateBatch(
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            completion_mask=move(self.completion_mask),
            prompts=self.prompts,
            answers=self.answers,
            extras={k: move(v) for k, v in self.extras.items()},
            metrics=dict(self.metrics),
        )

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum().item())


class StateSource(Protocol):
    def __len__(self) -> int | None: ...

    def sample(self, policy, step: int) -> StateBatch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# ---------------------------------------------------------------------------------------------
# Dataset states (core helper): prompt + gold-completion prefixes, batched grouped by length.
# ---------------------------------------------------------------------------------------------

import numpy as np  # noqa: E402  (kept in this section so sections stay independent)


def collate_states(
    sequences: list[tuple[list[int], int]],
    pad_token_id: int,
    *,
    prompts: list[str] | None = None,
    answers: list[str] | None = None,
    pad_to_multiple_of: int | None = None,
) -> StateBatch:
    """Right-pad ``(token_ids, n_prompt_tokens)`` pairs into a :class:`StateBatch`.

    ``completion_mask[b, t]`` is 1.0 exactly for ``n_prompt <= t < len(token_ids)``: the
    completion tokens (the targets). Padding is found from the lengths, never from the pad id
    (the pad token may equal EOS, as in Qwen3 base).
    """
    if not sequences:
        raise ValueError("collate_states: empty batch")
    width = max(len(ids) for ids, _ in sequences)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n = len(sequences)
    input_ids = torch.full((n, width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.float32)
    for b, (ids, n_prompt) in enumerate(sequences):
        if not 0 < n_prompt < len(ids):
            raise ValueError(f"collate_states: row {b} has {n_prompt} prompt tokens of {len(ids)}")
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        completion_mask[b, n_prompt : len(ids)] = 1.0
    return StateBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        prompts=list(prompts or []),
        answers=list(answers or []),
    )


def padding_waste(batch: StateBatch) -> float:
    """Padded tokens / all tokens of the (micro-)batch."""
    total = batch.attention_mask.numel()
    return float(1.0 - batch.attention_mask.sum().item() / total) if total else 0.0


def encode_sft_example(tokenizer, question: str, answer: str) -> tuple[list[int], int]:
    """Token ids of ``format_prompt(question)`` + ``" " + answer`` + EOS, and the prompt length.

    Prompt and completion are encoded separately, without special tokens (as lm-eval's hf model
    encodes a gsm8k context; Qwen has no BOS), so training sees exactly the token boundary that
    generation after the prompt sees at evaluation.
    """
    from statepost.gsm8k import format_prompt

    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id: the SFT completion ends with EOS")
    prompt_ids = list(tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"])
    completion_ids = list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    if not prompt_ids:
        raise ValueError("empty prompt after tokenization")
    return prompt_ids + completion_ids + [int(tokenizer.eos_token_id)], len(prompt_ids)


class DatasetStates:
    """States from a dataset: every prefix of every gold completion (SFT, off-policy distillation).

    Order: one order per epoch, the same in every process, drawn from ``(seed, epoch)`` only, so
    resuming needs nothing but the cursor. An optimiser step consumes ``batch_size * grad_accum *
    num_processes`` examples (the *step batch*); micro-batch ``a`` of process ``p`` is rows
    ``[(a * P + p) * B, (a * P + p + 1) * B)`` of it. So the same global batch gives the same
    examples per optimiser step whatever the split over processes and accumulation.

    Length grouping (``group_by_length``): shuffle, cut into mega-batches of ``bucket_steps``
    step batches, sort each mega-batch by length, cut into step batches, shuffle the step
    batches. Examples that do not fill a last step batch are dropped for that epoch (a different
    random remainder each epoch). Examples longer than ``max_length`` are skipped (counted in
    ``n_skipped``): truncating a prompt would change the task.
    """

    def __init__(
        self,
        rows: list[dict],
        tokenizer,
        *,
        batch_size: int,
        seed: int,
        grad_accum: int = 1,
        num_processes: int = 1,
        process_index: int = 0,
        max_length: int = 512,
        group_by_length: bool = True,
        bucket_steps: int = 64,
        source_name: str = "data",
    ):
        if batch_size < 1 or grad_accum < 1 or num_processes < 1:
            raise ValueError("batch_size, grad_accum and num_processes must be >= 1")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} not in [0, {num_processes})")
        self.batch_size = int(batch_size)
        self.grad_accum = int(grad_accum)
        self.num_processes = int(num_processes)
        self.process_index = int(process_index)
        self.seed = int(seed)
        self.group_by_length = bool(group_by_length)
        self.bucket_steps = max(1, int(bucket_steps))
        self.pad_token_id = tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = tokenizer.eos_token_id
        self.examples: list[tuple[list[int], int]] = []
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.n_skipped = 0
        for i, row in enumerate(rows):
            try:
                question, answer = row["question"], row["answer"]
            except KeyError as e:
                raise ValueError(f"{source_name}: row {i + 1} has no {e.args[0]!r} field") from None
            ids, n_prompt = encode_sft_example(tokenizer, question, answer)
            if len(ids) > max_length:
                self.n_skipped += 1
                continue
            self.examples.append((ids, n_prompt))
            self.prompts.append(question)
            self.answers.append(answer)
        self.step_examples = self.batch_size * self.grad_accum * self.num_processes
        self.steps_per_epoch = len(self.examples) // self.step_examples
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{source_name}: {len(self.examples)} usable examples ({self.n_skipped} longer than "
                f"max_length {max_length}) do not fill one optimiser step of {self.step_examples}"
            )
        self.lengths = np.array([len(ids) for ids, _ in self.examples])
        self.cursor = 0  # micro-batches consumed by this process
        self._order_cache: tuple[int, list[np.ndarray]] | None = None

    # -- order -------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        """The step batches of ``epoch``: a list of index arrays of ``step_examples`` each."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.examples))[: self.steps_per_epoch * self.step_examples]
        if self.group_by_length:
            mega = self.step_examples * self.bucket_steps
            chunks = []
            for start in range(0, len(perm), mega):
                part = perm[start : start + mega]
                # stable sort, longest first; ties keep the random order
                chunks.append(part[np.argsort(-self.lengths[part], kind="stable")])
            perm = np.concatenate(chunks)
        steps = [perm[i * self.step_examples : (i + 1) * self.step_examples] for i in range(self.steps_per_epoch)]
        if self.group_by_length:
            steps = [steps[i] for i in rng.permutation(len(steps))]
        self._order_cache = (epoch, steps)
        return steps

    def __len__(self) -> int:
        """Micro-batches per epoch for one process (= optimiser steps per epoch * grad_accum)."""
        return self.steps_per_epoch * self.grad_accum

    def position(self) -> tuple[int, int, int]:
        """(epoch, step within the epoch, micro-batch within the step) of the next sample."""
        epoch, idx = divmod(self.cursor, len(self))
        step, micro = divmod(idx, self.grad_accum)
        return epoch, step, micro

    def sample(self, policy=None, step: int = 0) -> StateBatch:
        epoch, step_in_epoch, micro = self.position()
        rows = self.epoch_order(epoch)[step_in_epoch]
        start = (micro * self.num_processes + self.process_index) * self.batch_size
        idx = rows[start : start + self.batch_size]
        batch = collate_states(
            [self.examples[i] for i in idx],
            self.pad_token_id,
            prompts=[self.prompts[i] for i in idx],
            answers=[self.answers[i] for i in idx],
        )
        batch.extras["example_index"] = torch.as_tensor(idx, dtype=torch.long)
        batch.metrics["epoch"] = float(epoch)
        self.cursor += 1
        return batch

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "seed": self.seed,
            "n_examples": len(self.examples),
            "step_examples": self.step_examples,
            "process_index": self.process_index,
        }

    def load_state_dict(self, state: dict) -> None:
        now = self.state_dict()
        for key in ("seed", "n_examples", "step_examples", "process_index"):
            if int(state[key]) != now[key]:
                raise ValueError(
                    f"DatasetStates.load_state_dict: {key} is {now[key]} now but {state[key]} in the checkpoint"
                )
        self.cursor = int(state["cursor"])
        self._order_cache = None
