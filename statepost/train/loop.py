"""The one training loop, for every method: states from a source, a loss from a signal, an AdamW step.

:func:`train` reads from top to bottom: the run config (the schema's defaults), seeding, the
policy and the extra models its signal declares, the (state source, signal) pair of
:mod:`statepost.train.registry`, the resume key, optimiser and schedule, then :func:`train_step`
once per optimiser step, and the final save.

A step samples ``grad_accum`` micro-batches of states, runs forward and backward on each
(``no_sync`` but on the last), weighted by its share of the step's completion tokens counted over
all processes: every signal's loss is a token mean, so the step minimises the mean over every
completion token of the step, the same for 1 process x batch 8, 2 x 4 or 1 x 4 x 2 accumulation.
A non-finite loss or gradient norm raises :class:`TrainingError` naming the step before the
optimiser touches the weights; no model is written.

Resume: every ``checkpoint.every`` steps the full training state goes to ``state_dir``
(:mod:`statepost.train.checkpoint`); a rerun resumes from the newest complete checkpoint whose
config hash, input hashes and process count match, logging ``resumed from step N``. On CPU a
resumed run ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from accelerate.utils import set_seed
from transformers import get_scheduler

from statepost.config import RUNTIME_KEYS, with_defaults
from statepost.io import (
    ConfigError, atomic_dir, env_info, prepare_output, read_jsonl, sha256_file, utc_now, write_json, write_jsonl,
)
from statepost import checks
from statepost.models import disable_dropout, load_model, load_tokenizer, model_hashes, set_gradient_checkpointing

from .checkpoint import Checkpointer
from .distributed import (
    broadcast, full_model_state, is_fsdp, make_accelerator, mean_dicts, mean_over_processes, sum_over_processes,
)
from .registry import build_signal, data_path, make_state_source, read_rows
from .signals import Signal
from .state_nll import StateNLL
from . import tracking as trackers
from .tracking import MetricsLog
from .batch import StateSource, padding_waste

log = logging.getLogger("statepost.train")

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}  # -> transformers names


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or gradient); the message names the step."""


def run_config(run_cfg: dict) -> dict:
    """The run entry validated, with the schema's defaults (:func:`statepost.config.with_defaults`), plus its
    ``name`` and ``seed``, and refused as the DAG refuses it (:func:`statepost.checks.run_entry`); a bad or missing key
    raises ConfigError naming its path."""
    for key in ("name", "seed"):
        if key not in run_cfg:
            raise ConfigError(f"config key {key}: missing (the run's config carries its name and seed)")
    entry = {k: v for k, v in run_cfg.items() if k not in ("name", "seed")}
    cfg = {**with_defaults(entry, "run"), "name": run_cfg["name"], "seed": run_cfg["seed"]}
    checks.run_entry(f"runs.{cfg['name']}", cfg)
    return cfg


def training_config_hash(cfg: dict) -> str:
    """Hash of everything in the run config that changes the trained weights."""
    core = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}  # they change no weight: no bar to resuming
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Run:
    """What a run holds while it trains."""

    cfg: dict
    accelerator: Any
    model: Any  # the prepared (DDP-wrapped) policy: forward and backward
    policy: Any  # the same model unwrapped: sampling (generation must not go through DDP) and hooks
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    source: StateSource
    signal: Signal
    checkpointer: Checkpointer
    resume_key: dict  # config_hash, inputs_hash, num_processes, fsdp: what a checkpoint must match
    total_steps: int
    trajectory: dict[int, Path]  # {step: directory} of the models written along training
    facts: dict  # what run.json records of the run besides its end (record)
    t_start: float
    prior_time: float = 0.0  # training time before the resumed checkpoint
    state_nll: StateNLL | None = None  # the init model's NLL of each step's states (diagnostics.state_nll)

    def record(self, step: int) -> dict:
        """run.json of the model after ``step``."""
        wall = time.time() - self.t_start
        return {**self.facts, "final_step": step, "wall_time_s": wall, "train_time_s": self.prior_time + wall,
                "finished": utc_now()}  # fmt: skip


def _info(accelerator, msg: str, *args) -> None:
    if accelerator.is_main_process:
        log.info(msg, *args)


def train(run_cfg: dict, *, init_dir, out_dir, data_dir, state_dir=None, teacher_dir=None, metrics_path=None,
          accelerator=None, hooks: dict[str, Callable] | None = None, progress: bool = True, state_nll_every: int = 0,
          tracking: Sequence[str] = (), tracking_dir=None, trajectory: Mapping[int, str] | None = None) -> dict:  # fmt: skip
    """Train one (run, seed) and write the final model to ``out_dir``; return the run record (run.json).

    ``state_dir`` (default ``{out_dir.parent}/.{out_dir.name}.state``) holds the resumable states and
    the live metrics; it is locked while a run uses it and removed after the final model is written.
    ``hooks["after_step"](step, model)`` runs after each optimiser step and its checkpoint (tests use
    it to simulate a crash or to poison the weights). ``state_nll_every``: log the init model's NLL of the step's
    states every N steps (0: never; :mod:`statepost.train.state_nll`). ``tracking`` (tracker names, e.g.
    ``["tensorboard"]``) also sends every metrics line through accelerate's trackers, under ``tracking_dir``.
    ``trajectory`` (``{step: directory}``): the model is also written, as the final one is, after those optimiser
    steps (each below the last), to be evaluated along training; kept in the state dir (so a resumed run has them)
    and moved to its directory when the run ends; it changes no weight.
    """
    run, hooks = build_run(
        run_cfg, init_dir=Path(init_dir), out_dir=Path(out_dir), data_dir=Path(data_dir),
        state_dir=Path(state_dir) if state_dir else None, teacher_dir=Path(teacher_dir) if teacher_dir else None,
        accelerator=accelerator, tracking=(tracking, tracking_dir), state_nll_every=state_nll_every,
        trajectory=trajectory or {},
    ), hooks or {}  # fmt: skip
    run.checkpointer.lock()
    try:
        start_step = resume(run)
        trackers.start(run.accelerator, run.cfg, tracking_dir)
        with MetricsLog(run, start_step, progress) as metrics_log:
            for step in range(start_step + 1, run.total_steps + 1):
                train_step(run, step, metrics_log)
                if step in run.trajectory:  # kept in the state dir until the run ends, as its checkpoints are
                    publish(run, run.record(step), run.checkpointer.snapshot(step))
                if "after_step" in hooks:
                    hooks["after_step"](step, run.policy)
        fail_if_never_updated(run)
        run.accelerator.wait_for_everyone()
        final = run.record(run.total_steps)
        publish(run, final, Path(out_dir), Path(metrics_path) if metrics_path else None)
        run.checkpointer.place_snapshots(run.trajectory)
        run.checkpointer.remove_all()
        return final
    finally:
        run.checkpointer.unlock()
        trackers.stop(run.accelerator)


def build_run(run_cfg: dict, *, init_dir: Path, out_dir: Path, data_dir: Path, state_dir: Path | None,
              teacher_dir: Path | None, accelerator, tracking: tuple, state_nll_every: int, trajectory: Mapping) -> Run:
    """Everything :func:`train` needs before its first step: the config, seeding, the data, the policy, the (state
    source, signal) pair of :mod:`statepost.train.registry` with the models its signal loads, the resume key, the
    step count, the optimiser and schedule."""
    t_start, started = time.time(), utc_now()
    cfg = run_config(run_cfg)
    optim = cfg["optim"]
    state_dir = state_dir or out_dir.parent / f".{out_dir.name}.state"
    accelerator = accelerator if accelerator is not None else make_accelerator(
        optim["precision"], **trackers.accelerator_kwargs(trackers.tracker_names(tracking[0]), tracking[1]))
    if accelerator.is_main_process:  # out_dir's folder writable; what a killed save left beside it recovered
        prepare_output(out_dir)
    # python, numpy, torch (CPU + every CUDA device), + the process index so that learner sampling
    # differs between processes. The data order has its own generator seeded from (seed, epoch).
    set_seed(int(cfg["seed"]), device_specific=True)

    # the data first: its file checked against the data rule's manifest and every row validated, so a
    # changed or corrupt file stops the run (naming path and line) before any model is loaded
    rows = read_rows(cfg, data_dir)

    # the policy, dropout off (as TRL's trainers: the loss must see the function that is sampled and
    # scored); the (state source, signal) pair, with the frozen models the signal declares
    tokenizer, model = load_policy(init_dir, optim)
    compute_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    signal, frozen, model_dirs = build_signal(
        cfg, tokenizer, init_dir=init_dir, teacher_dir=teacher_dir, device=accelerator.device,
        compute_dtype=compute_dtype,
    )
    source = make_state_source(cfg, tokenizer, data_dir, accelerator, rows=rows)
    if source.n_skipped:
        _info(accelerator, "skipped %d examples longer than optim.max_length=%d", source.n_skipped, optim["max_length"])

    inputs = input_hashes(accelerator, init_dir, model_dirs, data_path(cfg, data_dir))
    resume_key = {
        "config_hash": training_config_hash(cfg),
        "inputs_hash": hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16],
        "num_processes": accelerator.num_processes,
        "fsdp": is_fsdp(accelerator),  # sharded optimizer state is saved by parameter name: not interchangeable
    }

    micro_per_epoch = len(source) if hasattr(source, "__len__") else None
    total_steps = count_steps(cfg, micro_per_epoch, trajectory)
    warmup_steps = math.ceil(float(optim["warmup_ratio"]) * total_steps)
    optimizer = make_optimizer(model, optim)
    scheduler = get_scheduler(
        SCHEDULES[optim["schedule"]], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
    # The scheduler is stepped by hand once per optimiser step (not prepared: accelerate would step
    # it once per process and make the schedule depend on the process count).
    prepared, optimizer = accelerator.prepare(model, optimizer)
    checkpointer = Checkpointer(state_dir, accelerator, keep=cfg["checkpoint"]["keep"])
    _info(
        accelerator,
        "run %s seed %s: %d steps (%d warmup), %s micro-batches/epoch, grad_accum %d, %d process(es), %s, "
        "precision %s, live metrics %s",
        cfg["name"], cfg["seed"], total_steps, warmup_steps, micro_per_epoch, optim["grad_accum"],
        accelerator.num_processes, accelerator.device, accelerator.mixed_precision, checkpointer.metrics_path,
    )
    facts = {
        "name": cfg["name"], "seed": cfg["seed"], "config": cfg, "config_hash": resume_key["config_hash"],
        "init": str(init_dir), "teacher": str(teacher_dir) if "teacher" in model_dirs else None,
        "data_dir": str(data_dir), "inputs": inputs, "env": env_info(),
        "accelerate": {
            "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device), "distributed_type": str(accelerator.distributed_type),
        },
        "total_steps": total_steps, "warmup_steps": warmup_steps, "micro_batches_per_epoch": micro_per_epoch,
        "examples_skipped": source.n_skipped, "resumed_from_step": None, "started": started,
    }  # fmt: skip
    return Run(
        cfg=cfg, accelerator=accelerator, model=prepared, policy=accelerator.unwrap_model(prepared),
        tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, source=source, signal=signal,
        checkpointer=checkpointer, resume_key=resume_key, total_steps=total_steps, trajectory={int(k): Path(v) for k, v in trajectory.items()},
        facts=facts, t_start=t_start,
        state_nll=StateNLL.build(state_nll_every, init_dir, frozen, accelerator.device, compute_dtype),
    )  # fmt: skip


def load_policy(init_dir: Path, optim: dict):
    """``(tokenizer, model)``: the init model in fp32, dropout off, in train mode (gradient checkpointing if set)."""
    tokenizer = load_tokenizer(init_dir)
    model = load_model(init_dir, dtype=torch.float32)
    disable_dropout(model)
    if optim["gradient_checkpointing"]:
        set_gradient_checkpointing(model, True)
    model.train()
    return tokenizer, model


def input_hashes(accelerator, init_dir: Path, model_dirs: Mapping[str, Path], data_file: Path) -> dict:
    """The sha256 of every input file (main process, broadcast): the init model, the signal's other models and the
    data. A checkpoint resumes only under the same inputs."""
    inputs = None
    if accelerator.is_main_process:
        inputs = {
            "init": model_hashes(init_dir),
            "teacher": model_hashes(model_dirs["teacher"]) if "teacher" in model_dirs else None,
            "data": {f"{data_file.parent.name}/{data_file.name}": sha256_file(data_file)},
        }
    return broadcast(accelerator, inputs)


def count_steps(cfg: dict, micro_per_epoch: int | None, trajectory: Mapping) -> int:
    """The run's optimiser steps: ``optim.max_steps``, else its epochs of micro-batches (learner runs have
    max_steps: :func:`statepost.checks.run_entry`); every trajectory step must come before the last."""
    optim = cfg["optim"]
    if optim["max_steps"]:
        total = int(optim["max_steps"])
    else:
        total = max(1, math.floor(float(optim["epochs"]) * micro_per_epoch / optim["grad_accum"]))
    if any(not 1 <= int(k) < total for k in trajectory):
        raise ConfigError(f"config key runs.{cfg['name']}.trajectory: steps {sorted(map(int, trajectory))}, but the "
                          f"run's steps are 1 to {total} and its last step is its own model: each must be below "
                          f"{total}")  # fmt: skip
    return total


def make_optimizer(model, optim: dict) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on the matrices only.

    ``fused=True``: one kernel per parameter group (CPU and CUDA), about 10 x faster than the
    per-tensor loop on CPU (0.2 s against 2.0 s per 150 M parameters here). It rounds differently
    from the loop (the same update to a few ulps), so it is a deliberate change of the trained weights.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(optim["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(optim["lr"]), fused=True,
    )


def fail_if_never_updated(run: Run) -> None:
    """A run whose every step had gradient norm 0 (no sample survived a filter, every advantage was 0,
    ...) would write its init model under a new name: stop instead (resumed steps count too)."""
    path = run.checkpointer.metrics_path
    if run.accelerator.is_main_process:
        moved = any(row["grad_norm"] > 0 for row in read_jsonl(path)) if path.is_file() else False
    moved = broadcast(run.accelerator, moved if run.accelerator.is_main_process else None)
    if not moved:
        cfg = run.cfg
        raise TrainingError(
            f"run {cfg['name']} seed {cfg['seed']}: the gradient norm was 0 at every one of {run.total_steps} steps, "
            "so the weights never changed; no model written (see skipped_update and the signal's metrics in "
            f"{path})"
        )


def resume(run: Run) -> int:
    """Load the newest resumable checkpoint (and return its step), or clear the state dir of an earlier attempt (and
    return 0)."""
    accelerator, checkpointer = run.accelerator, run.checkpointer
    found = checkpointer.find_resumable(run.resume_key, run.trajectory) if accelerator.is_main_process else None
    found_path = broadcast(accelerator, str(found[0]) if found else None)
    resumed_from = None
    if found_path:
        info = checkpointer.load(
            Path(found_path), model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, source=run.source
        )
        resumed_from = int(info["step"])
        run.prior_time = float(info.get("train_time_s", 0.0))
        checkpointer.truncate_metrics(resumed_from)
        _info(accelerator, "resumed from step %d (%s)", resumed_from, found_path)
    else:
        checkpointer.reset()
    accelerator.wait_for_everyone()
    run.facts["resumed_from_step"] = resumed_from
    return resumed_from or 0


def train_step(run: Run, step: int, metrics_log: MetricsLog) -> None:
    """One optimiser step, its metrics line and, every ``checkpoint.every`` steps, a resumable state."""
    accelerator, model, cfg, device = run.accelerator, run.model, run.cfg, run.accelerator.device
    where = f"at step {step} of run {cfg['name']} seed {cfg['seed']}; no model written"
    t0 = time.perf_counter()

    # sample states: grad_accum micro-batches, from the unwrapped policy
    with torch.no_grad(), accelerator.autocast():
        batches = [run.source.sample(run.policy, step) for _ in range(cfg["optim"]["grad_accum"])]
    # the signal's say in which completion tokens carry signal (rewards and advantages for RL)
    batches = [run.signal.prepare(b.to(device)) for b in batches]
    state_nll = run.state_nll.measure(accelerator, batches, step) if run.state_nll else {}
    model.train()
    n_completion = [b.completion_mask[:, 1:].sum().double() for b in batches]
    counts = torch.stack([sum(n_completion), sum(b.attention_mask.sum().double() for b in batches)]).to(device)
    step_completion_tokens, step_tokens = sum_over_processes(accelerator, counts).tolist()
    # No completion token left in the whole step (every learner sample filtered out, every reward group
    # all-equal): no update (AdamW would still move the weights through momentum and decay); the step
    # and the schedule go on.
    skip = step_completion_tokens == 0

    # forward / backward per micro-batch, weighted by its share of the step's completion tokens (times
    # the process count: DDP averages gradients over processes)
    loss_local, n_bad, batch_metrics = 0.0, 0.0, []
    for a, batch in enumerate([] if skip else batches):
        weight = float(n_completion[a]) / step_completion_tokens
        with contextlib.nullcontext() if a == len(batches) - 1 else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, metrics = run.signal(model, batch)
            if not torch.isfinite(loss.detach()).all():
                n_bad += 1.0
            accelerator.backward(loss * (weight * accelerator.num_processes))
        loss_local += float(loss.detach()) * weight
        batch_metrics.append({**batch.metrics, **metrics, "padding_waste": padding_waste(batch)})

    # non-finite loss: stop before the optimiser touches the weights (every process decides alike)
    totals = torch.tensor([loss_local, n_bad], dtype=torch.float64, device=device)
    step_loss, n_bad = sum_over_processes(accelerator, totals).tolist()
    if n_bad > 0 or not math.isfinite(step_loss):
        raise TrainingError(f"non-finite loss ({step_loss}) {where}")

    # clip and step
    lr = float(run.scheduler.get_last_lr()[0])
    if skip:
        grad_norm = 0.0
        batch_metrics = [{**b.metrics, "padding_waste": padding_waste(b)} for b in batches]
        log.warning("step %d: no completion token carries signal (filtered out, or equal rewards); no update", step)
    else:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), float(cfg["optim"]["max_grad_norm"])))
        if not math.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm ({grad_norm}) {where}")
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)

    # metrics line
    metrics = mean_over_processes(accelerator, mean_dicts(batch_metrics))
    dt = time.perf_counter() - t0
    metrics_log.write({
        **metrics, "step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens": step_tokens,
        "completion_tokens": step_completion_tokens, "tokens_per_s": step_tokens / dt if dt > 0 else 0.0,
        "padding_waste": metrics.get("padding_waste", 0.0), "time_s": dt,
        "elapsed_s": run.prior_time + time.time() - run.t_start, "skipped_update": float(skip), **state_nll,
    })

    # resumable state
    if step % cfg["checkpoint"]["every"] == 0 and step < run.total_steps:
        info = {**run.resume_key, "train_time_s": run.prior_time + time.time() - run.t_start,
                "run": cfg["name"], "seed": cfg["seed"]}
        run.checkpointer.save(
            step, model=model, optimizer=run.optimizer, scheduler=run.scheduler, source=run.source, info=info
        )


def publish(run: Run, record: dict, out_dir: Path, metrics_path: Path | None = None) -> None:
    """Every process: the model at ``record["final_step"]`` written to ``out_dir`` by the main process (under FSDP,
    its weights gathered from the shards first, a collective)."""
    weights = full_model_state(run.accelerator, run.model)
    if run.accelerator.is_main_process:
        save_model(run, record, out_dir, metrics_path, weights)
        _info(run.accelerator, "saved %s (step %d, %.1f s)", out_dir, record["final_step"], record["wall_time_s"])
    run.accelerator.wait_for_everyone()


def save_model(run: Run, record: dict, out_dir: Path, metrics_path: Path | None, weights=None) -> None:
    """Write the model, tokenizer, metrics.jsonl (the lines so far) and run.json to ``out_dir`` atomically (main
    process). ``weights``: the whole model's state dict under FSDP (the module holds only this process's shard)."""
    rows = list(read_jsonl(run.checkpointer.metrics_path)) if run.checkpointer.metrics_path.is_file() else []
    final = run.accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    checkpointing = run.cfg["optim"]["gradient_checkpointing"]
    if checkpointing:  # saved without it; back on after, as training may go on (a trajectory step)
        set_gradient_checkpointing(final, False)
    with atomic_dir(out_dir) as tmp:
        final.save_pretrained(tmp, **({"state_dict": weights} if weights is not None else {}))
        run.tokenizer.save_pretrained(tmp)
        if getattr(final, "generation_config", None) is not None and not (tmp / "generation_config.json").exists():
            final.generation_config.save_pretrained(tmp)
        write_jsonl(tmp / "metrics.jsonl", rows)
        # sha256 of every file but run.json / metrics.jsonl: statepost.models.verify_model_dir checks them
        record["files"] = {
            f.relative_to(tmp).as_posix(): sha256_file(f)
            for f in sorted(tmp.rglob("*"))
            if f.is_file() and f.name not in ("run.json", "metrics.jsonl")
        }
        write_json(tmp / "run.json", record)
    if checkpointing:
        set_gradient_checkpointing(final, True)
    if metrics_path is not None and metrics_path.resolve() != (out_dir / "metrics.jsonl").resolve():
        write_jsonl(metrics_path, rows)
