"""lm-eval's model types for evaluation (the config's ``evaluation.backend``): ``hf`` and ``vllm``.

``hf`` runs transformers on CPU or GPU (several GPUs: data parallel through ``accelerate launch``).
``vllm`` is lm-eval's vLLM model type: GPU only, one process over every GPU the job was given (tensor
parallel); its package is not a requirement of the workflow, so choosing it without vllm installed is
an error naming the key before any model is loaded.
"""

from __future__ import annotations

import functools
from importlib.util import find_spec
from pathlib import Path

from statepost.io import ConfigError
from statepost.progress import on_a_terminal

SEED = 1234  # vLLM's sampling seed: lm-eval's default, as statepost.evaluate.SEEDS


def check_backend(backend: str, device: str) -> None:
    """lm-eval's vllm model type needs the vllm package and a GPU: say so before anything is loaded."""
    if backend == "vllm" and (find_spec("vllm") is None or device == "cpu"):
        why = "runs on GPUs only (evaluation.device is cpu)" if device == "cpu" else "is not installed here"
        raise ConfigError(f"config key evaluation.backend: vllm {why}; install it into the evaluation environment "
                        "(pip install 'lm_eval[vllm]', see envs/evaluate.yaml) or set evaluation.backend: hf")


def make_lm(backend: str, model_dir: Path, dtype: str, device: str, batch_size):
    """lm-eval's model: ``hf`` (transformers: safetensors only, no remote code) or ``vllm`` (one process over
    every visible GPU, tensor parallel). Off a terminal its request bars are off (lm-eval's ``disable_tqdm``)."""
    import lm_eval.api.registry
    import torch

    args = {"pretrained": str(model_dir), "dtype": dtype, "trust_remote_code": False}
    if backend == "vllm":
        args.update(tensor_parallel_size=max(torch.cuda.device_count(), 1), seed=SEED)
    else:
        args.update(use_safetensors=True)
    lm = lm_eval.api.registry.get_model(backend).create_from_arg_obj(
        args, {"batch_size": batch_size, "max_batch_size": None, "device": device})
    if backend == "hf":
        # lm-eval's hf stops a batch when every row has met a stop string, decoding with special tokens (so
        # "<|im_end|>" fires), but then decodes each row with special tokens skipped before cutting at the stop
        # strings: a row that wrote "<|im_end|>" early is scored with what it wrote after it while the batch ran
        # on. Decoded with them kept, the row is cut at "<|im_end|>", where the learner's sampler stops
        # (statepost.train.states). Rows without a special token decode to the same text either way.
        lm.tok_decode = functools.partial(lm.tok_decode, skip_special_tokens=False)
    if not on_a_terminal():
        for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, name, functools.partial(getattr(lm, name), disable_tqdm=True))
    return lm
