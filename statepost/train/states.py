"""State sources: where the states a signal is applied to come from.

A *state* is a prompt plus a prefix of a completion. A batch of states is a
right-padded token matrix whose ``completion_mask`` marks the completion tokens;
every completion position is one state (its prefix) with one target token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .logprobs import completion_logprobs


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
    from statepost.gsm8k import format_prompt, format_target

    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id: the SFT completion ends with EOS")
    prompt_ids = list(tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"])
    completion_ids = list(tokenizer(format_target(answer), add_special_tokens=False)["input_ids"])
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


# ---------------------------------------------------------------------------------------------
# Learner states (on-policy helper): prompt + the CURRENT policy's own sampled completions.
# Used by OPD (signal teacher_kl), RL (signal reward) and rejection-sampling SFT (filter + nll).
# ---------------------------------------------------------------------------------------------

import dataclasses as _dataclasses  # noqa: E402
import time as _time  # noqa: E402


def _unwrap_model(model, accelerator=None):
    """The bare ``PreTrainedModel`` under accelerate/DDP/compile wrappers (for ``generate``)."""
    if accelerator is not None and hasattr(accelerator, "unwrap_model"):
        model = accelerator.unwrap_model(model)
    while hasattr(model, "module") and not hasattr(model, "generate"):
        model = model.module
    return getattr(model, "_orig_mod", model)


class LearnerStates:
    """States from the learner: G sampled completions of each prompt by the current policy.

    ``LearnerStates(run_cfg, tokenizer, prompts, answers, accelerator_or_device=None, seed=0)``

    * ``run_cfg``: the resolved run config (keys ``states``, ``signal``, ``optim`` as in the spec).
    * ``prompts``: raw GSM8K *questions* (formatted here with :func:`statepost.gsm8k.format_prompt`,
      as :class:`DatasetStates` does; pass ``prompts_are_formatted=True`` for ready prompts);
      ``answers``: the gold ``answer`` fields (with their ``#### n`` line), same length.
    * ``accelerator_or_device``: an ``accelerate.Accelerator`` (device, process split,
      ``unwrap_model``), a device, or ``None`` (the policy's own device).

    Prompt order: as :class:`DatasetStates`, one permutation per epoch drawn from ``(seed, epoch)``;
    an optimiser step consumes ``batch_size * grad_accum * num_processes`` prompts and micro-batch
    ``a`` of process ``p`` takes rows ``[(a*P + p)*B, (a*P + p + 1)*B)`` of them (the remainder of
    an epoch is dropped). Each prompt is sampled ``samples_per_prompt`` (G) times, so a micro-batch
    has ``B*G`` rows, grouped: ``extras["group"]`` holds the prompt index within the micro-batch.
    Prompts whose token length + ``max_new_tokens`` exceeds ``optim.max_length`` are dropped at
    construction (``n_skipped``): a prompt is never truncated.

    ``sample(policy, step)``: ``step`` is the optimiser step; the loop calls it once per
    micro-batch (``grad_accum`` times with the same ``step``). Fresh samples are drawn at the
    first call and then whenever ``refresh_every`` steps have passed since the last refresh (or
    nothing is cached, e.g. just after a resume, which keeps the refresh phase of the interrupted
    run); otherwise the micro-batches generated at the last refresh are returned again, in the
    same order (``states_age`` = steps since they were generated, ``gen_time_s`` = 0). For the reward signal ``updates_per_batch > 1``
    is the same thing: it is used as the refresh period when ``refresh_every`` is 1, and the two
    must agree otherwise.

    Generation: ``model.generate`` on the unwrapped policy in eval mode, ``torch.no_grad``, KV
    cache, ``do_sample=True`` with ``temperature``/``top_p`` and ``top_k=0`` (no other logits
    processors: the model's own ``generation_config`` is set aside for the call so a hub default
    cannot silently change the sampling distribution), stopping at ``tokenizer.eos_token_id``.
    Prompts are left-padded for generation and re-packed right-padded (:func:`collate_states`);
    ``completion_mask`` covers the generated tokens up to and including the first EOS (all of them
    when no EOS came: a truncated sample). The model's previous train/eval mode is restored.
    Sampling is seeded by ``(seed, process_index, generation count)`` inside ``torch.random.fork_rng``,
    so it is deterministic, resumable, and leaves the global RNG alone. Note that the signals score
    states at temperature 1: with ``temperature != 1`` or ``top_p < 1`` the states are sampled from a
    different distribution than the one trained (exactly on-policy only at 1.0/1.0).

    Extras (rows after filtering): ``rewards`` [N] (gsm8k reward with the signal's ``answer_mode``
    and ``format_reward``), ``correct`` [N], ``group`` [N], ``completions`` (decoded text, no special
    tokens), ``eos`` [N] (sample ended with EOS), and, when the reward signal reuses a rollout
    batch (refresh period > 1), ``old_logprobs`` [N, T]: the sampling-time log-probability of token
    ``input_ids[:, t]`` at position ``t`` (0 outside the completion), computed right after generation
    with the same wrapped ``policy`` forward the signal uses, in its training mode, under no grad.

    Metrics (of all B*G samples, before filtering): ``gen_time_s``, ``completion_len`` (mean
    generated tokens), ``eos_frac``, ``accuracy`` (gsm8k correctness), ``reward_mean``,
    ``states_age``, ``n_samples``; with a filter also ``filter_keep_frac`` and ``filtered_empty``
    (1.0 when no sample survived: the batch then keeps all rows but has an all-zero
    ``completion_mask``, ``num_completion_tokens == 0``; the loop must skip such a batch, and a loss
    computed on it is 0 with zero gradient anyway).

    ``state_dict()`` is JSON-serialisable (cursor and counters). The cached rollout batch is not
    saved: after a resume in the middle of a refresh period the next ``sample`` regenerates
    (seeded, from the next prompts), so such a resume is not bit-identical to an uninterrupted run;
    a resume at a refresh step is.
    """

    def __init__(
        self,
        run_cfg: dict,
        tokenizer,
        prompts: list[str],
        answers: list[str],
        accelerator_or_device=None,
        seed: int = 0,
        *,
        prompts_are_formatted: bool = False,
    ):
        from statepost import gsm8k

        states = run_cfg["states"]
        signal = run_cfg.get("signal", {}) or {}
        optim = run_cfg.get("optim", {}) or {}
        if len(prompts) != len(answers):
            raise ValueError(f"LearnerStates: {len(prompts)} prompts but {len(answers)} answers")
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise ValueError("LearnerStates: the tokenizer has no eos_token_id (generation stops at EOS)")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id

        self.temperature = float(states.get("temperature", 1.0))
        self.top_p = float(states.get("top_p", 1.0) or 1.0)
        self.max_new_tokens = int(states.get("max_new_tokens", 256))
        self.group_size = int(states.get("samples_per_prompt", 1))
        if self.temperature <= 0 or self.max_new_tokens < 1 or self.group_size < 1:
            raise ValueError("LearnerStates: need temperature > 0, max_new_tokens >= 1, samples_per_prompt >= 1")
        period = int(states.get("refresh_every", 1) or 1)
        updates = int(signal.get("updates_per_batch", 1) or 1) if signal.get("type") == "reward" else 1
        if updates > 1 and period == 1:
            period = updates
        elif updates > 1 and period != updates:
            raise ValueError(
                f"LearnerStates: states.refresh_every={period} and signal.updates_per_batch={updates} "
                "disagree (both say how many optimiser steps reuse one rollout batch)"
            )
        self.refresh_every = period
        self.need_old_logprobs = signal.get("type") == "reward" and period > 1
        self.filter = states.get("filter") or None
        if self.filter is not None and self.filter.get("reward", "gsm8k") != "gsm8k":
            raise ValueError(f"LearnerStates: unknown filter reward {self.filter.get('reward')!r}")
        self.filter_min = float(self.filter.get("min", 1.0)) if self.filter else None
        self.answer_mode = signal.get("answer_mode", "hash_then_last")
        self.format_reward = float(signal.get("format_reward", 0.0) or 0.0) if signal.get("type") == "reward" else 0.0
        if self.answer_mode not in gsm8k.ANSWER_MODES:
            raise ValueError(f"LearnerStates: unknown answer_mode {self.answer_mode!r}")

        acc = accelerator_or_device
        if acc is not None and hasattr(acc, "unwrap_model"):
            self.accelerator = acc
            self.device = acc.device
            self.num_processes = int(acc.num_processes)
            self.process_index = int(acc.process_index)
        else:
            self.accelerator = None
            self.device = torch.device(acc) if acc is not None else None
            self.num_processes, self.process_index = 1, 0
        self.batch_size = int(optim.get("batch_size", 8))
        self.grad_accum = int(optim.get("grad_accum", 1))
        max_length = int(optim.get("max_length", 512))
        self.seed = int(seed)

        self.prompt_ids: list[list[int]] = []
        self.questions: list[str] = []
        self.answers: list[str] = []
        self.n_skipped = 0
        for q, a in zip(prompts, answers):
            text = q if prompts_are_formatted else gsm8k.format_prompt(q)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if not ids:
                raise ValueError(f"LearnerStates: prompt tokenizes to nothing: {text[:80]!r}")
            if len(ids) + self.max_new_tokens > max_length:
                self.n_skipped += 1
                continue
            self.prompt_ids.append(ids)
            self.questions.append(q)
            self.answers.append(a)
        self.step_prompts = self.batch_size * self.grad_accum * self.num_processes
        self.steps_per_epoch = len(self.prompt_ids) // self.step_prompts
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"LearnerStates: {len(self.prompt_ids)} usable prompts ({self.n_skipped} too long for "
                f"max_length {max_length} with max_new_tokens {self.max_new_tokens}) do not fill one "
                f"optimiser step of {self.step_prompts} prompts"
            )
        self.cursor = 0  # micro-batches generated by this process
        self._order_cache = None
        self._cache: list[StateBatch] = []
        self._cur_step: int | None = None
        self._micro = 0
        self._gen_step = 0  # refresh phase: rollouts are redrawn every refresh_every steps from here
        self._made_step = 0  # optimiser step at which the cached rollouts were drawn
        self._resumed = False
        self._refreshing = False

    # -- order (same scheme as DatasetStates) --------------------------------------------------
    def __len__(self):  # learner states have no epochs in the training sense
        return None

    def epoch_order(self, epoch: int):
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.prompt_ids))[: self.steps_per_epoch * self.step_prompts]
        self._order_cache = (epoch, perm)
        return perm

    def _next_prompt_indices(self) -> list[int]:
        micro_per_epoch = self.steps_per_epoch * self.grad_accum
        epoch, idx = divmod(self.cursor, micro_per_epoch)
        step_in_epoch, micro = divmod(idx, self.grad_accum)
        perm = self.epoch_order(epoch)
        base = step_in_epoch * self.step_prompts + (micro * self.num_processes + self.process_index) * self.batch_size
        return [int(i) for i in perm[base : base + self.batch_size]]

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, policy, step: int) -> StateBatch:
        step = int(step)
        if step != self._cur_step:
            self._cur_step, self._micro = step, 0
            period = self.refresh_every
            self._refreshing = not self._cache or step - self._gen_step >= period or step < self._gen_step
            if self._refreshing:
                if self._resumed and not self._cache and step >= self._gen_step:
                    # keep the refresh phase of the interrupted run
                    self._gen_step = step - (step - self._gen_step) % period
                else:
                    self._gen_step = step
                self._cache, self._made_step, self._resumed = [], step, False
        if self._refreshing:
            batch = self.generate(policy)
            self._cache.append(batch)
            out = _dataclasses.replace(batch, metrics=dict(batch.metrics))
        else:
            cached = self._cache[self._micro % len(self._cache)]
            out = _dataclasses.replace(cached, metrics=dict(cached.metrics))
            out.metrics["gen_time_s"] = 0.0
        out.metrics["states_age"] = float(step - self._made_step)
        self._micro += 1
        return out

    def _device_of(self, model):
        if self.device is not None:
            return self.device
        try:
            return next(model.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    @torch.no_grad()
    def _generate_tokens(self, model, prompt_ids: list[list[int]], device) -> list[list[int]]:
        """Sampled completion token lists (up to and including the first EOS) per prompt row."""
        from transformers import GenerationConfig

        width = max(len(p) for p in prompt_ids)
        n = len(prompt_ids)
        input_ids = torch.full((n, width), int(self.pad_token_id), dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):  # LEFT padding for generation
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[i, width - len(p) :] = 1
        gen_cfg = GenerationConfig(
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=int(self.eos_token_id),
            pad_token_id=int(self.pad_token_id),
            use_cache=True,
        )
        saved_cfg = getattr(model, "generation_config", None)
        was_training = model.training
        model.eval()
        try:
            model.generation_config = GenerationConfig()  # no hub sampling defaults leak in
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=gen_cfg,
            )
        finally:
            if saved_cfg is not None:
                model.generation_config = saved_cfg
            model.train(was_training)
        gen = out[:, width:].tolist()
        completions = []
        for row in gen:
            try:
                cut = row.index(int(self.eos_token_id)) + 1
            except ValueError:
                cut = len(row)
            completions.append(row[:cut])
        return completions

    def generate(self, policy) -> StateBatch:
        """Draw a fresh micro-batch of ``B*G`` samples from ``policy`` (advances the prompt cursor)."""
        from statepost import gsm8k

        idx = self._next_prompt_indices()
        G = self.group_size
        rows = [i for i in idx for _ in range(G)]
        groups = [g for g in range(len(idx)) for _ in range(G)]
        model = _unwrap_model(policy, self.accelerator)
        device = self._device_of(model)

        t0 = _time.perf_counter()
        seed = int(np.random.SeedSequence([self.seed, self.process_index, self.cursor]).generate_state(1)[0])
        fork_devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            completions = self._generate_tokens(model, [self.prompt_ids[i] for i in rows], device)
        gen_time = _time.perf_counter() - t0
        self.cursor += 1

        eos = [bool(c) and c[-1] == self.eos_token_id for c in completions]
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        answers = [self.answers[i] for i in rows]
        correct = [1.0 if gsm8k.is_correct(t, a, self.answer_mode) else 0.0 for t, a in zip(texts, answers)]
        rewards = [gsm8k.reward(t, a, self.answer_mode, self.format_reward) for t, a in zip(texts, answers)]
        metrics = {
            "gen_time_s": gen_time,
            "completion_len": float(np.mean([len(c) for c in completions])),
            "eos_frac": float(np.mean(eos)),
            "accuracy": float(np.mean(correct)),
            "reward_mean": float(np.mean(rewards)),
            "n_samples": float(len(rows)),
        }

        keep = list(range(len(rows)))
        empty = False
        if self.filter is not None:
            filt_r = [
                gsm8k.reward(t, a, self.answer_mode, 0.0) for t, a in zip(texts, answers)
            ]
            keep = [k for k in keep if filt_r[k] >= self.filter_min]
            metrics["filter_keep_frac"] = len(keep) / len(rows)
            empty = not keep
            metrics["filtered_empty"] = 1.0 if empty else 0.0
            if empty:
                keep = list(range(len(rows)))  # keep the shapes, zero the mask below

        batch = collate_states(
            [(self.prompt_ids[rows[k]] + completions[k], len(self.prompt_ids[rows[k]])) for k in keep],
            self.pad_token_id,
            prompts=[self.questions[rows[k]] for k in keep],
            answers=[answers[k] for k in keep],
        )
        if empty:
            batch.completion_mask.zero_()
        batch.extras.update(
            rewards=torch.tensor([rewards[k] for k in keep], dtype=torch.float32),
            correct=torch.tensor([correct[k] for k in keep], dtype=torch.float32),
            group=torch.tensor([groups[k] for k in keep], dtype=torch.long),
            eos=torch.tensor([eos[k] for k in keep], dtype=torch.bool),
            prompt_index=torch.tensor([rows[k] for k in keep], dtype=torch.long),
            completions=[texts[k] for k in keep],
        )
        batch.metrics.update(metrics)
        if self.need_old_logprobs and not empty:
            batch.extras["old_logprobs"] = self._old_logprobs(policy, batch, device)
        return batch

    @torch.no_grad()
    def _old_logprobs(self, policy, batch: StateBatch, device) -> torch.Tensor:
        on_dev = batch.to(device)
        _, token_logp, mask = completion_logprobs(policy, on_dev)
        old = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        old[:, 1:] = (token_logp * mask).float().cpu()
        return old

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "seed": self.seed,
            "n_prompts": len(self.prompt_ids),
            "step_prompts": self.step_prompts,
            "process_index": self.process_index,
            "gen_step": self._gen_step,
        }

    def load_state_dict(self, state: dict) -> None:
        now = self.state_dict()
        for key in ("seed", "n_prompts", "step_prompts", "process_index"):
            if int(state[key]) != now[key]:
                raise ValueError(
                    f"LearnerStates.load_state_dict: {key} is {now[key]} now but {state[key]} in the checkpoint"
                )
        self.cursor = int(state["cursor"])
        self._gen_step = int(state.get("gen_step", 0))
        self._order_cache = None
        self._cache, self._cur_step, self._micro, self._resumed = [], None, 0, True
