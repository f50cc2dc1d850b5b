"""statepost.models: toy tokenizer and model, the toy base directory, safe loading, scripts/base_model.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hubfixtures import TINY, tiny_model_dir  # noqa: E402
from statepost import data, models, toyworld  # noqa: E402
from statepost.io import sha256_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Question: Tom has 3 apples and buys 4 more. How many apples does Tom have now?\nAnswer:"


@pytest.fixture(scope="module")
def corpus():
    return toyworld.toy_corpus(None, seed=0, n_docs=400)


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("base") / "base"
    cfg = {**TINY, "pretrain": {**TINY["pretrain"], "steps": 12}}
    run = models.make_toy_base(cfg, corpus, out)
    return out, run, cfg


def _logits(model, tok, text=PROMPT):
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_tokenizer_round_trips_and_has_qwen_special_tokens(corpus):
    tok = models.build_toy_tokenizer(corpus, 600)
    assert len(tok) <= 600
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.eos_token_id == tok.pad_token_id
    for text in (PROMPT, "#### 7", " 3 + 4 = 7.\n#### 7", PROMPT + " 12 - 5 = 7.\n#### 7",
                 "Q: Is the Earth flat?\nA: No, the Earth is round.", "  odd  spacing\t\n\nand ünïcode ✓"):
        ids = tok(text)["input_ids"]
        assert tok.eos_token_id not in ids  # no special tokens added around text
        assert tok.decode(ids) == text
    assert tok("<|endoftext|>")["input_ids"] == [tok.eos_token_id]
    assert len(tok("2026")["input_ids"]) == 4  # digits one by one, as in Qwen's tokenizer
    assert len(tok(PROMPT)["input_ids"]) < len(PROMPT) / 2  # BPE learned the domain's words


def test_toy_model_is_a_small_tied_qwen3(corpus):
    tok = models.build_toy_tokenizer(corpus, 1024)
    model = models.build_toy_model({}, tok)  # the default toy size
    n = models.param_count(model)
    assert 100_000 < n < 5_000_000
    c = model.config
    assert c.model_type == "qwen3" and c.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert c.vocab_size % 64 == 0 and c.vocab_size >= len(tok)
    assert c.eos_token_id == c.pad_token_id == tok.eos_token_id and c.bos_token_id is None
    assert next(model.parameters()).dtype == torch.float32
    again = models.build_toy_model({}, tok)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_toy_base_directory(toy_base):
    out, run, cfg = toy_base
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "run.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    assert json.loads((out / "run.json").read_text()) == run
    assert run["source"] == "toy" and run["resolved_commit"] is None and run["parameters"] < 5_000_000
    assert set(run["files"]) == {p.name for p in out.iterdir() if p.name != "run.json"}
    assert all(sha256_file(out / n) == h for n, h in run["files"].items())
    assert run["pretrain"]["steps"] == 12 and run["pretrain"]["loss_last"] < run["pretrain"]["loss_first"]
    assert run["config"]["hidden_size"] == cfg["hidden_size"] and run["env"]["versions"]["torch"]
    assert run["timings"]["pretrain_s"] >= 0 and run["wall_time_s"] > 0
    gen = json.loads((out / "generation_config.json").read_text())
    tok = models.load_tokenizer(out)
    assert gen["eos_token_id"] == gen["pad_token_id"] == tok.eos_token_id
    assert tok.decode(tok(PROMPT)["input_ids"]) == PROMPT


def test_toy_base_is_deterministic(toy_base, corpus, tmp_path):
    out, run, cfg = toy_base
    again = models.make_toy_base(cfg, corpus, tmp_path / "again")
    assert again["files"] == run["files"]  # same seed, same bytes (weights and tokenizer)
    assert again["pretrain"]["losses_every_10"] == run["pretrain"]["losses_every_10"]


def test_saved_model_reloads_with_identical_logits(tmp_path, corpus):
    from transformers import AutoModelForCausalLM

    path, model, tok = tiny_model_dir(tmp_path / "m")
    models.pretrain_toy(model, tok, corpus[:50], TINY, progress=False)  # weights no longer at init
    model.save_pretrained(path)
    want = _logits(model, tok)
    got = models.load_model(path)
    assert not got.training and next(got.parameters()).dtype == torch.float32
    assert torch.equal(_logits(got, tok), want)
    plain = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    assert torch.equal(_logits(plain, tok), want)
    assert models.load_model(path, dtype="bfloat16").dtype == torch.bfloat16


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_pickle_only_directory_is_refused(toy_base, tmp_path):
    out, _, _ = toy_base
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(out / "config.json", d)
    shutil.copy(out / "tokenizer.json", d)
    shutil.copy(out / "tokenizer_config.json", d)
    model = models.load_model(out)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    for load in (models.load_model, models.load_tokenizer, models.verify_model_dir):
        with pytest.raises(ValueError, match=r"pickled: no \*\.safetensors weights \(found pytorch_model\.bin\)"
                                             r".*pickle weights .* are refused"):
            load(d)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.json"])
def test_tampered_file_is_refused(toy_base, tmp_path, name):
    d = _copy(toy_base[0], tmp_path / "tampered")
    f = d / name
    raw = bytearray(f.read_bytes())
    if name.endswith(".json"):
        f.write_text(f.read_text().replace("}", " }", 1))  # same JSON, different bytes
    else:
        raw[-1] ^= 0xFF  # flip the last byte of the weights
        f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"{name}: sha256 [0-9a-f]{{64}} does not match [0-9a-f]{{64}} recorded in"):
        models.load_model(d)
    if name == "model.safetensors":
        models.load_tokenizer(d)  # the tokenizer does not depend on the weights
    else:
        with pytest.raises(ValueError, match=rf"{name}: sha256"):
            models.load_tokenizer(d)


def test_missing_listed_file_is_refused(toy_base, tmp_path):
    d = _copy(toy_base[0], tmp_path / "partial")
    (d / "generation_config.json").unlink()
    with pytest.raises(ValueError, match=r"generation_config\.json: listed in .*run\.json but missing"):
        models.verify_model_dir(d)


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_auto_map_is_refused(toy_base, tmp_path, name):
    d = _copy(toy_base[0], tmp_path / "remote")
    cfg = json.loads((d / name).read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / name).write_text(json.dumps(cfg))
    (d / "run.json").unlink()  # even without a hash manifest
    for load in (models.load_model, models.load_tokenizer):
        with pytest.raises(ValueError, match=rf"{name}: has 'auto_map'.*refused"):
            load(d)


def test_directory_without_run_json_still_loads_safely(tmp_path):
    path, model, tok = tiny_model_dir(tmp_path / "plain")
    assert models.verify_model_dir(path) == {}
    assert torch.equal(_logits(models.load_model(path), tok), _logits(model, tok))
    with pytest.raises(ValueError, match="model directory not found"):
        models.load_model(tmp_path / "nowhere")


def test_resolve_dtype():
    assert models.resolve_dtype(None) == torch.float32
    assert models.resolve_dtype("bf16") == torch.bfloat16
    assert models.resolve_dtype(torch.float16) == torch.float16
    want = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert models.resolve_dtype("auto") == want
    assert models.resolve_dtype("auto", device="cpu") == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        models.resolve_dtype("int8")


def test_base_model_help_is_fast_and_light():
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "scripts/base_model.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--benchmarks-json" in r.stdout and "--data-dir" in r.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "huggingface_hub", "tokenizers"}


def test_base_model_script_toy(tmp_path):
    data_dir = tmp_path / "data"
    benches = {"gsm8k": {"source": "toy", "seed": 1, "rows": {"train": 20, "test": 10}}}
    data.prepare("gsm8k", benches["gsm8k"], data_dir / "gsm8k")
    base = {"source": "toy", **{k: v for k, v in TINY.items() if k != "pretrain"},
            "pretrain": {"steps": 2, "lr": 3e-3, "batch_size": 2, "max_length": 32, "corpus_docs": 300,
                         "answer_line_frac": 0.5, "answer_line_names": 2, "fact_coverage": 0.5}}
    out, log = tmp_path / "models" / "base", tmp_path / "base.log"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/base_model.py"), "--config-json", json.dumps(base),
                        "--benchmarks-json", json.dumps(benches), "--data-dir", str(data_dir),
                        "--out", str(out), "--log", str(log)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["source"] == "toy" and run["pretrain"]["steps"] == 2 and run["corpus"]["docs"] > 0
    assert "toy base:" in log.read_text() and "pretrain 2 steps" in log.read_text()
    corpus = toyworld.toy_corpus(benches, seed=base["seed"], n_docs=300, data_dir=data_dir, answer_line_frac=0.5,
                                 answer_line_names=2, fact_coverage=0.5)
    assert "\n#### " in "".join(corpus)  # the setting reaches the corpus
    assert run["corpus"]["sha256"] == hashlib.sha256("\x00".join(corpus).encode()).hexdigest()
    models.verify_model_dir(out)


def test_disable_dropout_turns_every_dropout_off():
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, attention_dropout=0.5)
    model = Qwen3ForCausalLM(cfg)
    model.lm_head = torch.nn.Sequential(torch.nn.Dropout(0.5), model.lm_head)
    model.train()
    x = torch.arange(12).reshape(1, 12)
    assert not torch.equal(model(x).logits, model(x).logits)  # dropout on: two passes differ
    models.disable_dropout(model)
    assert torch.equal(model(x).logits, model(x).logits)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
