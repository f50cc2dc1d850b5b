"""The one training loop: ``states = source.sample(policy, step)``, ``loss, metrics = signal(policy, states)``, step.

Every method (SFT, on-policy distillation, RL, ...) runs through :func:`train`; what differs is
the (state source, signal) pair built from the run config by :mod:`statepost.train.registry`.
Optimiser, schedule, precision, batching, checkpointing, logging and seeding are shared.

Per optimiser step
------------------
1. ``grad_accum`` micro-batches are sampled (same ``step`` argument each time) under
   ``torch.no_grad()`` and autocast, from the *unwrapped* policy (generation must not go through
   DDP). The source's ``policy`` is the model being trained.
2. Completion-token counts are summed over micro-batches and processes (one all-reduce); every
   signal's loss is a mean over completion tokens, so weighting micro-batches by their tokens makes
   the step minimise the mean over every completion token of the step, identical for 1 process x
   batch 8, 2 x 4 or 1 x 4 x 2 accumulation.
3. forward + backward per micro-batch (``accelerator.no_sync`` except on the last one), gradient
   clipping, AdamW, scheduler. A non-finite loss or gradient norm raises :class:`TrainingError`
   naming the step before the optimiser touches the weights; no model is written.
4. One JSON line of metrics (main process) to ``{state_dir}/metrics.jsonl``, copied into the
   model directory at the end.

Resume: every ``checkpoint.every`` steps the full training state goes to ``state_dir``
(:mod:`statepost.train.checkpoint`); a rerun resumes from the newest complete checkpoint whose
config hash, input hashes and process count match, logging ``resumed from step N``. On CPU a
resumed run ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from statepost.config import with_defaults
from statepost.io import ConfigError, atomic_dir, env_info, sha256_file, utc_now, write_json, write_jsonl
from statepost.models import load_frozen, load_model, load_tokenizer, model_hashes, set_gradient_checkpointing

from .distributed import broadcast, make_accelerator, mean_dicts, mean_over_processes, sum_over_processes

log = logging.getLogger("statepost.train")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or gradient); the message names the step."""


# -- config ---------------------------------------------------------------------------------------

_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
# Keys that do not change what is trained: a change of them does not prevent resuming.
_NOT_HASHED = ("checkpoint", "log_every", "resources")


def resolve_run_config(run_cfg: dict) -> dict:
    """The run entry validated and with the schema's defaults (:func:`statepost.config.with_defaults`), plus its
    ``name`` and ``seed``; a bad or missing key raises ConfigError naming its path."""
    for key in ("name", "seed"):
        if key not in run_cfg:
            raise ConfigError(f"config key {key}: missing (the run's config carries its name and seed)")
    entry = {k: v for k, v in run_cfg.items() if k not in ("name", "seed")}
    return {**with_defaults(entry, "run"), "name": run_cfg["name"], "seed": run_cfg["seed"]}


def training_config_hash(cfg: dict) -> str:
    """Hash of everything in the run config that changes the trained weights."""
    core = {k: v for k, v in cfg.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the loop -------------------------------------------------------------------------------------


def _stderr_is_tty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def train(
    run_cfg: dict,
    *,
    init_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    state_dir: str | os.PathLike | None = None,
    teacher_dir: str | os.PathLike | None = None,
    metrics_path: str | os.PathLike | None = None,
    accelerator=None,
    hooks: dict[str, Callable] | None = None,
    progress: bool = True,
) -> dict:
    """Train one (run, seed) and write the final model to ``out_dir``; return the run record.

    ``state_dir`` (default ``{out_dir.parent}/.{out_dir.name}.state``) holds the resumable
    states and the live metrics; it is locked while a run uses it and removed after the final
    model is written. ``hooks["after_step"](step, model)`` runs after each optimiser step and its
    checkpoint (tests use it to simulate a crash or to poison the weights).
    """
    trainer = _Trainer(
        run_cfg,
        init_dir=Path(init_dir),
        out_dir=Path(out_dir),
        data_dir=Path(data_dir),
        state_dir=Path(state_dir) if state_dir else None,
        teacher_dir=Path(teacher_dir) if teacher_dir else None,
        metrics_path=Path(metrics_path) if metrics_path else None,
        accelerator=accelerator,
        hooks=hooks or {},
        progress=progress,
    )
    trainer.setup()
    trainer.ckpt.lock()
    try:
        return trainer.run()
    finally:
        trainer.ckpt.unlock()


class _Trainer:
    def __init__(self, run_cfg, *, init_dir, out_dir, data_dir, state_dir, teacher_dir, metrics_path,
                 accelerator, hooks, progress):
        self.t_start = time.time()
        self.started = utc_now()
        self.cfg = resolve_run_config(run_cfg)
        self.optim, self.ck = self.cfg["optim"], self.cfg["checkpoint"]
        self.init_dir, self.out_dir, self.data_dir = init_dir, out_dir, data_dir
        self.state_dir = state_dir or out_dir.parent / f".{out_dir.name}.state"
        self.teacher_dir, self.metrics_path = teacher_dir, metrics_path
        self.hooks, self.progress = hooks, progress
        self.acc = accelerator if accelerator is not None else make_accelerator(self.optim["precision"])
        self.main = self.acc.is_main_process
        self.device = self.acc.device

    def info(self, msg, *args):
        if self.main:
            log.info(msg, *args)

    # -- models, source, signal, optimiser ----------------------------------------------------------
    def setup(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from .checkpoint import Checkpointer
        from .registry import SIGNALS, data_path, make_signal, make_state_source
        from .signals import check_same_tokenizer

        cfg, optim, acc = self.cfg, self.optim, self.acc
        # python, numpy, torch (CPU + every CUDA device), + the process index so that learner sampling
        # differs between processes. The data order has its own generator seeded from (seed, epoch).
        set_seed(int(cfg["seed"]), device_specific=True)

        tokenizer = load_tokenizer(self.init_dir)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = load_model(self.init_dir, dtype=torch.float32)
        if optim["gradient_checkpointing"]:
            set_gradient_checkpointing(model, True)
        model.train()
        # the extra models the signal declares: eval mode, no grad, the policy's device and compute dtype
        compute_dtype = torch.bfloat16 if acc.mixed_precision == "bf16" else torch.float32
        spec = SIGNALS[cfg["signal"]["type"]]
        if "teacher" in spec.models and self.teacher_dir is None:
            raise ConfigError(f"config key signal.teacher: signal {cfg['signal']['type']!r} needs --teacher DIR")
        if "teacher" not in spec.models and self.teacher_dir is not None:
            self.info("signal %s uses no teacher: %s not loaded", cfg["signal"]["type"], self.teacher_dir)
            self.teacher_dir = None
        paths = {"teacher": self.teacher_dir, "reference": self.init_dir}
        models = {name: load_frozen(paths[name], compute_dtype, self.device) for name in spec.models}
        self.source = make_state_source(cfg, tokenizer, self.data_dir, acc)
        if "teacher" in models:  # distillation compares distributions id by id
            try:
                check_same_tokenizer(tokenizer, load_tokenizer(self.teacher_dir), self.init_dir, self.teacher_dir)
            except ValueError as e:
                raise ConfigError(f"config key signal.teacher: {e}") from None
        self.signal = make_signal(cfg["signal"], **models)
        self.tokenizer = tokenizer
        self.n_skipped = int(getattr(self.source, "n_skipped", 0) or 0)
        if self.n_skipped:
            self.info("skipped %d examples longer than optim.max_length=%d", self.n_skipped, optim["max_length"])

        # input hashes (main process) and the resume key
        inputs = None
        if self.main:
            dpath = data_path(cfg, self.data_dir)
            inputs = {
                "init": model_hashes(self.init_dir),
                "teacher": model_hashes(self.teacher_dir) if self.teacher_dir is not None else None,
                "data": {dpath.relative_to(self.data_dir).as_posix(): sha256_file(dpath)},
            }
        self.inputs = broadcast(acc, inputs)
        self.config_hash = training_config_hash(cfg)
        self.key = {
            "config_hash": self.config_hash,
            "inputs_hash": hashlib.sha256(json.dumps(self.inputs, sort_keys=True).encode()).hexdigest()[:16],
            "num_processes": acc.num_processes,
        }

        # steps, optimiser, schedule
        self.accum = int(optim["grad_accum"])
        self.micro_per_epoch = self.source.__len__() if hasattr(self.source, "__len__") else None
        if optim["max_steps"]:
            self.total = int(optim["max_steps"])
        elif self.micro_per_epoch:
            self.total = max(1, math.floor(float(optim["epochs"]) * self.micro_per_epoch / self.accum))
        else:
            raise ConfigError("config key optim.max_steps: required for a state source without epochs (learner)")
        self.warmup = math.ceil(float(optim["warmup_ratio"]) * self.total)
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(optim["weight_decay"])},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=float(optim["lr"]),
        )
        self.scheduler = get_scheduler(
            _SCHEDULES[optim["schedule"]], optimizer, num_warmup_steps=self.warmup, num_training_steps=self.total
        )
        # The scheduler is stepped by hand once per optimiser step (not prepared: accelerate would
        # step it once per process and make the schedule depend on the process count).
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.policy = acc.unwrap_model(self.model)  # for sampling / generation (not through DDP)
        self.ckpt = Checkpointer(self.state_dir, acc, keep=int(self.ck["keep"]))

    # -- resume, steps, save ------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        from .states import padding_waste

        cfg, optim, acc, ckpt = self.cfg, self.optim, self.acc, self.ckpt
        model, optimizer, scheduler, source, signal = self.model, self.optimizer, self.scheduler, self.source, self.signal
        device, main, accum, total = self.device, self.main, self.accum, self.total

        found = ckpt.find_resumable(self.key) if main else None
        found_path = broadcast(acc, str(found[0]) if found else None)
        start_step, resumed_from, prior_time = 0, None, 0.0
        if found_path:
            ck_info = ckpt.load(Path(found_path), model=model, optimizer=optimizer, scheduler=scheduler, source=source)
            start_step = resumed_from = int(ck_info["step"])
            prior_time = float(ck_info.get("train_time_s", 0.0))
            ckpt.truncate_metrics(start_step)
            self.info("resumed from step %d (%s)", start_step, found_path)
        else:
            ckpt.reset()
        acc.wait_for_everyone()
        self.info(
            "run %s seed %s: %d steps (%d warmup), %s micro-batches/epoch, grad_accum %d, %d process(es), %s, "
            "precision %s, live metrics %s",
            cfg["name"], cfg["seed"], total, self.warmup, self.micro_per_epoch, accum, acc.num_processes, device,
            acc.mixed_precision, ckpt.metrics_path,
        )

        metrics_file = ckpt.metrics_path.open("a") if main else None
        pbar = tqdm(
            total=total, initial=start_step, desc=f"{cfg['name']}/seed{cfg['seed']}",
            disable=not (self.progress and main), dynamic_ncols=True,
        )
        log_lines = not (self.progress and _stderr_is_tty())
        log_every = cfg["log_every"]
        max_norm = float(optim["max_grad_norm"]) if optim["max_grad_norm"] else float("inf")
        try:
            for step in range(start_step + 1, total + 1):
                t0 = time.perf_counter()
                # 1. states (from the unwrapped policy: generation must not go through DDP)
                with torch.no_grad(), acc.autocast():
                    batches = [source.sample(self.policy, step) for _ in range(accum)]
                batches = [b.to(device) for b in batches]
                model.train()
                n_comp = [b.completion_mask[:, 1:].sum().double() for b in batches]
                counts = torch.stack([sum(n_comp), sum(b.attention_mask.sum().double() for b in batches)]).to(device)
                counts = sum_over_processes(acc, counts)
                n_global = float(counts[0])
                # No completion token in the whole step (e.g. every learner sample filtered out): no
                # update (AdamW would still move the weights through momentum and decay); the step
                # and the schedule go on. Every process decides alike (reduced counts).
                skip = n_global == 0

                # 2. forward / backward
                loss_local, bad = 0.0, 0.0
                sig_metrics: list[dict] = []
                for a, batch in enumerate([] if skip else batches):
                    last = a == accum - 1
                    with contextlib.nullcontext() if last else acc.no_sync(model):
                        with acc.autocast():
                            loss, m = signal(model, batch)
                        if not torch.isfinite(loss.detach()).all():
                            bad += 1.0
                        weight = float(n_comp[a]) / n_global  # share of the step's completion tokens
                        scale = weight * acc.num_processes  # DDP averages gradients over processes
                        acc.backward(loss * scale)
                    loss_local += float(loss.detach()) * weight
                    sig_metrics.append({**batch.metrics, **m, "padding_waste": padding_waste(batch)})
                red = torch.tensor([loss_local, bad], dtype=torch.float64, device=device)
                red = sum_over_processes(acc, red)
                step_loss, n_bad = float(red[0]), float(red[1])
                if n_bad > 0 or not math.isfinite(step_loss):
                    raise TrainingError(
                        f"non-finite loss ({step_loss}) at step {step} of run {cfg['name']} seed {cfg['seed']}; "
                        "no model written"
                    )

                # 3. clip, step
                lr = float(scheduler.get_last_lr()[0])
                if skip:
                    grad_norm = 0.0
                    sig_metrics = [{**b.metrics, "padding_waste": padding_waste(b)} for b in batches]
                    log.warning("step %d: no completion tokens in the step; no update", step)
                else:
                    grad_norm = float(acc.clip_grad_norm_(model.parameters(), max_norm))
                    if not math.isfinite(grad_norm):
                        raise TrainingError(
                            f"non-finite gradient norm ({grad_norm}) at step {step} of run {cfg['name']} "
                            f"seed {cfg['seed']}; no model written"
                        )
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                # 4. metrics
                merged = mean_over_processes(acc, mean_dicts(sig_metrics))
                dt = time.perf_counter() - t0
                row = {
                    **merged,
                    "step": step,
                    "loss": step_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": float(counts[1]),
                    "completion_tokens": n_global,
                    "tokens_per_s": float(counts[1]) / dt if dt > 0 else 0.0,
                    "padding_waste": merged.get("padding_waste", 0.0),
                    "time_s": dt,
                    "elapsed_s": prior_time + time.time() - self.t_start,
                    "skipped_update": float(skip),
                }
                if main:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    pbar.update(1)
                    if step % log_every == 0 or step == total:
                        pbar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                        if log_lines:
                            log.info(
                                "step %d/%d loss %.4f lr %.3g grad_norm %.3g tok/s %.0f pad %.3f",
                                step, total, step_loss, lr, grad_norm, row["tokens_per_s"], row["padding_waste"],
                            )

                # 5. resumable state
                if self.ck["every"] and step % int(self.ck["every"]) == 0 and step < total:
                    ckpt.save(
                        step, model=model, optimizer=optimizer, scheduler=scheduler, source=source,
                        info={**self.key, "train_time_s": prior_time + time.time() - self.t_start,
                              "run": cfg["name"], "seed": cfg["seed"]},
                    )
                if "after_step" in self.hooks:
                    self.hooks["after_step"](step, self.policy)
        finally:
            pbar.close()
            if metrics_file is not None:
                metrics_file.close()
        return self.save_final(resumed_from, prior_time)

    def save_final(self, resumed_from, prior_time) -> dict:
        acc, cfg, optim, out_dir = self.acc, self.cfg, self.optim, self.out_dir
        acc.wait_for_everyone()
        wall = time.time() - self.t_start
        record = {
            "name": cfg["name"],
            "seed": cfg["seed"],
            "config": cfg,
            "config_hash": self.config_hash,
            "init": str(self.init_dir),
            "teacher": str(self.teacher_dir) if self.teacher_dir is not None else None,
            "data_dir": str(self.data_dir),
            "inputs": self.inputs,
            "env": env_info(),
            "accelerate": {
                "num_processes": acc.num_processes,
                "mixed_precision": acc.mixed_precision,
                "device": str(self.device),
                "distributed_type": str(acc.distributed_type),
            },
            "total_steps": self.total,
            "final_step": self.total,
            "warmup_steps": self.warmup,
            "micro_batches_per_epoch": self.micro_per_epoch,
            "examples_skipped": self.n_skipped,
            "resumed_from_step": resumed_from,
            "wall_time_s": wall,
            "train_time_s": prior_time + wall,
            "started": self.started,
            "finished": utc_now(),
        }
        if self.main:
            from statepost.io import read_jsonl

            mpath = self.ckpt.metrics_path
            rows = list(read_jsonl(mpath)) if mpath.is_file() else []
            final = acc.unwrap_model(self.model, keep_fp32_wrapper=False)
            if optim["gradient_checkpointing"]:
                set_gradient_checkpointing(final, False)
            with atomic_dir(out_dir) as tmp:
                final.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
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
            if self.metrics_path is not None and self.metrics_path.resolve() != (out_dir / "metrics.jsonl").resolve():
                write_jsonl(self.metrics_path, rows)
            self.info("saved %s (step %d, %.1f s)", out_dir, self.total, wall)
        acc.wait_for_everyone()
        self.ckpt.remove_all()
        return record
