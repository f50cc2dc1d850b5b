"""Resumable training state, kept outside the final output (``--state-dir``).

Layout of a state directory::

    state_dir/
      metrics.jsonl              live metrics (copied into the model directory at the end)
      ckpt-00000050/             one complete resumable state per kept step
        model.safetensors        policy weights (tied weights stored once; gathered from the shards under FSDP)
        optimizer.pt             optimizer state_dict (identical on every process under DDP; under FSDP the
                                 whole model's, keyed by parameter name, gathered from the shards)
        scheduler.pt             lr scheduler state_dict
        accelerate.pt            accelerate's own state: its step counter and grad scaler
        rng-rank{r}.pt           python, numpy, torch CPU and CUDA generator states of process r
        source-rank{r}.pt        state source position of process r (data cursor, buffers)
        trainer_state.json       step, config hash, input hashes, process count
        manifest.json            written LAST: size and sha256 of every other file
      ckpt-00000040.bad/         a checkpoint that failed its check, set aside (kept for inspection)

A checkpoint is written into ``.ckpt-XXXXXXXX.tmp``, fsynced and renamed when complete, so a
killed job leaves either a complete checkpoint or a temporary directory that is removed when the
next attempt starts. On resume the newest checkpoint is checked against its manifest (every file
present, of its recorded size and sha256); one that fails (truncated, a flipped byte, a file or the
manifest missing) is logged by name, renamed to ``ckpt-XXXXXXXX.bad`` and the next older one is
tried; with none left the run starts from step 0.
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
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from statepost.io import fsync_dir, fsync_file, move_dir, sha256_file, utc_now, write_json, write_jsonl

from .distributed import (
    full_model_state, full_optimizer_state, is_fsdp, load_full_model_state, load_full_optimizer_state,
)

log = logging.getLogger("statepost.train")

STATE = "trainer_state.json"
MANIFEST = MARKER = "manifest.json"  # written last: a checkpoint without it is not complete
_CKPT_RE = re.compile(r"^ckpt-(\d{8})$")
_TMP_RE = re.compile(r"^\.ckpt-\d{8}\.tmp$")
_SNAPSHOT_RE = re.compile(r"^\.?model-\d{8}(\..+)?$")  # a model along training, and what atomic_dir left beside it
_SHARED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "accelerate.pt", STATE)
FORMAT_VERSION = 2  # 2: manifest.json with sizes and sha256


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

    def snapshot(self, step: int) -> Path:
        """Where the model after ``step`` (a trajectory step) waits until the run ends: in the state dir, which
        outlives a killed attempt (a workflow engine removes an incomplete job's outputs before it reruns it)."""
        return self.state_dir / f"model-{step:08d}"

    def place_snapshots(self, trajectory: Mapping[int, Path]) -> None:
        """Move each trajectory step's model to its directory (``{step: directory}``; main process)."""
        if self.accelerator.is_main_process:
            for step, dest in trajectory.items():
                move_dir(self.snapshot(step), dest)

    def complete(self) -> list[tuple[int, Path]]:
        """Checkpoints (renamed into place when complete; their files are checked by :func:`check`), oldest first."""
        found = []
        if not self.state_dir.is_dir():
            return found
        for p in self.state_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def set_aside(self, path: Path, problem: str) -> Path:
        """Rename a checkpoint that failed its check out of the way (``ckpt-N.bad``), logging why."""
        dest, n = path.with_name(f"{path.name}.bad"), 1
        while dest.exists():
            dest, n = path.with_name(f"{path.name}.bad{n}"), n + 1
        os.replace(path, dest)
        log.warning("checkpoint %s fails its check (%s): set aside as %s; trying the next older one", path, problem,
                    dest.name)
        return dest

    def clean_stale(self) -> None:
        """Remove what a killed save left: ``.ckpt-*.tmp`` folders and temporary metrics files (main process)."""
        if not self.state_dir.is_dir():
            return
        for p in self.state_dir.iterdir():
            if _TMP_RE.match(p.name) or (p.name.startswith(".metrics.jsonl.") and p.name.endswith(".tmp")):
                log.info("removing %s left by a killed save", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    # -- decide ------------------------------------------------------------------------------
    def find_resumable(self, key: dict, trajectory: Iterable[int] = ()) -> tuple[Path, dict] | None:
        """The newest checkpoint that passes its check, if its stored key equals ``key``; logs why not otherwise.

        ``key`` has ``config_hash``, ``inputs_hash``, ``num_processes`` and ``fsdp``. Checkpoints that fail their
        check are set aside (:meth:`set_aside`) and the next older one is tried. One after a ``trajectory`` step
        whose model (:meth:`snapshot`) is gone is not resumed from.
        """
        found = self._find_resumable(key)
        if found:
            gone = [k for k in sorted(trajectory) if k <= int(found[1]["step"]) and not self.snapshot(k).is_dir()]
            if gone:
                log.warning("not resuming from %s: the models along training after steps %s are not in %s",
                            found[0].name, gone, self.state_dir)
                return None
        return found

    def _find_resumable(self, key: dict) -> tuple[Path, dict] | None:
        self.clean_stale()
        for step, path in reversed(self.complete()):
            if not (path / MANIFEST).is_file() and (path / STATE).is_file():
                old = _read_json_or_none(path / STATE)
                if isinstance(old, dict) and old.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
                    log.warning("not resuming: checkpoint format %s != %s", old.get("format_version"), FORMAT_VERSION)
                    return None
            problem = integrity_problem(path, step)
            if problem is None:
                return self._matches(path, step, _read_json(path / STATE), key)
            self.set_aside(path, problem)
        return None

    def _matches(self, path: Path, step: int, info: dict, key: dict) -> tuple[Path, dict] | None:
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
        if bool(info.get("fsdp", False)) != bool(key.get("fsdp", False)):
            log.warning("not resuming: %s was saved %s FSDP", path.name, "under" if info.get("fsdp") else "without")
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
        """Remove checkpoints, models along training and live metrics of an earlier attempt (main process)."""
        if not self.accelerator.is_main_process or not self.state_dir.is_dir():
            return
        for p in self.state_dir.iterdir():
            if _CKPT_RE.match(p.name) or _TMP_RE.match(p.name) or _SNAPSHOT_RE.match(p.name):
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
            left = sorted(p.name for p in self.state_dir.iterdir())
            log.warning("state dir %s not removed: it holds %s (set-aside checkpoints that failed their check, "
                        "or files the trainer did not write)", self.state_dir, ", ".join(left))

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
        for name, obj in ((f"rng-rank{rank}.pt", rng_state()), (f"source-rank{rank}.pt", source.state_dict())):
            torch.save(obj, tmp / name)
            fsync_file(tmp / name)  # each process its own files: the main process hashes them next
        accelerator.wait_for_everyone()
        fsdp = is_fsdp(accelerator)  # every process gathers its shards to the main process (collective)
        weights_state = full_model_state(accelerator, model, tied_once=True) if fsdp else None
        optimizer_state = full_optimizer_state(accelerator, model, optimizer) if fsdp else None
        if accelerator.is_main_process:
            weights = str(tmp / "model.safetensors")
            if fsdp:
                safetensors.torch.save_file(weights_state, weights, metadata={"format": "pt"})
            else:
                safetensors.torch.save_model(accelerator.unwrap_model(model), weights, metadata={"format": "pt"})
            torch.save(optimizer_state if fsdp else optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            scaler = getattr(accelerator, "scaler", None)
            torch.save(
                {"step": int(accelerator.step), "scaler": scaler.state_dict() if scaler is not None else None},
                tmp / "accelerate.pt",
            )
            write_json(tmp / STATE, {**info, "step": step, "format_version": FORMAT_VERSION, "saved": utc_now()})
            files = {}
            for f in sorted(tmp.iterdir()):
                if f.name != STATE:  # written (and fsynced) by write_json
                    fsync_file(f)
                files[f.name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
            write_json(tmp / MANIFEST, {"files": files, "format_version": FORMAT_VERSION})  # last: complete
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.state_dir)
            for _, old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, path: Path, *, model, optimizer, scheduler, source) -> dict:
        accelerator = self.accelerator
        path = Path(path)
        info = _read_json(path / STATE)
        if is_fsdp(accelerator):  # the main process reads, every process takes its shards (collective)
            main = accelerator.is_main_process
            load_full_model_state(
                accelerator, model, safetensors.torch.load_file(path / "model.safetensors") if main else None
            )
            load_full_optimizer_state(accelerator, model, optimizer, _load(path / "optimizer.pt") if main else None)
        else:
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


def _read_json_or_none(path: Path):
    try:
        return _read_json(path)
    except (OSError, ValueError):
        return None


def integrity_problem(path: Path, step: int) -> str | None:
    """Why the checkpoint of ``step`` at ``path`` fails its check, or None: each file its manifest lists is
    there with its recorded size and sha256, and the manifest lists every file a resume loads."""
    manifest = _read_json_or_none(path / MANIFEST)
    if manifest is None:
        return f"{MANIFEST} missing or unreadable"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return f"{MANIFEST} has no file table"
    unlisted = [n for n in _SHARED_FILES if n not in files]
    if unlisted:
        return f"{MANIFEST} does not list {', '.join(unlisted)}"
    for name, want in sorted(files.items()):  # sizes first: cheap
        f = path / name
        if Path(name).name != name or not f.is_file():
            return f"{f} missing"
        if f.stat().st_size != want.get("size"):
            return f"{f} has {f.stat().st_size} bytes, {MANIFEST} records {want.get('size')}"
    for name, want in sorted(files.items()):
        got = sha256_file(path / name)
        if got != want.get("sha256"):
            return f"{path / name} has sha256 {got}, {MANIFEST} records {want.get('sha256')}"
    info = _read_json_or_none(path / STATE)
    if not isinstance(info, dict) or info.get("step") != step:
        return f"{STATE} does not record step {step}"
    n = info.get("num_processes")
    ranks = [f"{kind}-rank{r}.pt" for r in range(n if isinstance(n, int) else 0) for kind in ("rng", "source")]
    unlisted = [r for r in ranks if r not in files]
    return f"{MANIFEST} does not list {', '.join(unlisted)}" if unlisted else None
