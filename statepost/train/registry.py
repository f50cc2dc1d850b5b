"""Config -> (state source, signal): the one place that maps a run's config onto the parts.

A method is a pair: ``states.source`` picks where states come from (``dataset`` or ``learner``),
``signal.type`` what is applied at them (``nll``, ``teacher_kl``, ``reward``). The loop never
branches on the method. A signal may declare ``loss_reduction = "token_mean"`` (its loss is a mean
over completion tokens; the loop then weights micro-batches by their token counts, so a step
optimises the mean over all its completion tokens however it is split over processes and
accumulation) or ``"batch_mean"`` (default). ``signal_needs`` says which extra models to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statepost.io import ConfigError, DataError, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class SignalContext:
    """What a signal may need besides the policy: handed to :func:`make_signal`."""

    tokenizer: Any
    accelerator: Any = None
    teacher: Any = None  # teacher model (eval mode, no grad, policy's device and compute dtype) or None
    reference: Any = None  # frozen copy of the init model (KL penalty / kl_to_init metric) or None
    run_cfg: dict = field(default_factory=dict)
    teacher_tokenizer: Any = None  # checked against ``tokenizer`` before a teacher signal is built
    init_dir: str | None = None
    teacher_dir: str | None = None


def data_path(run_cfg: dict, data_dir: str | Path) -> Path:
    states = run_cfg["states"]
    return Path(data_dir) / states.get("data", "gsm8k") / f"{states.get('split', 'train')}.jsonl"


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a gsm8k-style JSONL file; every row needs string ``question`` and ``answer``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found (run the data rule first)")
    rows = list(read_jsonl(path))
    for i, row in enumerate(rows, 1):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{path}: row {i}: field {key!r} must be a non-empty string")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def signal_needs(run_cfg: dict) -> dict[str, bool]:
    """Which extra models the run's signal needs: {"teacher": bool, "reference": bool}."""
    sig = run_cfg["signal"]
    kind = sig.get("type")
    # reward: the init model gives the k3 penalty (kl_coef > 0) and, always, the kl_to_init metric
    return {"teacher": kind == "teacher_kl", "reference": kind == "reward"}


def make_state_source(run_cfg: dict, tokenizer, data_dir: str | Path, accelerator=None):
    """The run's state source over ``{data_dir}/{data}/{split}.jsonl`` (its first ``states.max_rows`` rows when set).

    ``dataset``: :class:`DatasetStates`; ``learner``: :class:`LearnerStates`.
    """
    states = run_cfg["states"]
    optim = run_cfg.get("optim", {})
    kind = states.get("source")
    num_processes = accelerator.num_processes if accelerator is not None else 1
    process_index = accelerator.process_index if accelerator is not None else 0
    path = data_path(run_cfg, data_dir)
    rows = load_rows(path)
    max_rows = states.get("max_rows")
    if max_rows is not None:
        if len(rows) < int(max_rows):
            log.warning("states.max_rows=%d but %s has only %d rows; using them all", max_rows, path, len(rows))
        rows = rows[: int(max_rows)]
    if kind == "dataset":
        from .states import DatasetStates

        return DatasetStates(
            rows,
            tokenizer,
            batch_size=int(optim.get("batch_size", 8)),
            seed=int(run_cfg.get("seed", 0)),
            grad_accum=int(optim.get("grad_accum", 1)),
            num_processes=num_processes,
            process_index=process_index,
            max_length=int(optim.get("max_length", 512)),
            group_by_length=bool(states.get("group_by_length", True)),
            bucket_steps=int(states.get("length_bucket_steps", 64)),
            source_name=str(path),
        )
    if kind == "learner":
        from .states import LearnerStates

        try:
            return LearnerStates(
                run_cfg,
                tokenizer,
                [r["question"] for r in rows],
                [r["answer"] for r in rows],
                accelerator,
                seed=int(run_cfg.get("seed", 0)),
            )
        except ValueError as e:
            raise ConfigError(f"config key states ({path}): {e}") from None
    raise ConfigError(f"config key states.source: unknown source {kind!r} (dataset | learner)")


def make_signal(run_cfg: dict, ctx: SignalContext):
    from .signals import NLLSignal, RewardSignal, TeacherKL, check_same_tokenizer

    sig = run_cfg["signal"]
    kind = sig.get("type")
    if kind not in ("nll", "teacher_kl", "reward"):
        raise ConfigError(f"config key signal.type: unknown signal {kind!r} (nll | teacher_kl | reward)")
    if kind == "nll":
        return NLLSignal()
    needs = signal_needs(run_cfg)
    if needs["teacher"] and ctx.teacher is None:
        raise ConfigError(f"config key signal.teacher: signal {kind!r} needs a teacher model (--teacher DIR)")
    if float(sig.get("kl_coef", 0.0) or 0.0) > 0 and ctx.reference is None:
        raise ConfigError("config key signal.kl_coef: a KL penalty needs the init (reference) model")
    try:
        if kind == "teacher_kl":
            if ctx.teacher_tokenizer is not None:
                check_same_tokenizer(ctx.tokenizer, ctx.teacher_tokenizer, ctx.init_dir, ctx.teacher_dir)
            return TeacherKL(sig, ctx.teacher)
        return RewardSignal(sig, ctx.reference)
    except ValueError as e:
        raise ConfigError(f"config key signal: {e}") from None
