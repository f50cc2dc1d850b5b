"""Config -> (state source, signal). The one place that maps a run's config onto the parts.

``make_state_source(run_cfg, tokenizer, data_dir, accelerator)`` and ``make_signal(run_cfg, ctx)``.
Learner states and the teacher-KL / reward signals live in the on-policy helper's sections of
``states.py`` / ``signals.py`` and are imported lazily: a missing one raises ``ConfigError``
naming the config key, never ``NotImplementedError``.

Convention for a part built here (so the loop needs no per-method code):
- a class with ``from_config(run_cfg, **ctx)`` is built with it; otherwise the documented
  constructor below is used.
- a signal may declare ``loss_reduction = "token_mean"`` (its loss is a mean over completion
  tokens; the loop then weights micro-batches by their token counts, so the step optimises the
  mean over every completion token of the step whatever the split over processes and
  accumulation) or ``"batch_mean"`` (default: micro-batch losses are averaged).
- ``needs_teacher`` / ``needs_reference`` come from the config (:func:`signal_needs`), so the loop
  loads a teacher or an init-reference model only when the signal uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statepost.io import ConfigError, DataError, read_jsonl


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


def _lazy(module: str, names: tuple[str, ...], key: str, value: str):
    import importlib

    mod = importlib.import_module(module)
    for name in names:
        obj = getattr(mod, name, None)
        if obj is not None:
            return obj
    raise ConfigError(
        f"config key {key}: {value!r} is not available in this installation "
        f"({module} defines none of {', '.join(names)})"
    )


def make_state_source(run_cfg: dict, tokenizer, data_dir: str | Path, accelerator=None):
    """The run's state source. ``dataset``: :class:`DatasetStates` over ``{data_dir}/{data}/{split}.jsonl``."""
    states = run_cfg["states"]
    optim = run_cfg.get("optim", {})
    kind = states.get("source")
    num_processes = accelerator.num_processes if accelerator is not None else 1
    process_index = accelerator.process_index if accelerator is not None else 0
    path = data_path(run_cfg, data_dir)
    rows = load_rows(path)
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
        cls = _lazy("statepost.train.states", ("LearnerStates",), "states.source", kind)
        if hasattr(cls, "from_config"):
            return cls.from_config(run_cfg, tokenizer=tokenizer, rows=rows, accelerator=accelerator)
        try:
            return cls(
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


_SIGNAL_CLASSES = {
    "nll": ("NLLSignal",),
    "teacher_kl": ("TeacherKLSignal", "TeacherKL"),
    "reward": ("RewardSignal", "Reward", "GRPOSignal"),
}


def make_signal(run_cfg: dict, ctx: SignalContext):
    sig = run_cfg["signal"]
    kind = sig.get("type")
    if kind not in _SIGNAL_CLASSES:
        raise ConfigError(f"config key signal.type: unknown signal {kind!r} ({' | '.join(_SIGNAL_CLASSES)})")
    if kind == "nll":
        from .signals import NLLSignal

        return NLLSignal()
    needs = signal_needs(run_cfg)
    if needs["teacher"] and ctx.teacher is None:
        raise ConfigError(f"config key signal.teacher: signal {kind!r} needs a teacher model (--teacher DIR)")
    if float(sig.get("kl_coef", 0.0) or 0.0) > 0 and ctx.reference is None:
        raise ConfigError("config key signal.kl_coef: a KL penalty needs the init (reference) model")
    cls = _lazy("statepost.train.signals", _SIGNAL_CLASSES[kind], "signal.type", kind)
    if hasattr(cls, "from_config"):
        return cls.from_config(run_cfg, ctx=ctx)
    try:
        if kind == "teacher_kl":
            if ctx.teacher_tokenizer is not None:
                from .signals import check_same_tokenizer

                check_same_tokenizer(ctx.tokenizer, ctx.teacher_tokenizer, ctx.init_dir, ctx.teacher_dir)
            return cls(sig, ctx.teacher, tokenizer=ctx.tokenizer)
        return cls(sig, reference_model=ctx.reference)
    except ValueError as e:
        raise ConfigError(f"config key signal: {e}") from None
