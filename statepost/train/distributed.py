"""Data parallel and FSDP: the Accelerator, sums, broadcasts and metric means across processes, and the
whole model's weights and optimizer state gathered from FSDP shards (and scattered back on resume).

Every helper is a no-op with one process, so a single-process run makes no collective call.

FSDP (FSDP2, ``torch.distributed.fsdp.fully_shard``, through accelerate's FSDP plugin): each process
holds a shard of the policy's parameters, gradients and optimizer states. What needs the whole model
gathers it: :func:`full_model_state` (every process calls it; the main process gets the weights on
CPU) for the checkpoints and the final save, and :func:`load_full_model_state` scatters a saved
model back into the shards on resume; likewise for the optimizer. Frozen models (teacher, reference,
the state_nll model) are not sharded: every process holds its own copy (see docs in config/README.md).
"""

from __future__ import annotations

import os

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
    check_fsdp(accelerator)
    return accelerator


KEY = "config key resources.train.accelerate_config"


def is_fsdp(accelerator) -> bool:
    return accelerator is not None and accelerator.distributed_type == DistributedType.FSDP


def check_fsdp(accelerator) -> None:
    """Refuse the FSDP settings the loop cannot honour, before any model is loaded."""
    # `accelerate launch` sets ACCELERATE_USE_FSDP from an accelerate config with distributed_type: FSDP
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not is_fsdp(accelerator):
        # accelerate (1.15) selects FSDP for accelerator backends only; without one it runs MULTI_CPU
        raise ConfigError(
            f"{KEY}: FSDP needs GPUs (accelerate selects FSDP only on an accelerator; here it would silently "
            f"train data parallel as {accelerator.distributed_type}, every process holding the whole model); "
            "leave accelerate_config unset on this machine"
        )
    if not is_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ConfigError(f"{KEY}: fsdp_version {plugin.fsdp_version}; the training loop runs FSDP2 (fsdp_version: 2)")
    if plugin.cpu_ram_efficient_loading:
        # transformers then loads every model but the main process's on the meta device, the frozen teacher and
        # reference too, which are not sharded (each process needs their weights)
        raise ConfigError(
            f"{KEY}: fsdp_cpu_ram_efficient_loading: true is not supported (every process but the first would load "
            "the teacher and reference models without weights); set it to false"
        )


def tied_names(model) -> dict[str, str]:
    """``{alias: kept}`` for parameters shared under several names (tied embeddings): the kept name is the one
    ``safetensors.torch.save_model`` keeps (the first in sorted order), so a checkpoint has the same keys."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    out = {}
    for group in names.values():
        kept, *aliases = sorted(group)
        out.update({alias: kept for alias in aliases})
    return out


def full_model_state(accelerator, model, *, tied_once: bool = False) -> dict | None:
    """Collective under FSDP: the whole model's state dict on CPU in the main process (None in the others);
    tied weights (:func:`tied_names`) as one tensor under all their names, as the module's own state dict
    has them (``save_pretrained`` finds ties by storage and keeps its preferred name), or with ``tied_once``
    under their kept name only (a safetensors file of :func:`safetensors.torch.save_model`'s keys).
    Without FSDP: None (callers save the module itself)."""
    if not is_fsdp(accelerator):
        return None
    state = accelerator.get_state_dict(model)  # FSDP2: full_state_dict, cpu_offload; filled in the main process
    if not accelerator.is_main_process:
        return None
    aliases = tied_names(model)
    state = {k: v.contiguous() for k, v in state.items() if k not in aliases}
    if not tied_once:  # gathered separately: alias the kept tensor again
        state.update({alias: state[kept] for alias, kept in aliases.items() if kept in state})
    return state


def load_full_model_state(accelerator, model, state: dict | None) -> None:
    """Collective under FSDP: scatter the main process's whole-model ``state`` (other processes pass None)
    into each process's shards; tied aliases are filled from their kept name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if accelerator.is_main_process:
        state = dict(state)
        for alias, kept in tied_names(model).items():
            state.setdefault(alias, state[kept])
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(model, state if accelerator.is_main_process else {}, options=options)


def full_optimizer_state(accelerator, model, optimizer) -> dict | None:
    """Collective under FSDP: the optimizer's state for the whole model (keyed by parameter name) on CPU in
    the main process, None in the others."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    return state if accelerator.is_main_process else None


def load_full_optimizer_state(accelerator, model, optimizer, state: dict | None) -> None:
    """Collective under FSDP: the inverse of :func:`full_optimizer_state` (other processes pass None)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(model, optimizer, state if accelerator.is_main_process else {}, options=options)


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
