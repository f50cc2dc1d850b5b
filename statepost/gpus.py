"""Per-job GPU slot assignment for a local multi-GPU box.

Snakemake counts a ``gpu`` resource but never says *which* GPU a job gets. On a
local box (``snakemake --cores 8 --use-conda``) every GPU job would otherwise
see all GPUs and start on GPU 0. This wrapper gives each job its own GPUs::

    python -m statepost.gpus --gpus N -- CMD ARGS...

acquires N free GPU slots (one lock file per GPU, ``fcntl.flock``), sets
``CUDA_VISIBLE_DEVICES`` to their ids and ``exec``s CMD. The lock file
descriptors are inheritable and survive the ``exec``, so the slots are held
exactly as long as the job's process lives (also after a crash or kill: the
kernel drops the locks with the last descriptor).

With ``--launch`` CMD is a Python script and its arguments: it runs as
``python SCRIPT ARGS`` for N <= 1 and as ``accelerate launch --multi_gpu
--num_processes N ... SCRIPT ARGS`` for N > 1 (one process per GPU, free
rendezvous port). ``--accelerate-config FILE`` launches N > 1 processes with that accelerate
config instead (``accelerate launch --config_file FILE``, process count and port set here): the
training rule passes ``resources.train.accelerate_config``, e.g. ``profiles/accelerate/fsdp.yaml``
(FSDP, for a model that does not fit one GPU). The rule form, used by training and evaluation rules::

    shell: "python -m statepost.gpus --gpus {resources.gpu} --launch -- scripts/train.py ..."

(the GPU count is a resource, so changing it never makes Snakemake rerun a job).

Nothing is assigned, and ``CUDA_VISIBLE_DEVICES`` is left as it is, when N == 0,
inside a SLURM job (``SLURM_JOB_ID`` set: SLURM's gres plugin owns the devices)
or when ``CUDA_VISIBLE_DEVICES`` is already set (a scheduler or the user chose).

Environment:
  STATEPOST_NUM_GPUS       GPUs on this box (default: ``nvidia-smi -L`` count, else 0)
  STATEPOST_GPU_IDS        explicit comma-separated pool of GPU ids (overrides the count)
  STATEPOST_GPU_LOCK_DIR   lock directory (default ``.snakemake/gpu-locks`` in the working dir)
  STATEPOST_GPU_TIMEOUT    seconds to wait for free slots before failing (default 172800 = 48 h)
  STATEPOST_GPU_POLL       seconds between tries while waiting (default 2)

This module must stay torch-free and fast to import: it wraps every GPU job.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LOCK_DIR = Path(".snakemake") / "gpu-locks"
DEFAULT_TIMEOUT_S = 48 * 3600.0
DEFAULT_POLL_S = 2.0
_PREFIX = "[statepost.gpus]"


class GpuError(RuntimeError):
    """A GPU request that cannot be satisfied (bad count, no slot in time)."""


def _log(msg: str) -> None:
    print(f"{_PREFIX} {msg}", file=sys.stderr, flush=True)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise GpuError(f"{name}={raw!r} is not a number") from None


def gpu_pool(environ: dict | None = None) -> list[str]:
    """GPU ids this box offers: STATEPOST_GPU_IDS, else range(STATEPOST_NUM_GPUS),
    else one id per ``nvidia-smi -L`` line, else [] (no GPUs, no torch needed)."""
    env = os.environ if environ is None else environ
    ids = env.get("STATEPOST_GPU_IDS", "").strip()
    if ids:
        pool = [i.strip() for i in ids.split(",") if i.strip()]
        if len(set(pool)) != len(pool):
            raise GpuError(f"STATEPOST_GPU_IDS={ids!r} lists an id twice")
        return pool
    num = env.get("STATEPOST_NUM_GPUS", "").strip()
    if num:
        try:
            n = int(num)
        except ValueError:
            raise GpuError(f"STATEPOST_NUM_GPUS={num!r} is not an integer") from None
        if n < 0:
            raise GpuError(f"STATEPOST_NUM_GPUS={num!r} is negative")
        return [str(i) for i in range(n)]
    return [str(i) for i in range(_nvidia_smi_count())]


def _nvidia_smi_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def scheduler_owns_devices(environ: dict | None = None) -> str | None:
    """Why we must not assign devices ourselves (None: we should)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        return f"inside SLURM job {env['SLURM_JOB_ID']}"
    if "CUDA_VISIBLE_DEVICES" in env:
        return f"CUDA_VISIBLE_DEVICES already set ({env['CUDA_VISIBLE_DEVICES']!r})"
    return None


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def acquire(
    n: int,
    pool: list[str],
    lock_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    poll: float = DEFAULT_POLL_S,
    owner: str = "",
) -> tuple[list[str], list[int]]:
    """Take ``n`` GPU slots from ``pool``; return (ids, lock fds).

    All-or-nothing under a short global allocation lock, so two jobs that each
    want 2 of 3 GPUs cannot each grab one and wait forever. Polls every
    ``poll`` s until ``timeout`` s have passed, then raises GpuError naming the
    holders. The fds are left open and inheritable: close them (or exit) to release.
    """
    if n > len(pool):
        raise GpuError(
            f"job asks for {n} GPU(s) but this box has {len(pool)} "
            f"(pool {pool or 'empty'}; set STATEPOST_NUM_GPUS or STATEPOST_GPU_IDS, "
            "or lower the run's gpu request in the config)"
        )
    lock_dir.mkdir(parents=True, exist_ok=True)
    alloc = lock_dir / "allocate.lock"
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        alloc_fd = os.open(alloc, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(alloc_fd, fcntl.LOCK_EX)  # held for microseconds only
            got: list[tuple[str, int]] = []
            for gid in pool:
                fd = _try_lock(lock_dir / f"gpu{gid}.lock")
                if fd is not None:
                    got.append((gid, fd))
                    if len(got) == n:
                        break
            if len(got) == n:
                for gid, fd in got:
                    os.set_inheritable(fd, True)
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()} {owner}\n".encode(), 0)
                return [gid for gid, _ in got], [fd for _, fd in got]
            for _, fd in got:
                os.close(fd)
        finally:
            os.close(alloc_fd)  # also releases the allocation lock
        if time.monotonic() >= deadline:
            holders = "; ".join(f"gpu {g}: {_holder(lock_dir / f'gpu{g}.lock')}" for g in pool)
            raise GpuError(
                f"no {n} free GPU slot(s) of {len(pool)} after {timeout:g} s "
                f"(lock dir {lock_dir}; holders: {holders}). Run snakemake with "
                f"--resources gpu={len(pool)} so it never starts more GPU jobs than GPUs, "
                "or raise STATEPOST_GPU_TIMEOUT"
            )
        if not announced:
            _log(
                f"waiting for {n} free GPU slot(s) of {len(pool)} (lock dir {lock_dir}, "
                f"timeout {timeout:g} s); tip: snakemake --resources gpu={len(pool)}"
            )
            announced = True
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(n: int, cmd: list[str], *, launch: bool, python: str | None = None,
                  accelerate_config: str | None = None) -> list[str]:
    """The argv to exec: CMD itself, or with --launch the python/accelerate form (with ``accelerate_config``:
    that accelerate config file, for N > 1)."""
    if not cmd:
        raise GpuError("no command given after --")
    if not launch:
        return list(cmd)
    python = python or sys.executable
    if n <= 1:
        return [python, *cmd]
    if accelerate_config:
        if not Path(accelerate_config).is_file():
            raise GpuError(f"accelerate config {accelerate_config} not found (resources.train.accelerate_config)")
        return [
            python, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
            "--num_processes", str(n), "--num_machines", "1", "--main_process_port", str(_free_port()), *cmd,
        ]  # fmt: skip
    return [
        python, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        *cmd,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        own, cmd = argv[:i], argv[i + 1 :]
    else:
        own, cmd = argv, []
    p = argparse.ArgumentParser(
        prog="python -m statepost.gpus",
        description="Run CMD on N GPU slots of this box (CUDA_VISIBLE_DEVICES), held for the job's lifetime.",
        epilog="Example: python -m statepost.gpus --gpus 2 --launch -- scripts/train.py --help",
    )
    p.add_argument("--gpus", type=int, required=True, help="GPUs this job needs (0: none)")
    p.add_argument(
        "--launch",
        action="store_true",
        help="CMD is a Python script: run it with python (N<=1) or accelerate launch (N>1)",
    )
    p.add_argument(
        "--accelerate-config", default=None, metavar="FILE",
        help="with --launch and N>1: launch with this accelerate config file (none: data parallel flags)",
    )
    p.add_argument("--lock-dir", type=Path, default=None, help="default: $STATEPOST_GPU_LOCK_DIR or .snakemake/gpu-locks")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for slots (default $STATEPOST_GPU_TIMEOUT or 48 h)")
    p.add_argument("--poll", type=float, default=None, help="seconds between tries (default $STATEPOST_GPU_POLL or 2)")
    args = p.parse_args(own)
    if args.gpus < 0:
        p.error(f"--gpus must be >= 0, got {args.gpus}")
    if not cmd:
        p.error("give the command after --, e.g. python -m statepost.gpus --gpus 1 -- python scripts/evaluate.py ...")

    try:
        config_file = None if args.accelerate_config in (None, "", "none") else args.accelerate_config
        final = build_command(args.gpus, cmd, launch=args.launch, accelerate_config=config_file)
        reason = scheduler_owns_devices()
        if args.gpus > 0 and reason is None:
            lock_dir = args.lock_dir or Path(os.environ.get("STATEPOST_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)
            timeout = args.timeout if args.timeout is not None else _env_float("STATEPOST_GPU_TIMEOUT", DEFAULT_TIMEOUT_S)
            poll = args.poll if args.poll is not None else _env_float("STATEPOST_GPU_POLL", DEFAULT_POLL_S)
            ids, _fds = acquire(
                args.gpus, gpu_pool(), lock_dir, timeout=timeout, poll=poll, owner=shlex.join(cmd)[:200]
            )
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            _log(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
        elif args.gpus > 0:
            _log(f"not assigning GPUs: {reason}")
    except GpuError as e:
        _log(f"error: {e}")
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(final[0], final)  # lock fds are inheritable: they live as long as the job
    except OSError as e:
        _log(f"error: cannot run {final[0]!r}: {e}")
        return 127


if __name__ == "__main__":
    sys.exit(main())
