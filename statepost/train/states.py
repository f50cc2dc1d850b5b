"""State sources: where the states a signal is applied to come from.

``DatasetStates`` gives every prefix of every gold completion of a dataset (SFT, off-policy
distillation); ``LearnerStates`` gives the current policy's own sampled completions (on-policy
distillation, RL, rejection-sampling SFT). Both produce :class:`~statepost.train.batch.StateBatch`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from statepost import gsm8k

from .batch import StateBatch, collate_states
from .distributed import is_fsdp, sum_over_processes
from .logprobs import completion_token_logprobs, unwrap
from .rollout import sample_groups
from .stopping import holds_stop


MIX_STREAM = 0x6D6978  # "mix": the learner_frac coins' own random stream, apart from sampling's


def encode_sft_example(tokenizer, question: str, answer: str) -> tuple[list[int], int]:
    """Token ids of ``format_prompt(question)`` + ``" " + answer`` + EOS, and the prompt length.

    Prompt and completion are encoded separately, without special tokens (as lm-eval's hf model
    encodes a gsm8k context; Qwen has no BOS), so training sees exactly the token boundary that
    generation after the prompt sees at evaluation.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id: the SFT completion ends with EOS")
    prompt_ids = list(tokenizer(gsm8k.format_prompt(question), add_special_tokens=False)["input_ids"])
    completion_ids = list(tokenizer(gsm8k.format_target(answer), add_special_tokens=False)["input_ids"])
    if not prompt_ids:
        raise ValueError("empty prompt after tokenization")
    return prompt_ids + completion_ids + [int(tokenizer.eos_token_id)], len(prompt_ids)


class EpochOrder:
    """Which items each micro-batch takes: one order per epoch, the same in every process, drawn from
    ``(seed, epoch)`` only, so resuming needs nothing but the number of micro-batches taken.

    An optimiser step takes ``step_size = batch_size * grad_accum * num_processes`` items; micro-batch
    ``a`` of process ``p`` is items ``[(a*P + p)*B, (a*P + p + 1)*B)`` of the step, so a global batch
    gives the same items per step however it is split over processes and accumulation. Items that do
    not fill a last step are dropped for that epoch (a different random remainder each epoch).

    With ``lengths`` (length grouping): shuffle, cut into windows of ``bucket_steps`` steps' items,
    sort each window longest first (stable: ties keep the random order), cut into steps, shuffle them.
    """

    def __init__(self, n_items: int, *, seed: int, batch_size: int, grad_accum: int, num_processes: int,
                 process_index: int, lengths: np.ndarray | None = None, bucket_steps: int = 1):
        if batch_size < 1 or grad_accum < 1 or num_processes < 1:
            raise ValueError("batch_size, grad_accum and num_processes must be >= 1")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} not in [0, {num_processes})")
        self.n_items, self.seed = n_items, int(seed)
        self.batch_size, self.grad_accum = int(batch_size), int(grad_accum)
        self.num_processes, self.process_index = int(num_processes), int(process_index)
        self.lengths, self.bucket_steps = lengths, max(1, int(bucket_steps))
        self.step_size = self.batch_size * self.grad_accum * self.num_processes
        self.steps_per_epoch = n_items // self.step_size
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def steps(self, epoch: int) -> list[np.ndarray]:
        """The steps of ``epoch``: ``steps_per_epoch`` index arrays of ``step_size`` items."""
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.n_items)[: self.steps_per_epoch * self.step_size]
            if self.lengths is not None:
                window = self.step_size * self.bucket_steps
                windows = [perm[i : i + window] for i in range(0, len(perm), window)]
                perm = np.concatenate([w[np.argsort(-self.lengths[w], kind="stable")] for w in windows])
            steps = [perm[i * self.step_size : (i + 1) * self.step_size] for i in range(self.steps_per_epoch)]
            if self.lengths is not None:
                steps = [steps[i] for i in rng.permutation(len(steps))]
            self._cache = (epoch, steps)
        return self._cache[1]

    def micro_batch(self, cursor: int) -> tuple[int, np.ndarray]:
        """``(epoch, item indices)`` of this process's micro-batch number ``cursor``."""
        epoch, i = divmod(cursor, self.steps_per_epoch * self.grad_accum)
        step, micro = divmod(i, self.grad_accum)
        start = (micro * self.num_processes + self.process_index) * self.batch_size
        return epoch, self.steps(epoch)[step][start : start + self.batch_size]


class DatasetStates:
    """States from a dataset: every prefix of every gold completion (SFT, off-policy distillation).

    Examples in :class:`EpochOrder`, grouped by length when ``group_by_length``. Examples longer than
    ``max_length`` are skipped (``n_skipped``): truncating a prompt would change the task.
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
        max_length: int,
        group_by_length: bool,
        bucket_steps: int,
    ):
        self.pad_token_id = tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = tokenizer.eos_token_id
        self.examples: list[tuple[list[int], int]] = []
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.n_skipped = 0
        for row in rows:
            ids, n_prompt = encode_sft_example(tokenizer, row["question"], row["answer"])
            if len(ids) > max_length:
                self.n_skipped += 1
                continue
            self.examples.append((ids, n_prompt))
            self.prompts.append(row["question"])
            self.answers.append(row["answer"])
        lengths = np.array([len(ids) for ids, _ in self.examples]) if group_by_length else None
        self.order = EpochOrder(
            len(self.examples), seed=seed, batch_size=batch_size, grad_accum=grad_accum,
            num_processes=num_processes, process_index=process_index, lengths=lengths, bucket_steps=bucket_steps,
        )
        self.steps_per_epoch = self.order.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.examples)} usable examples ({self.n_skipped} longer than max_length {max_length}) "
                f"do not fill one optimiser step of {self.order.step_size}"
            )
        self.cursor = 0  # micro-batches taken by this process

    def __len__(self) -> int:
        """Micro-batches per epoch for one process (= optimiser steps per epoch * grad_accum)."""
        return self.steps_per_epoch * self.order.grad_accum

    def sample(self, policy=None, step: int = 0) -> StateBatch:
        epoch, idx = self.order.micro_batch(self.cursor)
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

    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "seed": self.order.seed,
            "n_examples": len(self.examples),
            "step_examples": self.order.step_size,
            "process_index": self.order.process_index,
        }

    def load_state_dict(self, state: dict) -> None:
        now = self.state_dict()
        for key in ("seed", "n_examples", "step_examples", "process_index"):
            if int(state[key]) != now[key]:
                raise ValueError(
                    f"DatasetStates.load_state_dict: {key} is {now[key]} now but {state[key]} in the checkpoint"
                )
        self.cursor = int(state["cursor"])


class LearnerStates:
    """States from the learner: ``samples_per_prompt`` completions of each prompt by the current policy.

    Prompts (GSM8K questions, formatted as :class:`DatasetStates` formats them) come in
    :class:`EpochOrder`, ``batch_size`` per micro-batch, so a micro-batch has ``batch_size * samples_per_prompt``
    rows grouped by prompt (``extras["group"]``: the prompt's place in the micro-batch). A prompt whose tokens + ``max_new_tokens`` exceed ``max_length`` is
    dropped (``n_skipped``), never truncated.

    ``sample(policy, step)`` is called ``grad_accum`` times per optimiser step. Samples are drawn
    afresh every ``refresh_every`` steps; in between, the micro-batches of the last draw come back in
    order (``states_age`` steps old, ``gen_time_s`` 0). Nothing is cached after a resume: the next
    call draws (keeping the refresh phase), so a resume inside a refresh period is not bit-identical.

    Sampling: the unwrapped policy in eval mode draws what ``generate`` would draw (``temperature`` /
    ``top_p``, ``top_k=0`` and no other logits processor; the model's own generation_config plays no
    part), through :func:`~statepost.train.rollout.sample_groups`, which prefills a group's prompt once
    and drops finished rows from the batch; under FSDP it keeps them and every process decodes until all
    are done (every process runs as many forwards, as the sharded weights are gathered in each), as
    ``generate(synced_gpus=True)`` would. Each sample runs up to and including the first EOS or the
    token that completes the first ``stop`` string; seeded by
    ``(seed, process_index, cursor)`` in ``fork_rng``, so the global RNG is untouched. Signals score
    at temperature 1: only 1.0 / 1.0 is exactly on-policy.

    Stop strings (``stop``; None: the GSM8K lm-eval task's ``generation_kwargs.until``, see
    :func:`statepost.gsm8k.task_stop_sequences`) end generation as they end it at evaluation. A
    completion cut at a stop string is finished, like one that ends at EOS. Its text
    (``extras["completions"]``: what is graded) is lm-eval's: the decoded
    completion cut before the first stop string (:func:`statepost.gsm8k.cut_at_stop`). Its tokens (the
    states signals train on) are the sampled tokens up to and including the one that completes the
    stop string, as EOS is kept: they are the policy's decision to end its answer, which evaluation's
    generation also samples; nothing after that token is in the batch.

    ``learner_frac`` (lambda, TRL GKD's ``lmbda``) mixes the two sources prompt by prompt: each prompt of a
    micro-batch takes the learner's sample with probability lambda, else its gold solution as
    :class:`DatasetStates` encodes it (one sample per prompt, so a prompt weighs the same either way). The coin
    of the prompt at position j of micro-batch ``cursor`` is ``u < lambda`` with ``u`` drawn from ``(seed,
    process_index, cursor)`` alone, so the learner's prompts at a smaller lambda are a subset of those at a larger
    one, and at 1 every prompt samples exactly as without mixing (``extras["from_learner"]``, metric
    ``learner_frac``: the fraction realised). Gold rows count as finished and correct; the sampling metrics below
    are over the learner's samples (absent from a micro-batch with none).

    Each completion is graded once, here: ``correct`` under ``answer_mode`` (:func:`statepost.gsm8k.is_correct`; the
    reward signal's mode, else lm-eval's strict-match) and ``formatted`` (a ``#### N`` line). The reward signal,
    the filter and the metrics read those. ``filter_min`` (rejection sampling) drops the samples whose ``correct``
    is below it; when none is left the batch keeps its rows with an all-zero ``completion_mask``. ``record_old_logprobs``: the
    policy's log-probs at sampling time go to ``extras["old_logprobs"]`` [B, T] (0 outside the
    completion), for a signal that reuses a rollout batch.

    Extras: ``completions`` (text, cut at the stop string), ``correct``, ``formatted``,
    ``group``, ``eos`` (ended at EOS), ``stopped`` (ended at a stop string), ``prompt_index``.
    Metrics (all the micro-batch's samples, before the filter): ``gen_time_s``, ``completion_len``, ``eos_frac``,
    ``stop_frac``, ``finished_frac`` (EOS or stop string), ``accuracy``, ``n_samples``,
    ``states_age``; with ``filter_min``: ``filter_keep_frac``, ``filtered_empty``.
    """

    def __init__(
        self,
        tokenizer,
        questions: list[str],
        answers: list[str],
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        samples_per_prompt: int,
        refresh_every: int,
        batch_size: int,
        grad_accum: int,
        max_length: int,
        seed: int,
        accelerator=None,
        filter_min: float | None = None,
        answer_mode: str = "strict",
        record_old_logprobs: bool = False,
        stop: Sequence[str] | None = None,
        learner_frac: float = 1.0,
    ):
        if len(questions) != len(answers):
            raise ValueError(f"LearnerStates: {len(questions)} prompts but {len(answers)} answers")
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise ValueError("LearnerStates: the tokenizer has no eos_token_id (generation stops at EOS)")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        self.stop = tuple(gsm8k.task_stop_sequences() if stop is None else stop)  # the schema: non-empty strings
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.max_new_tokens, self.samples_per_prompt = int(max_new_tokens), int(samples_per_prompt)
        self.refresh_every = int(refresh_every)
        self.filter_min, self.answer_mode, self.record_old_logprobs = filter_min, answer_mode, record_old_logprobs
        self.learner_frac = float(learner_frac)  # its pairings: statepost.checks.run_entry
        mixed = self.learner_frac < 1.0
        if mixed and is_fsdp(accelerator):  # known only in the job: the processes of FSDP sample in lockstep
            raise ValueError("LearnerStates: learner_frac < 1 cannot run under FSDP, whose processes sample in lockstep")
        self.accelerator = accelerator
        # FSDP: every forward gathers the sharded weights from all processes, so every process must run as many:
        # sampling decodes until all are done, and the old log-probs are scored even when empty
        self.lockstep = is_fsdp(accelerator)
        self.device = accelerator.device if accelerator is not None else None  # None: the policy's device
        num_processes = accelerator.num_processes if accelerator is not None else 1
        process_index = accelerator.process_index if accelerator is not None else 0

        self.prompt_ids: list[list[int]] = []
        self.gold_ids: list[list[int]] = []  # mixed only: the gold completion + EOS of each prompt
        self.questions: list[str] = []
        self.answers: list[str] = []
        self.n_skipped = 0
        for q, a in zip(questions, answers):
            ids = list(tokenizer(gsm8k.format_prompt(q), add_special_tokens=False)["input_ids"])
            if not ids:
                raise ValueError(f"LearnerStates: prompt tokenizes to nothing: {q[:80]!r}")
            gold = encode_sft_example(tokenizer, q, a)[0][len(ids):] if mixed else []
            if len(ids) + max(self.max_new_tokens, len(gold)) > max_length:
                self.n_skipped += 1
                continue
            self.prompt_ids.append(ids)
            self.gold_ids.append(gold)
            self.questions.append(q)
            self.answers.append(a)
        self.order = EpochOrder(
            len(self.prompt_ids), seed=seed, batch_size=batch_size, grad_accum=grad_accum,
            num_processes=num_processes, process_index=process_index,
        )
        if self.order.steps_per_epoch == 0:
            raise ValueError(
                f"LearnerStates: {len(self.prompt_ids)} usable prompts ({self.n_skipped} too long for "
                f"max_length {max_length} with max_new_tokens {self.max_new_tokens}) do not fill one "
                f"optimiser step of {self.order.step_size} prompts"
            )
        self.cursor = 0  # micro-batches generated by this process
        self._cache: list[StateBatch] = []
        self._cur_step: int | None = None
        self._micro = 0
        self._gen_step = 0  # refresh phase: rollouts are redrawn every refresh_every steps from here
        self._made_step = 0  # optimiser step at which the cached rollouts were drawn
        self._resumed = False
        self._refreshing = False

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
            out = replace(batch, metrics=dict(batch.metrics))
        else:
            cached = self._cache[self._micro % len(self._cache)]
            out = replace(cached, metrics=dict(cached.metrics))
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

    def _sample(self, model, prompts: list[int], device) -> tuple[list[list[int]], list[bool]]:
        """``samples_per_prompt`` sampled completion token lists per prompt (rows grouped by prompt), up to and including
        the first EOS or the token that completes the first stop string, and whether each ended at a
        stop string (:func:`~statepost.train.rollout.sample_groups`, in lockstep under FSDP)."""
        all_done = None
        if self.lockstep:  # every process decodes until every process's rows have ended
            def all_done(local: bool) -> bool:
                going = torch.tensor([0.0 if local else 1.0], device=device)
                return float(sum_over_processes(self.accelerator, going)) == 0.0
        was_training = model.training
        model.eval()
        try:
            return sample_groups(
                model, [self.prompt_ids[i] for i in prompts], self.samples_per_prompt,
                temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                eos_token_id=int(self.eos_token_id), pad_token_id=int(self.pad_token_id),
                stopped=(lambda rows: holds_stop(self.tokenizer, self.stop, rows)) if self.stop else None,
                device=device, all_done=all_done,
            )
        finally:
            model.train(was_training)

    def from_learner(self, cursor: int, n: int) -> np.ndarray:
        """Which of micro-batch ``cursor``'s ``n`` prompts take the learner's states (all at learner_frac 1)."""
        if self.learner_frac == 1.0:
            return np.ones(n, dtype=bool)
        u = np.random.default_rng([self.order.seed, self.order.process_index, cursor, MIX_STREAM]).random(n)
        return u < self.learner_frac

    def generate(self, policy) -> StateBatch:
        """Draw a fresh micro-batch from ``policy`` (advances the prompt cursor): ``samples_per_prompt`` samples of
        each prompt, or at
        ``learner_frac`` < 1 a sample or the gold solution per prompt."""
        _, prompts = self.order.micro_batch(self.cursor)
        prompts = [int(i) for i in prompts]
        learner = self.from_learner(self.cursor, len(prompts))
        sampled = [i for i, on in zip(prompts, learner) if on]
        model = unwrap(policy)  # generate on the bare model, never through DDP
        device = self._device_of(model)

        t0 = time.perf_counter()
        seeds = np.random.SeedSequence([self.order.seed, self.order.process_index, self.cursor])
        seed = int(seeds.generate_state(1)[0])
        fork_devices = [device] if torch.device(device).type == "cuda" else []
        samples, sample_stopped = [], []
        if sampled:
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(seed)
                samples, sample_stopped = self._sample(model, sampled, device)
        gen_time = time.perf_counter() - t0
        self.cursor += 1

        # rows grouped by prompt, in the micro-batch's order: the samples of a learner prompt, the gold of another
        drawn, parts = iter(zip(samples, sample_stopped)), []  # (prompt, group, completion, stopped, sampled)
        for g, (i, on) in enumerate(zip(prompts, learner)):
            got = [next(drawn) for _ in range(self.samples_per_prompt)] if on else [(self.gold_ids[i], False)]
            parts += [(i, g, c, st, bool(on)) for c, st in got]
        rows, groups, completions, stopped, is_sample = (list(x) for x in zip(*parts))
        eos = [bool(c) and c[-1] == self.eos_token_id for c in completions]
        texts = [gsm8k.cut_at_stop(self.tokenizer.decode(c, skip_special_tokens=True), self.stop) for c in completions]
        answers = [self.answers[i] for i in rows]
        # graded once, here: the reward, the filter and the metrics read these
        correct = [1.0 if gsm8k.is_correct(t, a, self.answer_mode) else 0.0 for t, a in zip(texts, answers)]
        formatted = [gsm8k.has_answer_line(t) for t in texts]
        on = [k for k in range(len(rows)) if is_sample[k]]
        metrics = {"gen_time_s": gen_time, "n_samples": float(len(on))}
        if self.learner_frac < 1.0:
            metrics["learner_frac"] = float(np.mean(learner))
        if on:
            metrics.update(
                completion_len=float(np.mean([len(completions[k]) for k in on])),
                eos_frac=float(np.mean([eos[k] for k in on])),
                stop_frac=float(np.mean([stopped[k] for k in on])),
                finished_frac=float(np.mean([eos[k] or stopped[k] for k in on])),
                accuracy=float(np.mean([correct[k] for k in on])),
            )

        kept = list(range(len(rows)))
        empty = False
        if self.filter_min is not None:
            kept = [k for k in kept if correct[k] >= self.filter_min]
            metrics["filter_keep_frac"] = len(kept) / len(rows)
            empty = not kept
            metrics["filtered_empty"] = 1.0 if empty else 0.0
            if empty:
                kept = list(range(len(rows)))  # keep the shapes, zero the mask below

        batch = collate_states(
            [(self.prompt_ids[rows[k]] + completions[k], len(self.prompt_ids[rows[k]])) for k in kept],
            self.pad_token_id,
            prompts=[self.questions[rows[k]] for k in kept],
            answers=[answers[k] for k in kept],
        )
        if empty:
            batch.completion_mask.zero_()
        batch.extras.update(
            correct=torch.tensor([correct[k] for k in kept], dtype=torch.float32),
            formatted=torch.tensor([formatted[k] for k in kept], dtype=torch.bool),
            group=torch.tensor([groups[k] for k in kept], dtype=torch.long),
            eos=torch.tensor([eos[k] for k in kept], dtype=torch.bool),
            stopped=torch.tensor([stopped[k] for k in kept], dtype=torch.bool),
            prompt_index=torch.tensor([rows[k] for k in kept], dtype=torch.long),
            completions=[texts[k] for k in kept],
        )
        if self.learner_frac < 1.0:
            batch.extras["from_learner"] = torch.tensor([is_sample[k] for k in kept], dtype=torch.bool)
        batch.metrics.update(metrics)
        if self.record_old_logprobs and (self.lockstep or not empty):  # empty: an all-zero mask, so all zeros
            batch.extras["old_logprobs"] = self._old_logprobs(policy, batch, device)
        return batch

    @torch.no_grad()
    def _old_logprobs(self, policy, batch: StateBatch, device) -> torch.Tensor:
        token_logp = completion_token_logprobs(policy, batch.to(device))  # [N], the completion states in order
        old = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        old[:, 1:][batch.completion_mask[:, 1:].cpu() > 0] = token_logp.float().cpu()
        return old

    def state_dict(self) -> dict:
        return {
            "cursor": self.cursor,
            "seed": self.order.seed,
            "n_prompts": len(self.prompt_ids),
            "step_prompts": self.order.step_size,
            "process_index": self.order.process_index,
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
        self._gen_step = int(state["gen_step"])
        self._cache, self._cur_step, self._micro, self._resumed = [], None, 0, True
