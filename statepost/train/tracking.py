"""Where a run's metrics lines go: ``metrics.jsonl`` and the progress bar (:class:`MetricsLog`), and through
accelerate's tracker API to TensorBoard and/or Weights & Biases (the config's ``tracking`` key).

Nothing here touches a weight or a random stream: tracking is a runtime setting (a Snakemake
resource), so switching it on reruns nothing and a tracked run trains the same weights as an
untracked one. The training job writes the tracker's files while it runs, under
``results/{experiment}/tracking/{run}/seed{seed}/`` (TensorBoard: ``statepost/events.out.tfevents.*``), outside the
model directory, whose files and hashes do not change.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from statepost.io import ConfigError

log = logging.getLogger("statepost.train")

PROJECT = "statepost"  # the tracker's project: TensorBoard's sub-folder, the W&B project
TENSORBOARD_FLUSH_S = 10  # a running job's events reach the disk within this many seconds


class MetricsLog:
    """The live ``metrics.jsonl`` in the state dir and the progress bar (main process); a log line every
    ``log_every`` steps when there is no bar on a terminal."""

    def __init__(self, run, start_step: int, progress: bool):  # run: statepost.train.loop.Run
        main, cfg = run.accelerator.is_main_process, run.cfg
        self.file = run.checkpointer.metrics_path.open("a") if main else None
        self.accelerator = run.accelerator  # its trackers (if any) get every line too
        self.pbar = tqdm(
            total=run.total_steps, initial=start_step, desc=f"{cfg['name']}/seed{cfg['seed']}",
            disable=not (progress and main), dynamic_ncols=True,
        )
        self.log_lines = not (progress and _stderr_is_tty())
        self.log_every, self.total_steps = cfg["log_every"], run.total_steps

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.accelerator.log(row, step=row["step"])
        self.pbar.update(1)
        step = row["step"]
        if step % self.log_every == 0 or step == self.total_steps:
            self.pbar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if self.log_lines:
                log.info(
                    "step %d/%d loss %.4f lr %.3g grad_norm %.3g tok/s %.0f pad %.3f",
                    step, self.total_steps, row["loss"], row["lr"], row["grad_norm"], row["tokens_per_s"],
                    row["padding_waste"],
                )

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.pbar.close()
        if self.file is not None:
            self.file.close()



def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def tracker_names(value) -> list[str]:
    """The config's ``tracking`` (``none``, a name, a comma-separated list or a list) as a list of names,
    each checked to be installed; a ConfigError names the key and what to install."""
    if value is None or value == "none":
        return []
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    installed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    for name in names:
        if name not in installed:
            raise ConfigError(f"config key tracking: unknown tracker {name!r} (known: none, {', '.join(installed)})")
        if not installed[name]():
            raise ConfigError(
                f"config key tracking: {name} is requested but not installed in this environment "
                f"(pip install {name}{'' if name == 'wandb' else '; it is in requirements.txt'}), or set tracking: none"
            )
    return names


def accelerator_kwargs(names: Sequence[str], tracking_dir) -> dict:
    """What ``Accelerator(...)`` needs to log to ``names`` under ``tracking_dir`` ({} when nothing is tracked)."""
    if not names:
        return {}
    if tracking_dir is None:
        raise ConfigError("config key tracking: a tracked run needs a tracking directory (--tracking-dir)")
    return {"log_with": list(names), "project_dir": str(Path(tracking_dir))}


def _flat(obj, prefix: str = "") -> dict:
    """A run config as ``{"optim.lr": 1e-5, ...}`` with plain values (what trackers take as hyperparameters)."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def start(accelerator, cfg: dict, tracking_dir) -> None:
    """Start the accelerator's trackers (if any) for one (run, seed), with its settings as hyperparameters."""
    if not accelerator.log_with:
        return
    name = f"{cfg['name']}/seed{cfg['seed']}"
    accelerator.init_trackers(
        PROJECT,
        config=_flat(cfg),
        init_kwargs={
            "tensorboard": {"flush_secs": TENSORBOARD_FLUSH_S},
            "wandb": {"name": name, "group": cfg["name"], "dir": str(tracking_dir)},
        },
    )


def stop(accelerator) -> None:
    """Flush and close the trackers (accelerate's ``end_training``); nothing when none was started."""
    if accelerator.trackers:
        accelerator.end_training()
