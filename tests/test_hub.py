"""Hub downloads without network: the real huggingface_hub.snapshot_download against a local Hub.

tests/hubfixtures.FakeHub serves repos on 127.0.0.1 with the Hub's API shapes (repo info, tree
listing, resolve with X-Repo-Commit/ETag headers), so the whole download path runs: revision
resolution, allow/ignore patterns, the HF cache layout (blobs, snapshots/<commit>, refs/main,
trees/), and the offline path (HF_HUB_OFFLINE) that serves a later call from that cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubfixtures import FakeHub, parquet_bytes, tiny_model_dir
from statepost import benchmarks, data, toyworld
from statepost.io import DataError, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
GSM_FILES = ("main/train-00000-of-00001.parquet", "main/test-00000-of-00001.parquet")


@pytest.fixture(scope="module")
def toy_rows():
    return {
        "gsm8k": toyworld.generate_toy("gsm8k", {"seed": 5, "rows": {"train": 12, "test": 6}}),
        "mmlu": toyworld.generate_toy("mmlu", {"seed": 5, "rows": {"dev": 1, "test": 2}}),
        "truthfulqa_mc2": toyworld.generate_toy("truthfulqa_mc2", {"seed": 5, "rows": {"validation": 7}}),
    }


@pytest.fixture(scope="module")
def hub(toy_rows, tmp_path_factory):
    h = FakeHub()
    g, m, t = toy_rows["gsm8k"], toy_rows["mmlu"], toy_rows["truthfulqa_mc2"]
    h.commits = {}
    h.commits["gsm8k"] = h.add_repo("dataset", "openai/gsm8k", {
        GSM_FILES[0]: parquet_bytes(g["train"]),
        GSM_FILES[1]: parquet_bytes(g["test"]),
        "socratic/train-00000-of-00001.parquet": parquet_bytes(g["train"][:2]),
        "README.md": b"# gsm8k\n",
    })
    h.commits["mmlu"] = h.add_repo("dataset", "cais/mmlu", {
        "all/dev-00000-of-00001.parquet": parquet_bytes(m["dev"]),
        "all/test-00000-of-00001.parquet": parquet_bytes(m["test"]),
        "all/validation-00000-of-00001.parquet": parquet_bytes(m["test"][:1]),
        "all/auxiliary_train-00000-of-00001.parquet": parquet_bytes(m["test"]),
        "astronomy/test-00000-of-00001.parquet": parquet_bytes(m["test"][:1]),
    })
    h.commits["truthfulqa_mc2"] = h.add_repo("dataset", "truthfulqa/truthful_qa", {
        "multiple_choice/validation-00000-of-00001.parquet": parquet_bytes(t["validation"]),
        "generation/validation-00000-of-00001.parquet": parquet_bytes([{"question": "q", "best_answer": "a"}]),
    })
    bad = [dict(r) for r in m["test"]]
    bad[1]["choices"] = bad[1]["choices"][:3]
    h.commits["bad"] = h.add_repo("dataset", "someone/bad-mmlu", {
        "all/dev-00000-of-00001.parquet": parquet_bytes(m["dev"]),
        "all/test-00000-of-00001.parquet": parquet_bytes(bad),
    })
    src, model, tok = tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny")
    h.model = (src, model, tok)
    h.commits["model"] = h.add_dir("model", "toy/tiny-qwen3", src, extra={
        "pytorch_model.bin": b"\x80\x04not really a pickle",
        "modeling_tiny.py": b"raise SystemExit('remote code ran')\n",
        "README.md": b"# tiny\n",
    })
    cfg = json.loads((src / "config.json").read_text())
    h.commits["pickle"] = h.add_repo("model", "toy/pickle-only", {
        "config.json": json.dumps(cfg).encode(), "pytorch_model.bin": b"\x80\x04pickle",
        "tokenizer.json": (src / "tokenizer.json").read_bytes()})
    h.commits["remote"] = h.add_repo("model", "toy/remote-code", {
        "config.json": json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}).encode(),
        "model.safetensors": (src / "model.safetensors").read_bytes(),
        "modeling_x.py": b"print('remote')\n"})
    h.start()
    yield h
    h.stop()


@pytest.fixture
def online(monkeypatch):
    """Whatever HF_HUB_OFFLINE the session has, these calls go to the local hub."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)


def _cfg(benchmark, **kw):
    repo = {"gsm8k": ("openai/gsm8k", "main"), "mmlu": ("cais/mmlu", "all"),
            "truthfulqa_mc2": ("truthfulqa/truthful_qa", "multiple_choice")}[benchmark]
    return {"source": "hub", "repo": repo[0], "config_name": repo[1], "revision": "main",
            "splits": benchmarks.get(benchmark).splits, **kw}


def test_gsm8k_download_convert_manifest(hub, online, toy_rows, tmp_path, caplog):
    commit = hub.commits["gsm8k"]
    before = len(hub.requests)
    with caplog.at_level(logging.WARNING):
        m = data.prepare("gsm8k", _cfg("gsm8k"), tmp_path / "gsm8k", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert (f"unpinned revision 'main' resolved to {commit}; pin it by setting benchmarks.gsm8k.revision: {commit}"
            in caplog.text)
    assert m["resolved_commit"] == commit and m["revision"] == "main" and m["source"] == "hub"
    assert m["repo"] == "openai/gsm8k" and m["config_name"] == "main" and m["seed"] is None
    src = hub.repos[("dataset", "openai/gsm8k")]["commits"][commit]
    assert m["files"] == {f: hashlib.sha256(src[f]).hexdigest() for f in GSM_FILES}
    for split in ("train", "test"):
        assert list(read_jsonl(tmp_path / "gsm8k" / f"{split}.jsonl")) == toy_rows["gsm8k"][split]
        assert m["outputs"][split]["rows"] == len(toy_rows["gsm8k"][split])
    assert json.loads((tmp_path / "gsm8k" / "manifest.json").read_text()) == m
    # only the configured parquet files travelled; the HF cache has its usual layout
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for meth, p in hub.requests[before:]
               if meth == "GET" and "/resolve/" in p}
    assert fetched == set(GSM_FILES)
    store = tmp_path / "cache" / "datasets--openai--gsm8k"
    assert (store / "refs" / "main").read_text() == commit
    assert (store / "snapshots" / commit / GSM_FILES[0]).is_file()
    assert not (store / "snapshots" / commit / "socratic").exists()


def test_pinned_then_offline_from_cache(hub, online, tmp_path, caplog, monkeypatch):
    import huggingface_hub.constants as c

    commit = hub.commits["gsm8k"]
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        first = data.prepare("gsm8k", _cfg("gsm8k", revision=commit), tmp_path / "a", cache_dir=cache,
                             endpoint=hub.url)
    assert "unpinned" not in caplog.text and first["resolved_commit"] == commit == first["revision"]
    # the branch name is resolved once online (refs/main), then served offline from the cache
    data.prepare("gsm8k", _cfg("gsm8k"), tmp_path / "b", cache_dir=cache, endpoint=hub.url)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    for rev, out in (("main", "c"), (commit, "d")):
        m = data.prepare("gsm8k", _cfg("gsm8k", revision=rev), tmp_path / out, cache_dir=cache, endpoint=hub.url,
                         expected=first["files"])
        assert m["resolved_commit"] == commit and m["outputs"] == first["outputs"]
    assert len(hub.requests) == before, "offline mode must not touch the network"
    with pytest.raises(DataError, match=r"cannot fetch dataset cais/mmlu@main: the hub cannot be reached"):
        data.prepare("mmlu", _cfg("mmlu"), tmp_path / "e", cache_dir=cache, endpoint=hub.url)


def test_mmlu_arrays_become_lists(hub, online, toy_rows, tmp_path):
    before = len(hub.requests)
    m = data.prepare("mmlu", _cfg("mmlu"), tmp_path / "mmlu", cache_dir=tmp_path / "cache", endpoint=hub.url)
    for split in ("dev", "test"):
        rows = list(read_jsonl(tmp_path / "mmlu" / f"{split}.jsonl"))
        assert rows == toy_rows["mmlu"][split]
        assert all(type(r["choices"]) is list and type(r["answer"]) is int for r in rows)
    assert set(m["files"]) == {"all/dev-00000-of-00001.parquet", "all/test-00000-of-00001.parquet"}
    fetched = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for meth, p in hub.requests[before:]
               if meth == "GET" and "/resolve/" in p}
    assert fetched == set(m["files"])  # not validation, auxiliary_train or the per-subject configs


def test_truthfulqa_structs_become_plain_dicts(hub, online, toy_rows, tmp_path):
    m = data.prepare("truthfulqa_mc2", _cfg("truthfulqa_mc2"), tmp_path / "tqa", cache_dir=tmp_path / "cache",
                     endpoint=hub.url)
    rows = list(read_jsonl(tmp_path / "tqa" / "validation.jsonl"))
    assert rows == toy_rows["truthfulqa_mc2"]["validation"]
    assert set(m["files"]) == {"multiple_choice/validation-00000-of-00001.parquet"}
    assert data.validate_file("truthfulqa_mc2", "validation", tmp_path / "tqa" / "validation.jsonl") == 7


def test_changed_source_files_are_refused(hub, online, tmp_path):
    cfg = _cfg("gsm8k")
    first = data.prepare("gsm8k", cfg, tmp_path / "a", cache_dir=tmp_path / "cache", endpoint=hub.url)
    changed = dict(first["files"], **{GSM_FILES[1]: "0" * 64})
    with pytest.raises(DataError, match=rf"{GSM_FILES[1]}: sha256 [0-9a-f]{{64}} does not match the recorded 0{{64}}"):
        data.prepare("gsm8k", cfg, tmp_path / "b", cache_dir=tmp_path / "cache", endpoint=hub.url, expected=changed)
    with pytest.raises(DataError, match="main/extra.parquet: expected by the manifest but not in the snapshot"):
        data.prepare("gsm8k", cfg, tmp_path / "c", cache_dir=tmp_path / "cache", endpoint=hub.url,
                     expected={**first["files"], "main/extra.parquet": "1" * 64})
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_bad_rows_on_the_hub_are_refused_before_writing(hub, online, tmp_path):
    cfg = {"source": "hub", "repo": "someone/bad-mmlu", "config_name": "all", "revision": "main"}
    with pytest.raises(DataError, match=r"all/test-00000-of-00001\.parquet:2: choices: expected exactly 4 choices"):
        data.prepare("mmlu", cfg, tmp_path / "mmlu", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert not (tmp_path / "mmlu").exists()


def test_missing_config_or_repo(hub, online, tmp_path):
    with pytest.raises(DataError, match=r"no parquet files for config 'socratic' split 'test'"):
        data.prepare("gsm8k", _cfg("gsm8k", config_name="socratic"), tmp_path / "x", cache_dir=tmp_path / "cache",
                     endpoint=hub.url)
    with pytest.raises(DataError, match=r"cannot fetch dataset nobody/nothing@main: no such repository, or it is priv"):
        data.prepare("gsm8k", _cfg("gsm8k", repo="nobody/nothing"), tmp_path / "y", cache_dir=tmp_path / "cache",
                     endpoint=hub.url)


# ---------------------------------------------------------------- models
def test_model_snapshot_safetensors_only(hub, online, tmp_path, caplog):
    torch = pytest.importorskip("torch")
    from statepost import models

    commit = hub.commits["model"]
    out = tmp_path / "base"
    with caplog.at_level(logging.WARNING):
        run = models.download_hub_model("toy/tiny-qwen3", "main", out, cache_dir=tmp_path / "cache",
                                        endpoint=hub.url)
    want = f"unpinned revision 'main' resolved to {commit}; pin it by setting base_model.revision: {commit}"
    assert want in caplog.text
    assert run["source"] == "hub" and run["repo"] == "toy/tiny-qwen3" and run["revision"] == "main"
    assert run["resolved_commit"] == commit
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "run.json"} <= names
    assert not names & {"pytorch_model.bin", "modeling_tiny.py", "README.md"}
    assert set(run["files"]) == names - {"run.json"}
    src = hub.repos[("model", "toy/tiny-qwen3")]["commits"][commit]
    assert all(run["files"][n] == hashlib.sha256(src[n]).hexdigest() for n in run["files"])
    assert json.loads((out / "run.json").read_text()) == run
    fetched = hub.downloaded()
    assert not {"pytorch_model.bin", "modeling_tiny.py"} & fetched
    # loads safely and computes exactly what the uploaded model computes
    _, model, tok = hub.model
    ids = tok("Question: Tom has 3 apples.\nAnswer:", return_tensors="pt")["input_ids"]
    loaded, loaded_tok = models.load_model(out), models.load_tokenizer(out)
    assert loaded_tok("Question: Tom has 3 apples.\nAnswer:", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # pinned: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = models.download_hub_model("toy/tiny-qwen3", commit, tmp_path / "pinned", cache_dir=tmp_path / "cache",
                                          endpoint=hub.url)
    assert "unpinned" not in caplog.text and again["files"] == run["files"]


@pytest.mark.parametrize("repo, message", [
    ("toy/pickle-only", r"no \*\.safetensors weights; pickle weights .* are refused"),
    ("toy/remote-code", r"config\.json: has 'auto_map'.*refused"),
], ids=["pickle-only", "auto-map"])
def test_unsafe_model_repos_are_refused(hub, online, tmp_path, repo, message):
    from statepost import models

    with pytest.raises(ValueError, match=message):
        models.download_hub_model(repo, "main", tmp_path / "base", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert not (tmp_path / "base").exists()
    assert not {"pytorch_model.bin", "modeling_x.py"} & hub.downloaded()


# ---------------------------------------------------------------- scripts honour HF_ENDPOINT
def _env(hub, tmp_path):
    return dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf_home"),
                HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")


def test_scripts_download_through_hf_endpoint(hub, tmp_path):
    cfg = _cfg("truthfulqa_mc2")
    out = tmp_path / "data" / "truthfulqa_mc2"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), "--benchmark", "truthfulqa_mc2",
                        "--config-json", json.dumps(cfg), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    commit = hub.commits["truthfulqa_mc2"]
    assert json.loads((out / "manifest.json").read_text())["resolved_commit"] == commit
    assert f"pin it by setting benchmarks.truthfulqa_mc2.revision: {commit}" in r.stderr
    # the default cache is HF_HOME/hub
    assert (tmp_path / "hf_home" / "hub" / "datasets--truthfulqa--truthful_qa" / "refs" / "main").is_file()
    # a changed source is refused through --expect-manifest
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {k: "f" * 64 for k in manifest["files"]}
    (tmp_path / "old.json").write_text(json.dumps(manifest))
    r = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), "--benchmark", "truthfulqa_mc2",
                        "--config-json", json.dumps(cfg), "--out", str(tmp_path / "again"),
                        "--expect-manifest", str(tmp_path / "old.json")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(hub, tmp_path))
    assert r.returncode == 1 and "does not match the recorded" in r.stderr

    base = {"source": "hub", "repo": "toy/tiny-qwen3", "revision": hub.commits["model"]}
    r = subprocess.run([sys.executable, str(ROOT / "scripts/base_model.py"), "--config-json", json.dumps(base),
                        "--out", str(tmp_path / "base")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "base" / "run.json").read_text())["resolved_commit"] == hub.commits["model"]
    assert "unpinned" not in r.stderr
    base = {"source": "hub", "repo": "toy/remote-code"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts/base_model.py"), "--config-json", json.dumps(base),
                        "--out", str(tmp_path / "remote")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(hub, tmp_path))
    assert r.returncode == 1 and "auto_map" in r.stderr and not (tmp_path / "remote").exists()


@pytest.mark.parametrize("offline", ["1", "0"], ids=["HF_HUB_OFFLINE", "no network"])
def test_offline_error_is_one_message_naming_the_repository(tmp_path, offline):
    """No network (or the hub's offline mode) and nothing cached: one short message, no traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE=offline, HF_HOME=str(tmp_path / "empty"), HF_HUB_ETAG_TIMEOUT="2",
               HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1")  # port 9: nothing listens
    runs = {
        "openai/gsm8k": [str(ROOT / "scripts/prepare_data.py"), "--benchmark", "gsm8k",
                         "--config-json", json.dumps(_cfg("gsm8k")), "--out", str(tmp_path / "d")],
        "Qwen/Qwen3-0.6B-Base": [str(ROOT / "scripts/base_model.py"), "--out", str(tmp_path / "m"),
                                 "--config-json", json.dumps({"source": "hub", "repo": "Qwen/Qwen3-0.6B-Base"})],
    }  # fmt: skip
    for repo, cmd in runs.items():
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len(errors) == 1 and "cannot fetch" in errors[0] and f"{repo}@main" in errors[0], r.stderr
        assert "the hub cannot be reached" in errors[0] and f"hf download {repo}" in errors[0]
        assert not (tmp_path / "d").exists() and not (tmp_path / "m").exists()
