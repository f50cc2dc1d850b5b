"""statepost.gpus: GPU slot assignment for local multi-GPU boxes (no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from statepost import gpus

REPO = Path(__file__).resolve().parents[1]

# The child prints what it sees, then holds its slot for `hold` seconds.
CHILD = (
    "import os, sys, time; "
    "print('START', time.time(), os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>'), flush=True); "
    "time.sleep(float(sys.argv[1])); "
    "print('END', time.time(), flush=True)"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STATEPOST_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["STATEPOST_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    env["STATEPOST_GPU_POLL"] = "0.05"
    env.update(extra)
    return env


def _start(env: dict, n: int = 1, hold: float = 1.0, *opts: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "statepost.gpus", "--gpus", str(n), *opts, "--", sys.executable, "-c", CHILD, str(hold)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen, timeout: float = 30) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"rc={p.returncode}\nstdout={out}\nstderr={err}"
    start = next(line.split() for line in out.splitlines() if line.startswith("START"))
    end = next(line.split() for line in out.splitlines() if line.startswith("END"))
    return {"cvd": start[2], "start": float(start[1]), "end": float(end[1]), "stderr": err}


def _wait_started(p: subprocess.Popen) -> None:
    """Block until the child printed START (so it holds its slot)."""
    line = p.stdout.readline()
    assert line.startswith("START"), (line, p.poll())
    p._first_line = line  # keep for the result


def _result_after_start(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=30)
    out = p._first_line + out
    assert p.returncode == 0, f"rc={p.returncode}\nstdout={out}\nstderr={err}"
    start = next(line.split() for line in out.splitlines() if line.startswith("START"))
    end = next(line.split() for line in out.splitlines() if line.startswith("END"))
    return {"cvd": start[2], "start": float(start[1]), "end": float(end[1]), "stderr": err}


def test_concurrent_jobs_get_distinct_gpus_and_third_waits(tmp_path):
    env = _env(tmp_path, STATEPOST_NUM_GPUS="2")
    a, b = _start(env, hold=1.5), _start(env, hold=1.5)
    _wait_started(a)
    _wait_started(b)
    c = _start(env, hold=0.1)  # both slots are held now: this one must wait
    ra, rb = _result_after_start(a), _result_after_start(b)
    rc = _result(c)
    assert {ra["cvd"], rb["cvd"]} == {"0", "1"}
    first_end = min(ra["end"], rb["end"])
    assert rc["start"] >= first_end, (ra, rb, rc)
    assert rc["cvd"] in {"0", "1"}
    assert "waiting for 1 free GPU slot(s) of 2" in rc["stderr"]


def test_multi_gpu_request_gets_all_ids(tmp_path):
    env = _env(tmp_path, STATEPOST_NUM_GPUS="3")
    r = _result(_start(env, n=3, hold=0))
    assert sorted(r["cvd"].split(",")) == ["0", "1", "2"]


def test_explicit_gpu_id_pool(tmp_path):
    env = _env(tmp_path, STATEPOST_GPU_IDS="5,7")
    a = _start(env, hold=1.0)
    _wait_started(a)
    rb = _result(_start(env, hold=0))
    ra = _result_after_start(a)
    assert {ra["cvd"], rb["cvd"]} == {"5", "7"}


def test_zero_gpus_leaves_env_alone(tmp_path):
    r = _result(_start(_env(tmp_path, STATEPOST_NUM_GPUS="2"), n=0, hold=0))
    assert r["cvd"] == "<unset>"
    r = _result(_start(_env(tmp_path, STATEPOST_NUM_GPUS="2", CUDA_VISIBLE_DEVICES="3"), n=0, hold=0))
    assert r["cvd"] == "3"
    assert not (tmp_path / "locks").exists()


def test_inside_slurm_leaves_env_alone(tmp_path):
    r = _result(_start(_env(tmp_path, STATEPOST_NUM_GPUS="2", SLURM_JOB_ID="123"), n=1, hold=0))
    assert r["cvd"] == "<unset>"
    assert "inside SLURM job 123" in r["stderr"]
    assert not (tmp_path / "locks").exists()


def test_scheduler_set_cuda_visible_devices_is_kept(tmp_path):
    r = _result(_start(_env(tmp_path, STATEPOST_NUM_GPUS="2", CUDA_VISIBLE_DEVICES="GPU-abc"), n=1, hold=0))
    assert r["cvd"] == "GPU-abc"


def test_too_many_gpus_fails_clearly(tmp_path):
    p = _start(_env(tmp_path, STATEPOST_NUM_GPUS="1"), n=2, hold=0)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert "asks for 2 GPU(s) but this box has 1" in err
    assert "START" not in out


def test_wait_times_out_with_message(tmp_path):
    env = _env(tmp_path, STATEPOST_NUM_GPUS="1")
    a = _start(env, hold=2.0)
    _wait_started(a)
    b = _start(env, 1, 0, "--timeout", "0.3")
    out, err = b.communicate(timeout=30)
    _result_after_start(a)
    assert b.returncode == 2, err
    assert "no 1 free GPU slot(s) of 1 after 0.3 s" in err
    assert "--resources gpu=1" in err
    assert "START" not in out


def test_lock_released_when_job_is_killed(tmp_path):
    env = _env(tmp_path, STATEPOST_NUM_GPUS="1")
    a = _start(env, hold=60)
    _wait_started(a)
    a.kill()
    a.communicate(timeout=30)
    r = _result(_start(env, hold=0), timeout=30)
    assert r["cvd"] == "0"


def test_launch_builds_python_or_accelerate_command():
    assert gpus.build_command(0, ["scripts/train.py", "--x", "1"], launch=True, python="py") == [
        "py", "scripts/train.py", "--x", "1"
    ]
    assert gpus.build_command(1, ["scripts/train.py"], launch=True, python="py") == ["py", "scripts/train.py"]
    cmd = gpus.build_command(4, ["scripts/train.py", "--x"], launch=True, python="py")
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert "--multi_gpu" in cmd and "--main_process_port" in cmd
    assert cmd[-2:] == ["scripts/train.py", "--x"]
    assert gpus.build_command(4, ["echo", "hi"], launch=False) == ["echo", "hi"]


def test_launch_runs_script_with_python(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import os, sys; print('ARGS', sys.argv[1:], os.environ.get('CUDA_VISIBLE_DEVICES'))\n")
    env = _env(tmp_path, STATEPOST_NUM_GPUS="2")
    out = subprocess.run(
        [sys.executable, "-m", "statepost.gpus", "--gpus", "1", "--launch", "--", str(script), "a b"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ARGS ['a b'] 0" in out.stdout


def test_pool_from_env_and_fallback(tmp_path, monkeypatch):
    assert gpus.gpu_pool({"STATEPOST_NUM_GPUS": "3"}) == ["0", "1", "2"]
    assert gpus.gpu_pool({"STATEPOST_GPU_IDS": "2, 3", "STATEPOST_NUM_GPUS": "8"}) == ["2", "3"]
    with pytest.raises(gpus.GpuError):
        gpus.gpu_pool({"STATEPOST_NUM_GPUS": "two"})
    # no env and no nvidia-smi -> 0 GPUs
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpus.gpu_pool({}) == []
    # a fake nvidia-smi: its `-L` lines are counted
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: A (UUID: x)'\necho 'GPU 1: A (UUID: y)'\n")
    fake.chmod(0o755)
    assert gpus.gpu_pool({}) == ["0", "1"]


def test_module_stays_torch_free():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, statepost.gpus; print('torch' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr
