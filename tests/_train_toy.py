"""Tiny models, tokenizers and GSM8K-shaped data for the training-loop tests (no network)."""

from __future__ import annotations

import json
import random
from pathlib import Path

EOS = "<|endoftext|>"


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        k = rng.randint(0, 3)
        work = " ".join(f"step {i}: {a}+{i}={a + i}." for i in range(k))
        rows.append(
            {
                "question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                "answer": f"{work} {a}+{b}=<<{a}+{b}={a + b}>>{a + b}\n#### {a + b}".strip(),
            }
        )
    return rows


def build_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer (Qwen-like: EOS is also the pad token, no BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def word_tokenizer(words: list[str]):
    """A whitespace word-level tokenizer over ``words`` (ids 0 and 1: ``<unk>``, ``<eos>``); eos is also the pad
    token, as in Qwen3 base: padding must be found from lengths, never from the pad id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + list(words))}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def build_model(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0, eos_id: int = 0,
                heads: int = 4, kv_heads: int = 2, max_positions: int = 512):
    """A tiny random Qwen3 (fp32, tied embeddings, eos = pad = ``eos_id``), seeded: the tests' model."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=None,
    )
    return Qwen3ForCausalLM(cfg).float()


def make_world(root: Path, n_rows: int = 48, hidden: int = 32, layers: int = 2) -> dict:
    """results/{experiment}/data/gsm8k/train.jsonl + a saved toy base model under ``root``."""
    root = Path(root)
    rows = toy_rows(n_rows)
    data_dir = root / "data"
    (data_dir / "gsm8k").mkdir(parents=True, exist_ok=True)
    with open(data_dir / "gsm8k" / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    corpus = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    tok = build_tokenizer(corpus)
    model = build_model(len(tok), hidden=hidden, layers=layers, eos_id=tok.eos_token_id)
    init = root / "base"
    model.save_pretrained(init)
    tok.save_pretrained(init)
    return {"data_dir": data_dir, "init": init, "rows": rows, "tokenizer": tok}


def run_cfg(**optim) -> dict:
    base_optim = {
        "lr": 3e-3,
        "epochs": 1,
        "max_steps": 6,
        "batch_size": 4,
        "grad_accum": 1,
        "warmup_ratio": 0.2,
        "schedule": "cosine",
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "max_length": 128,
        "gradient_checkpointing": False,
        "precision": "fp32",
    }
    base_optim.update(optim)
    return {
        "name": "sft_test",
        "seed": 0,
        "init": "base",
        "states": {"source": "dataset", "data": "gsm8k", "split": "train"},
        "signal": {"type": "nll"},
        "optim": base_optim,
        "checkpoint": {"every": 2, "keep": 2},
        "log_every": 1,
    }


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))
