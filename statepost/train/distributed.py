"""Data parallel: the Accelerator, and sums, broadcasts and metric means across processes.

Every helper is a no-op with one process, so a single-process run makes no collective call.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object

from statepost.io import ConfigError


def make_accelerator(precision: str, **tracking) -> Accelerator:
    """auto: bf16 mixed precision on CUDA, fp32 on CPU (no native bf16 there). ``tracking``: ``log_with`` and
    ``project_dir`` for accelerate's trackers (:mod:`statepost.train.tracking`)."""
    cuda = torch.cuda.is_available()
    mixed = {"auto": "bf16" if cuda else "no", "fp32": "no", "bf16": "bf16"}[precision]
    # cpu=True without CUDA: under a multi-process launcher (torchrun / `accelerate launch
    # --multi_gpu`) accelerate then runs data parallel over gloo (MULTI_CPU) instead of N
    # independent single processes. (`accelerate launch --cpu` itself starts one process only.)
    # The scheduler is stepped by hand once per optimiser step, whatever the process count.
    accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda, step_scheduler_with_optimizer=False, **tracking)
    if accelerator.distributed_type == DistributedType.FSDP:
        # The checkpoints, the final save and learner sampling read the whole model on one process; under
        # FSDP each process holds a shard, so they would write or sample from a partial model.
        raise ConfigError(
            "config key resources.train.accelerate_config: the training loop does not run under FSDP yet (its "
            "checkpoints, final save and learner sampling need the full weights, which FSDP shards); "
            "train data parallel (no accelerate_config) on GPUs that each hold the model"
        )
    return accelerator


def sum_over_processes(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    return accelerator.reduce(tensor, reduction="sum") if accelerator.num_processes > 1 else tensor


def broadcast(accelerator, obj):
    """The main process's ``obj``, in every process."""
    if accelerator.num_processes == 1:
        return obj
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def mean_dicts(dicts: list[dict]) -> dict[str, float]:
    """Key by key mean of metric dicts (sorted keys; a key counts only where present and not None)."""
    out = {}
    for key in sorted({k for d in dicts for k in d}):
        values = [float(d[key]) for d in dicts if d.get(key) is not None]
        if values:
            out[key] = sum(values) / len(values)
    return out


def mean_over_processes(accelerator, metrics: dict) -> dict[str, float]:
    """The mean of every process's metric dict (each process contributes one dict)."""
    if accelerator.num_processes == 1:
        return mean_dicts([metrics])
    return mean_dicts(gather_object([metrics]))
