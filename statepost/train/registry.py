"""Config -> (state source, signal): a method is one entry of :data:`SOURCES` plus one of :data:`SIGNALS`.

``states.source`` picks where the states come from (``dataset``: prompt + gold solution prefixes;
``learner``: the current policy's own samples), ``signal.type`` what is applied at them (``nll``,
``teacher_kl``, ``reward``). Every builder reads complete config branches (the schema's defaults
filled in by :func:`statepost.config.with_defaults`) and hands the parts explicit arguments; this is
also where a source's settings that depend on the signal are worked out (:func:`rollout_reuse`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from statepost import gsm8k
from statepost.checks import check_on_policy, learner_frac
from statepost.data import load_split
from statepost.io import ConfigError

from .signals import NLLSignal, RewardSignal, TeacherKL
from .states import DatasetStates, LearnerStates

log = logging.getLogger(__name__)


# -- signals ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalSpec:
    """How to build one signal type, and what it needs besides the policy.

    ``models(signal_cfg)``: the extra models the loop loads (frozen) and passes to ``build`` by name:
    ``teacher`` (``--teacher DIR``), ``reference`` (the init model, in the policy's precision so that
    the KL to it is exactly 0 at step 0). ``reuses_rollouts``: the signal has ``updates_per_batch``
    and its clipped ratio needs the sampling-time log-probs of a reused batch.
    """

    build: Callable[..., Any]  # build(signal_cfg, **models) -> signal
    models: Callable[[dict], tuple[str, ...]] = lambda signal_cfg: ()
    reuses_rollouts: bool = False


SIGNALS: dict[str, SignalSpec] = {
    # a teacher only when it gives the target token (hard distillation); else the state's own next token
    "nll": SignalSpec(
        lambda signal_cfg, **models: NLLSignal(**models), models=lambda signal_cfg: ("teacher",) if "teacher" in signal_cfg else ()
    ),
    "teacher_kl": SignalSpec(TeacherKL, models=lambda signal_cfg: ("teacher",)),
    # the init model only for the k3 penalty; without it the run loads no second model
    "reward": SignalSpec(
        RewardSignal, models=lambda signal_cfg: ("reference",) if signal_cfg["kl_coef"] > 0 else (), reuses_rollouts=True
    ),
}


def make_signal(signal_cfg: dict, **models):
    """The signal of ``signal_cfg`` (its ``type`` branch), given the models its spec declares."""
    try:
        return SIGNALS[signal_cfg["type"]].build(signal_cfg, **models)
    except ValueError as e:
        raise ConfigError(f"config key signal: {e}") from None


# -- state sources ----------------------------------------------------------------------------------


def dataset_states(cfg: dict, tokenizer, rows: list[dict], accelerator=None) -> DatasetStates:
    states, optim = cfg["states"], cfg["optim"]
    return DatasetStates(
        rows,
        tokenizer,
        batch_size=optim["batch_size"],
        grad_accum=optim["grad_accum"],
        max_length=optim["max_length"],
        seed=cfg["seed"],
        group_by_length=states["group_by_length"],
        bucket_steps=states["length_bucket_steps"],
        num_processes=accelerator.num_processes if accelerator is not None else 1,
        process_index=accelerator.process_index if accelerator is not None else 0,
    )


def learner_states(cfg: dict, tokenizer, rows: list[dict], accelerator=None) -> LearnerStates:
    states, optim = cfg["states"], cfg["optim"]
    # the DAG ran these checks already; a run started by hand gets them here
    check_on_policy(f"runs.{cfg['name']}" if "name" in cfg else "run", states, cfg["signal"])
    refresh_every, record_old_logprobs = rollout_reuse(states, cfg["signal"])
    return LearnerStates(
        tokenizer,
        [r["question"] for r in rows],
        [r["answer"] for r in rows],
        temperature=states["temperature"],
        top_p=states["top_p"],
        max_new_tokens=states["max_new_tokens"],
        samples_per_prompt=states["samples_per_prompt"],
        refresh_every=refresh_every,
        batch_size=optim["batch_size"],
        grad_accum=optim["grad_accum"],
        max_length=optim["max_length"],
        seed=cfg["seed"],
        accelerator=accelerator,
        keep=reward_filter(states["filter"]),
        record_old_logprobs=record_old_logprobs,
        stop=states["stop"],
        learner_frac=learner_frac(cfg),
    )


SOURCES: dict[str, Callable[..., Any]] = {"dataset": dataset_states, "learner": learner_states}


def rollout_reuse(states: dict, signal_cfg: dict) -> tuple[int, bool]:
    """``(refresh_every, record_old_logprobs)`` of learner states under ``signal_cfg``.

    ``states.refresh_every`` and the reward signal's ``updates_per_batch`` both say how many
    optimiser steps reuse one rollout batch: set either, or both alike (:func:`check_on_policy` refuses
    two different counts). A signal that reuses rollouts needs their sampling-time log-probs once a
    batch is reused.
    """
    spec = SIGNALS[signal_cfg["type"]]
    updates = signal_cfg["updates_per_batch"] if spec.reuses_rollouts else 1
    period = max(states["refresh_every"], updates)
    return period, spec.reuses_rollouts and period > 1


def reward_filter(filter_cfg: dict | None) -> Callable[[str, str], bool] | None:
    """``keep(completion, gold)`` of rejection sampling: the completion's gsm8k reward (strict-match, the
    reported metric) reaches ``filter.min``."""
    if filter_cfg is None:
        return None
    return lambda completion, gold: gsm8k.reward(completion, gold) >= filter_cfg["min"]


def data_path(cfg: dict, data_dir: str | Path) -> Path:
    return Path(data_dir) / cfg["states"]["data"] / f"{cfg['states']['split']}.jsonl"


def read_rows(cfg: dict, data_dir: str | Path) -> list[dict]:
    """The rows of the run's ``{data_dir}/{data}/{split}.jsonl``, checked against the sha256 in the data rule's
    manifest and every row validated (:func:`statepost.data.load_split`; errors name path and line)."""
    data_name, split = cfg["states"]["data"], cfg["states"]["split"]  # gsm8k: the schema allows no other
    return load_split(Path(data_dir) / data_name, data_name, split)


def make_state_source(cfg: dict, tokenizer, data_dir: str | Path, accelerator=None, rows: list[dict] | None = None):
    """The run's state source over ``{data_dir}/{data}/{split}.jsonl`` (its first ``states.max_rows`` rows when set);
    ``rows``: that file's rows as :func:`read_rows` returned them, or None to read them here."""
    path = data_path(cfg, data_dir)
    rows = read_rows(cfg, data_dir) if rows is None else rows
    max_rows = cfg["states"]["max_rows"]
    if max_rows is not None:
        if len(rows) < max_rows:
            log.warning("states.max_rows=%d but %s has only %d rows; using them all", max_rows, path, len(rows))
        rows = rows[:max_rows]
    try:
        return SOURCES[cfg["states"]["source"]](cfg, tokenizer, rows, accelerator)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config key states ({path}): {e}") from None
