"""Config -> (state source, signal): a method is one entry of :data:`SOURCES` plus one of :data:`SIGNALS`.

``states.source`` picks where the states come from (``dataset``: prompt + gold solution prefixes;
``learner``: the current policy's own samples), ``signal.type`` what is applied at them (``nll``,
``teacher_kl``, ``reward``). Every builder reads complete config branches (the schema's defaults
filled in by :func:`statepost.config.with_defaults`, the pairings checked by :func:`statepost.checks.run_entry`) and
hands the parts explicit arguments; this is also where a source's settings that depend on the signal are worked out
(whether it records the sampling-time log-probs, and whose answer mode grades the samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from statepost.checks import learner_frac
from statepost.data import load_split
from statepost.io import ConfigError
from statepost.models import load_frozen, load_tokenizer

from .signals import NLLSignal, RewardSignal, TeacherKLSignal, check_same_tokenizer
from .states import DatasetStates, LearnerStates

log = logging.getLogger(__name__)


# -- signals ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalSpec:
    """How to build one signal type, and the frozen models it needs besides the policy.

    ``models(signal_cfg)``: the names :func:`build_signal` loads and passes to ``build``: ``teacher`` (the run's
    ``--teacher DIR``, in the compute dtype) and ``reference`` (the init model in the policy's precision, so that the
    KL to it is exactly 0 before the first update). ``reuses_rollouts``: its clipped ratio needs the sampling-time
    log-probs of a rollout batch that ``states.refresh_every`` > 1 reuses.
    """

    build: Callable[..., Any]  # build(signal_cfg, **models) -> signal
    models: Callable[[dict], tuple[str, ...]] = lambda signal_cfg: ()
    reuses_rollouts: bool = False


SIGNALS: dict[str, SignalSpec] = {
    # a teacher only when it gives the target token (hard distillation); else the state's own next token
    "nll": SignalSpec(
        lambda signal_cfg, **models: NLLSignal(**models), models=lambda signal_cfg: ("teacher",) if "teacher" in signal_cfg else ()
    ),
    "teacher_kl": SignalSpec(TeacherKLSignal, models=lambda signal_cfg: ("teacher",)),
    # the init model only for the k3 penalty; without it the run loads no second model
    "reward": SignalSpec(
        RewardSignal, models=lambda signal_cfg: ("reference",) if signal_cfg["kl_coef"] > 0 else (), reuses_rollouts=True
    ),
}


def build_signal(cfg: dict, tokenizer, *, init_dir: Path, teacher_dir: Path | None, device, compute_dtype):
    """``(signal, models, model_dirs)``: the run's signal and the frozen models its spec declares, loaded here (eval
    mode, no grad, on ``device``; ``models`` by name, for the run's diagnostics to share), and ``model_dirs``, where
    each was read. A teacher's tokenizer must be the policy's: distillation compares distributions token id by id."""
    signal_cfg = cfg["signal"]
    needed = SIGNALS[signal_cfg["type"]].models(signal_cfg)
    if "teacher" in needed and teacher_dir is None:
        raise ConfigError(f"config key signal.teacher: signal {signal_cfg['type']!r} needs --teacher DIR")
    if "teacher" not in needed and teacher_dir is not None:
        log.info("signal %s uses no teacher: %s not loaded", signal_cfg["type"], teacher_dir)
    # the teacher in the compute dtype; the reference in the policy's (fp32 weights under the same autocast)
    frozen = {"teacher": (teacher_dir, compute_dtype), "reference": (init_dir, torch.float32)}
    models = {name: load_frozen(*frozen[name], device) for name in needed}
    if "teacher" in models:
        try:
            check_same_tokenizer(tokenizer, load_tokenizer(teacher_dir), init_dir, teacher_dir)
        except ValueError as e:
            raise ConfigError(f"config key signal.teacher: {e}") from None
    return make_signal(signal_cfg, **models), models, {name: frozen[name][0] for name in needed}


def make_signal(signal_cfg: dict, **models):
    """The signal of ``signal_cfg`` (its ``type`` branch), given the models its spec declares."""
    return SIGNALS[signal_cfg["type"]].build(signal_cfg, **models)


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
    signal_cfg = cfg["signal"]
    reuses_rollouts = SIGNALS[signal_cfg["type"]].reuses_rollouts and states["refresh_every"] > 1
    return LearnerStates(
        tokenizer,
        [r["question"] for r in rows],
        [r["answer"] for r in rows],
        temperature=states["temperature"],
        top_p=states["top_p"],
        max_new_tokens=states["max_new_tokens"],
        samples_per_prompt=states["samples_per_prompt"],
        refresh_every=states["refresh_every"],
        batch_size=optim["batch_size"],
        grad_accum=optim["grad_accum"],
        max_length=optim["max_length"],
        seed=cfg["seed"],
        accelerator=accelerator,
        filter_min=states["filter"]["min"] if states["filter"] is not None else None,
        answer_mode=signal_cfg.get("answer_mode", "strict"),  # a reward's mode; else lm-eval's strict-match
        record_old_logprobs=reuses_rollouts,
        stop=states["stop"],
        learner_frac=learner_frac(cfg),
    )


SOURCES: dict[str, Callable[..., Any]] = {"dataset": dataset_states, "learner": learner_states}


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
