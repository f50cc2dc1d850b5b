"""How off-policy a run's training states are: the init model's mean NLL of the completion tokens a step trains on.

SFT trains on dataset states (gold solutions), on-policy distillation and RL on the policy's own samples; the init
model's NLL of those tokens puts both on one axis (``state_nll`` in ``metrics.jsonl``): high where the states are
unlike what the init model would write. It is measured on the step's micro-batches as the signal prepared them (an
RL step's tokens with a non-zero advantage), by an extra no-grad forward of the frozen init model (the reference
model when the signal loaded one), every ``every`` steps and at step 1. It draws no random number and touches no
weight, so a run's weights are the same with it on or off.
"""

from __future__ import annotations

import torch

from statepost.models import load_frozen

from .distributed import sum_over_processes
from .logprobs import completion_token_logprobs


class StateNLL:
    """``measure(accelerator, batches, step)`` -> ``{"state_nll": mean NLL}`` on due steps (None without a token),
    else ``{}``."""

    def __init__(self, init_model, every: int):
        self.model, self.every = init_model, int(every)

    @classmethod
    def build(cls, every: int, init_dir, models: dict, device, dtype=torch.float32) -> "StateNLL | None":
        """None when ``every`` is 0; else over ``models["reference"]`` or the init model loaded frozen in ``dtype``
        (the run's compute dtype: bfloat16 under bf16 mixed precision, 1.2 GB at 0.6B instead of 2.4 in float32;
        float32 on CPU)."""
        if not every:
            return None
        if "reference" in models:
            return cls(models["reference"], every)
        with torch.random.fork_rng(devices=[]):  # loading must not move the run's random stream
            return cls(load_frozen(init_dir, dtype, device), every)

    @torch.no_grad()
    def measure(self, accelerator, batches, step: int) -> dict:
        if step != 1 and step % self.every:
            return {}
        total, tokens = 0.0, 0
        with accelerator.autocast():
            for batch in batches:
                logp = completion_token_logprobs(self.model, batch)
                total, tokens = total - float(logp.double().sum()), tokens + int(logp.numel())
        sums = torch.tensor([total, tokens], dtype=torch.float64, device=accelerator.device)
        total, tokens = sum_over_processes(accelerator, sums).tolist()
        return {"state_nll": total / tokens if tokens else None}
