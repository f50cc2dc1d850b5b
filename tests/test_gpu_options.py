"""Options for GPU boxes, checked without a GPU: lm-eval's vLLM backend (evaluation.backend), experiment
tracking and an accelerate config for multi-GPU training plan fine in a dry run of the paper config;
the FSDP config parses into accelerate's own config class with settings the loop accepts (training under it:
tests/test_fsdp.py); a missing vllm is named before any work."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, snakemake
from statepost import config as cfglib
from statepost import gpus
from statepost.backends import check_backend
from statepost.io import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FSDP = ROOT / "profiles" / "accelerate" / "fsdp.yaml"


def test_fsdp_config_parses_into_accelerates_config_class():
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(FSDP))
    assert isinstance(cfg, ClusterConfig) and cfg.distributed_type == DistributedType.FSDP
    # the settings the training loop accepts (statepost.train.distributed.check_fsdp)
    assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False
    # `accelerate launch` turns each fsdp_config key into its option of the same name: all must exist
    options = {o for a in launch_command_parser()._actions for o in a.option_strings}
    assert {f"--{k}" for k in cfg.fsdp_config} <= options, {f"--{k}" for k in cfg.fsdp_config} - options


def test_launch_with_an_accelerate_config(tmp_path):
    cmd = gpus.build_command(4, ["scripts/train.py", "--x"], launch=True, python="py", accelerate_config=str(FSDP))
    assert cmd[:5] == ["py", "-m", "accelerate.commands.launch", "--config_file", str(FSDP)]
    assert cmd[5:9] == ["--num_processes", "4", "--num_machines", "1"] and cmd[-2:] == ["scripts/train.py", "--x"]
    assert "--multi_gpu" not in cmd
    # one GPU: plain python, whatever the config file
    assert gpus.build_command(1, ["scripts/train.py"], launch=True, python="py", accelerate_config=str(FSDP)) == [
        "py", "scripts/train.py"]  # fmt: skip
    with pytest.raises(gpus.GpuError, match="accelerate config .*nope.yaml not found"):
        gpus.build_command(2, ["scripts/train.py"], launch=True, python="py", accelerate_config=str(tmp_path / "nope.yaml"))


def test_paper_dag_plans_vllm_tracking_and_fsdp_launch(tmp_path):
    work = copy_repo(tmp_path / "repo")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.setdefault("evaluation", {})["backend"] = "vllm"
    cfg["tracking"] = ["tensorboard"]
    cfg["runs"]["sft_mild"]["resources"] = {**cfg.get("resources", {}).get("train", {}), "gpu": 2,
                                            "accelerate_config": "profiles/accelerate/fsdp.yaml"}  # fmt: skip
    (work / "gpu.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = snakemake(work, "--configfile", "gpu.yaml", "-n", "-p").stdout
    evals = [line for line in out.splitlines() if "scripts/evaluate.py" in line]
    assert evals and all("--backend vllm" in e and "-- python scripts/evaluate.py" in e for e in evals), evals[:2]
    trains = [line for line in out.splitlines() if "scripts/train.py" in line]
    assert trains and all("--tracking tensorboard" in t for t in trains), trains[:2]
    mild = [t for t in trains if "results/paper/models/sft_mild/" in t]
    assert mild and re.search(r"--accelerate-config '?profiles/accelerate/fsdp.yaml'? --launch", mild[0]), mild
    assert all("--accelerate-config none" in t for t in trains if t not in mild)


def test_vllm_is_refused_on_cpu_when_the_dag_is_built():
    cfg = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    cfg["evaluation"]["backend"] = "vllm"
    with pytest.raises(ConfigError, match="config key evaluation.backend: vllm runs on GPUs only"):
        cfglib.validate(cfg)


def test_a_missing_vllm_is_named_at_job_start():
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"config key evaluation\.backend: vllm is not installed here; "
                                              r"install it .*lm_eval\[vllm\]"):
            check_backend("vllm", "auto")
    else:
        check_backend("vllm", "auto")
    check_backend("hf", "cpu")
