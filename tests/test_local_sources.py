"""``source: local``: the toy DAG's own base model and benchmarks, copied elsewhere and named as local
sources, give the base model the same scores; bad local inputs are refused with the key and the path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import copy_repo, snakemake
from test_toy_dag import job_counts
from statepost import local
from statepost.data import write_local
from statepost.io import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
TOY = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
SCORE_KEYS = ("metrics", "value", "stderr", "n", "num_fewshot")


def local_config(src: Path) -> dict:
    """The toy config with the base model and every benchmark read from local copies under ``src`` (its runs
    stay configured; the test asks only for the base model's scores)."""
    cfg = {k: v for k, v in TOY.items() if k not in ("base_model", "benchmarks")}
    cfg["base_model"] = {"source": "local", "path": str(src / "base")}
    cfg["benchmarks"] = {
        name: {"source": "local", "path": str(src / "data" / name), "splits": bench["splits"], "eval": bench["eval"]}
        for name, bench in TOY["benchmarks"].items()
    }
    return cfg


@pytest.mark.slow
def test_local_copies_of_the_toy_give_the_same_base_scores(toy_run, tmp_path):
    toy, _ = toy_run
    src = tmp_path / "mine"
    shutil.copytree(toy / "results" / "toy" / "models" / "base", src / "base")
    for name, bench in TOY["benchmarks"].items():
        (src / "data" / name).mkdir(parents=True)
        for split in bench["splits"]:
            shutil.copy(toy / "results" / "toy" / "data" / name / f"{split}.jsonl", src / "data" / name / f"{split}.jsonl")
    # one split as parquet, in two shards (the hub's layout), to read both formats
    mmlu = src / "data" / "mmlu"
    rows = pd.read_json(mmlu / "test.jsonl", lines=True)
    rows.iloc[: len(rows) // 2].to_parquet(mmlu / "test-00000-of-00002.parquet")
    rows.iloc[len(rows) // 2 :].to_parquet(mmlu / "test-00001-of-00002.parquet")
    (mmlu / "test.jsonl").unlink()

    work = copy_repo(tmp_path / "repo")
    (work / "local.yaml").write_text(yaml.safe_dump(local_config(src), sort_keys=False))
    targets = [f"results/toy/scores/base/{name}.json" for name in TOY["benchmarks"]]
    snakemake(work, "--configfile", "local.yaml", "--", *targets)

    for name in TOY["benchmarks"]:
        got = json.loads((work / "results" / "toy" / "scores" / "base" / f"{name}.json").read_text())
        want = json.loads((toy / "results" / "toy" / "scores" / "base" / f"{name}.json").read_text())
        assert {k: got[k] for k in SCORE_KEYS} == {k: want[k] for k in SCORE_KEYS}, name
        manifest = json.loads((work / "results" / "toy" / "data" / name / "manifest.json").read_text())
        assert manifest["source"] == "local" and manifest["files"], manifest
        for split, out in manifest["outputs"].items():
            assert out["rows"] == sum(1 for _ in open(toy / "results" / "toy" / "data" / name / f"{split}.jsonl"))
    assert sorted(manifest["files"]) == ["dev.jsonl", "test-00000-of-00002.parquet", "test-00001-of-00002.parquet",
                                         "validation.jsonl"]  # mmlu's splits: dev, test (here as parquet), validation

    run = json.loads((work / "results" / "toy" / "models" / "base" / "run.json").read_text())
    toy_run_json = json.loads((toy / "results" / "toy" / "models" / "base" / "run.json").read_text())
    assert run["source"] == "local" and run["path"] == str((src / "base").resolve())
    assert run["files"] == toy_run_json["files"]  # the same files, byte for byte, each with its sha256

    # content decides: a touch plans nothing, an edited row reruns that benchmark's data and its score
    def plan():
        proc = snakemake(work, "--configfile", "local.yaml", "-n", "--", *targets)
        out = proc.stdout + proc.stderr
        return job_counts(out) if "Job stats:" in out else {}

    assert plan() == {}
    (src / "data" / "gsm8k" / "test.jsonl").touch()
    (src / "base" / "config.json").touch()
    assert plan() == {}
    lines = (src / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()
    (src / "data" / "gsm8k" / "test.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert plan() == {"data_gsm8k": 1, "evaluate": 1}


def test_missing_path_is_named_with_its_key(tmp_path):
    cfg = {"base_model": {"source": "local", "path": str(tmp_path / "nowhere")}, "benchmarks": {}}
    with pytest.raises(ConfigError, match=r"config key base_model\.path: .*nowhere: no such directory"):
        local.check_paths(cfg)
    (tmp_path / "b").mkdir()
    cfg = {"base_model": {"source": "toy"},
           "benchmarks": {"gsm8k": {"source": "local", "path": str(tmp_path / "b"), "splits": ["train", "test"]}}}
    with pytest.raises(ConfigError, match=r"config key benchmarks\.gsm8k\.splits: .*b: no file for split 'train'"):
        local.check_paths(cfg)
    (tmp_path / "b" / "train.jsonl").write_text("")
    (tmp_path / "b" / "train.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"config key benchmarks\.gsm8k\.path: .*b: split 'train' has both JSONL and parquet"):
        local.check_paths(cfg)


def test_dag_build_names_the_key_and_path(tmp_path):
    work = copy_repo(tmp_path / "repo")
    cfg = dict(TOY, base_model={"source": "local", "path": "no/such/model"})
    (work / "bad.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(work, "--configfile", "bad.yaml", "-n", check=False)
    assert proc.returncode != 0
    assert "config key base_model.path: no/such/model: no such directory" in proc.stdout + proc.stderr


def test_pickle_weights_are_refused_naming_the_path(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    cfg = {"base_model": {"source": "local", "path": str(model)}, "benchmarks": {}}
    with pytest.raises(ConfigError, match=rf"config key base_model\.path: {model}: no \*\.safetensors weights "
                                          r"\(found pytorch_model\.bin\)"):
        local.check_paths(cfg)
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"{model}: holds pickle weights \(pytorch_model\.bin\)"):
        local.check_paths(cfg)


def test_local_rows_are_validated_like_every_source(tmp_path):
    src = tmp_path / "gsm8k"
    src.mkdir()
    good = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=5\n#### 5"}
    bad = {"question": "Two plus two?", "answer": "four"}
    (src / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{src / 'test.jsonl'}:2: answer: last line must be '#### <number>'"):
        write_local("gsm8k", {"path": str(src), "splits": ["test"]}, tmp_path / "out")
    pd.DataFrame([good, {**good, "extra": 1}]).to_parquet(src / "train.parquet")
    manifest = write_local("gsm8k", {"path": str(src), "splits": ["train"]}, tmp_path / "out")
    assert manifest["outputs"]["train"]["rows"] == 2 and list(manifest["files"]) == ["train.parquet"]
    assert [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()] == [good, good]
