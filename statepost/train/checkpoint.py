"""Resumable training state, kept outside the final output (``--state-dir``).

Layout of a state directory::

    state_dir/
      metrics.jsonl              live metrics (copied into the model directory at the end)
      ckpt-00000050/             one complete resumable state per kept step
        model.safetensors        policy weights (tied weights stored once)
        optimizer.pt             optimizer state_dict (identical on every process under DDP)
        scheduler.pt             lr scheduler state_dict
        accelerate.pt            accelerate's own state: its step counter and grad scaler
        rng-rank{r}.pt           python, numpy, torch CPU and CUDA generator states of process r
        source-rank{r}.pt        state source position of process r (data cursor, buffers)
        trainer_state.json       written LAST: step, config hash, input hashes, process count

A checkpoint is written into ``.ckpt-XXXXXXXX.tmp`` and renamed when complete, so a killed
job leaves either a complete checkpoint or a temporary directory that is ignored and removed.
Every file is loaded with ``torch.load(weights_only=True)`` (no pickle code execution); the
generator states are stored as tensors and plain Python values for that reason.

Why not ``Accelerator.save_state``: its ``load_state`` swallows a failure to restore the
generator states (it logs "Could not load random states" at INFO and carries on), which would
silently break the bitwise equality of a resumed run; and it has no notion of a complete marker
or of a config check. The pieces of accelerate's state that matter for DDP training (its step
counter and gradient scaler) are saved here explicitly.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from statepost.io import utc_now, write_json, write_jsonl

log = logging.getLogger("statepost.train")

MARKER = "trainer_state.json"
_CKPT_RE = re.compile(r"^ckpt-(\d{8})$")
_TMP_RE = re.compile(r"^\.ckpt-\d{8}\.tmp$")
FORMAT_VERSION = 1


# -- generator states ---------------------------------------------------------------------------


def rng_state() -> dict:
    """Every generator the loop (or a state source) may draw from, as weights_only-safe values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise RuntimeError(
                f"checkpoint has CUDA generator states for {len(state['cuda'])} devices, "
                f"this process sees {torch.cuda.device_count()}"
            )
        torch.cuda.set_rng_state_all(state["cuda"])


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


# -- checkpointer -------------------------------------------------------------------------------


class Checkpointer:
    """Save, find, load and prune resumable states in ``state_dir``. Collective: every process calls
    :meth:`save` and :meth:`load`; the main process alone writes shared files and decides."""

    def __init__(self, state_dir: str | os.PathLike, accelerator, keep: int = 2):
        self.state_dir = Path(state_dir)
        self.accelerator = accelerator
        self.keep = max(1, int(keep))

    @property
    def metrics_path(self) -> Path:
        return self.state_dir / "metrics.jsonl"

    @staticmethod
    def name(step: int) -> str:
        return f"ckpt-{step:08d}"

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        found = []
        if not self.state_dir.is_dir():
            return found
        for p in self.state_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_dir() and (p / MARKER).is_file() and (p / "model.safetensors").is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    # -- decide ------------------------------------------------------------------------------
    def find_resumable(self, key: dict) -> tuple[Path, dict] | None:
        """The newest complete checkpoint if its stored key equals ``key``; logs why not otherwise.

        ``key`` has ``config_hash``, ``inputs_hash`` and ``num_processes``.
        """
        done = self.complete()
        if not done:
            return None
        step, path = done[-1]
        try:
            info = _read_json(path / MARKER)
        except (OSError, ValueError) as e:
            log.warning("not resuming: %s is unreadable (%s)", path / MARKER, e)
            return None
        if info.get("format_version") != FORMAT_VERSION:
            log.warning("not resuming: checkpoint format %s != %s", info.get("format_version"), FORMAT_VERSION)
            return None
        if info.get("config_hash") != key["config_hash"]:
            log.warning(
                "not resuming: config changed (checkpoint %s at step %d has config %s, this run %s)",
                path.name, step, info.get("config_hash"), key["config_hash"],
            )
            return None
        if info.get("inputs_hash") != key["inputs_hash"]:
            log.warning("not resuming: inputs changed (init model, teacher or data differ from %s)", path.name)
            return None
        if int(info.get("num_processes", -1)) != int(key["num_processes"]):
            log.warning(
                "not resuming: number of processes changed (%s in %s, %d now)",
                info.get("num_processes"), path.name, key["num_processes"],
            )
            return None
        missing = [f for f in info.get("files", []) if not (path / f).is_file()]
        if missing:
            log.warning("not resuming: %s lacks %s", path.name, ", ".join(missing))
            return None
        return path, info

    def lock(self) -> None:
        """Hold an exclusive lock on the state dir (main process) so two runs never share it."""
        if not self.accelerator.is_main_process:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.state_dir / "lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RuntimeError(
                f"{self.state_dir} is in use by another training process (its lock is held); "
                "wait for it to finish or stop it"
            ) from None
        self._lock = f

    def unlock(self) -> None:
        f = getattr(self, "_lock", None)
        if f is not None:
            f.close()
            self._lock = None

    def reset(self) -> None:
        """Remove checkpoints and live metrics of an earlier attempt (main process)."""
        if not self.accelerator.is_main_process or not self.state_dir.is_dir():
            return
        for p in self.state_dir.iterdir():
            if _CKPT_RE.match(p.name) or _TMP_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
        self.metrics_path.unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Remove the state directory after the final model is saved (only entries we own)."""
        if not self.accelerator.is_main_process or not self.state_dir.is_dir():
            return
        self.reset()
        for p in self.state_dir.glob(".metrics.jsonl.*.tmp"):
            p.unlink(missing_ok=True)
        (self.state_dir / "lock").unlink(missing_ok=True)
        self.unlock()
        try:
            self.state_dir.rmdir()
        except OSError:
            log.warning("state dir %s not removed: it holds files the trainer did not write", self.state_dir)

    # -- save / load ---------------------------------------------------------------------------
    def save(self, step: int, *, model, optimizer, scheduler, source, info: dict) -> Path:
        accelerator = self.accelerator
        final = self.state_dir / self.name(step)
        tmp = self.state_dir / f".{self.name(step)}.tmp"
        rank = accelerator.process_index
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
        torch.save(source.state_dict(), tmp / f"source-rank{rank}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            weights = str(tmp / "model.safetensors")
            safetensors.torch.save_model(accelerator.unwrap_model(model), weights, metadata={"format": "pt"})
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            scaler = getattr(accelerator, "scaler", None)
            torch.save(
                {"step": int(accelerator.step), "scaler": scaler.state_dict() if scaler is not None else None},
                tmp / "accelerate.pt",
            )
            files = sorted(p.name for p in tmp.iterdir())
            write_json(
                tmp / MARKER,
                {**info, "step": step, "files": files, "format_version": FORMAT_VERSION, "saved": utc_now()},
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, path: Path, *, model, optimizer, scheduler, source) -> dict:
        accelerator = self.accelerator
        path = Path(path)
        info = _read_json(path / MARKER)
        unwrapped = accelerator.unwrap_model(model)
        device = next(unwrapped.parameters()).device
        safetensors.torch.load_model(unwrapped, str(path / "model.safetensors"), strict=True, device=str(device))
        optimizer.load_state_dict(_load(path / "optimizer.pt"))
        scheduler.load_state_dict(_load(path / "scheduler.pt"))
        accelerate_state = _load(path / "accelerate.pt")
        accelerator.step = int(accelerate_state["step"])
        if accelerate_state.get("scaler") is not None and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(accelerate_state["scaler"])
        source.load_state_dict(_load(path / f"source-rank{accelerator.process_index}.pt"))
        set_rng_state(_load(path / f"rng-rank{accelerator.process_index}.pt"))
        return info

    # -- metrics -------------------------------------------------------------------------------
    def truncate_metrics(self, step: int) -> None:
        """Keep the live metrics rows of steps <= ``step`` (those the resumed state has done)."""
        if not self.accelerator.is_main_process or not self.metrics_path.is_file():
            return
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if isinstance(row, dict) and int(row.get("step", 0)) <= step:
                rows.append(row)
        write_jsonl(self.metrics_path, rows)


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
