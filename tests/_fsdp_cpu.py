"""Run a script under accelerate's FSDP2 on CPU processes (gloo): ``accelerate launch --config_file
fsdp-cpu.yaml tests/_fsdp_cpu.py SCRIPT ARGS...``.

accelerate (1.15) selects FSDP only for an accelerator backend: on a machine without one, a launch with
an FSDP config builds a MULTI_CPU (data parallel) state, and the training loop refuses it rather than
train unsharded. torch's FSDP2 itself runs on CPU over gloo (parameters as DTensors on a CPU device
mesh), so for the tests this wrapper turns accelerate's MULTI_CPU state into FSDP, with the FSDP plugin
accelerate built from the launch's environment, right after the Accelerator is made. Everything after
that (accelerate's FSDP2 prepare, fully_shard, the state-dict gathering, the training loop) is the
code that runs on GPUs.

``STATEPOST_TEST_FAIL_AFTER_STEP=N``: the run raises after step N (and its checkpoint), as a killed job
stops, so that the next launch resumes.
"""

from __future__ import annotations

import os
import runpy
import sys

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = accelerate.Accelerator.__init__


def _fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.state.distributed_type == DistributedType.MULTI_CPU:
        # AcceleratorState copies PartialState's fields each time it is built: set both
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.state.distributed_type = DistributedType.FSDP
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the ACCELERATE/FSDP_* env of the launch


accelerate.Accelerator.__init__ = _fsdp_on_cpu


def _fail_after(step: int) -> None:
    import statepost.train.loop as loop

    train = loop.train

    def hook(at, model):
        if at == step:
            raise RuntimeError(f"stopped after step {at} (STATEPOST_TEST_FAIL_AFTER_STEP)")

    loop.train = lambda *args, **kwargs: train(*args, hooks={"after_step": hook}, **kwargs)


if __name__ == "__main__":
    if os.environ.get("STATEPOST_TEST_FAIL_AFTER_STEP"):
        _fail_after(int(os.environ["STATEPOST_TEST_FAIL_AFTER_STEP"]))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
