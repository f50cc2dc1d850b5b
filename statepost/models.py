"""Base models: the toy Qwen3 built and pretrained locally, Hub snapshots, and safe loading.

Every model directory in the workflow is a ``save_pretrained`` directory (``*.safetensors``,
``config.json``, ``generation_config.json``, tokenizer files) plus ``run.json``. Models are only
ever loaded through :func:`load_model` / :func:`load_tokenizer`, which refuse pickle weights and
custom code (``use_safetensors=True``, ``trust_remote_code=False``, no ``auto_map``) and check
the sha256 of every file listed under ``run.json["files"]`` (``{relative name: sha256}``), so a
file changed after it was written is caught before it is used.

Heavy imports (torch, transformers, tokenizers, huggingface_hub) happen inside the functions so
that the command-line wrappers answer ``--help`` quickly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import with_defaults
from .io import ConfigError, atomic_dir, env_info, prepare_output, sha256_file, utc_now, write_json

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# Qwen2/Qwen3's pre-tokenizer split: words, single digits, punctuation runs, newlines, spaces.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# What a Hub snapshot may bring: weights as safetensors, json configs, tokenizer files. Never pickles or code.
HUB_ALLOW = ["*.safetensors", "*.json", "tokenizer.model", "merges.txt", "vocab.json", "*.jinja", "*.tiktoken"]
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.py", "*.h5", "*.msgpack", "*.onnx"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def toy_settings(cfg: Mapping | None) -> dict:
    """The toy base_model config, validated, with the schema's defaults filled in (``source`` dropped)."""
    out = with_defaults({**(cfg or {}), "source": "toy"}, "toy_model")
    out.pop("source")
    return out


# --------------------------------------------------------------------------------------------
# Toy tokenizer and model
# --------------------------------------------------------------------------------------------
def build_toy_tokenizer(corpus: Sequence[str], vocab_size: int = 1024, model_max_length: int = 1024):
    """A byte-level BPE trained on ``corpus`` with Qwen's pre-tokenizer split (digits one by one).

    Wrapped as a transformers fast tokenizer whose eos and pad token are both ``<|endoftext|>``
    and which has no bos token, like Qwen3 base models. Any text round-trips through
    encode/decode (byte level; no clean-up of spaces).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=int(model_max_length),
    )


def build_toy_model(cfg: Mapping, tokenizer):
    """A tiny ``Qwen3ForCausalLM`` (tied embeddings, fp32), initialised from ``cfg["seed"]``.

    The embedding matrix is padded to a multiple of 64 rows, as the real Qwen3 vocabulary is
    padded beyond its tokenizer, so downstream code meets the same vocabulary/logit mismatch.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    s = toy_settings(cfg)
    hidden, heads = int(s["hidden_size"]), int(s["num_heads"])
    if hidden % heads:
        raise ValueError(f"base_model.hidden_size ({hidden}) must be divisible by base_model.num_heads ({heads})")
    vocab = int(math.ceil(len(tokenizer) / 64) * 64)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(s["intermediate_size"]),
        num_hidden_layers=int(s["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(s["num_kv_heads"]),
        head_dim=hidden // heads,
        max_position_embeddings=int(s["max_position_embeddings"]),
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(int(s["seed"]))
    model = Qwen3ForCausalLM(config)
    model.to(torch.float32)
    return model


def param_count(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def pretrain_toy(model, tokenizer, corpus: Sequence[str], cfg: Mapping, progress: bool = True) -> dict:
    """Brief causal-LM pretraining on the toy corpus; returns ``{"losses": [...], ...}``.

    The corpus is tokenised once and packed into one stream with ``<|endoftext|>`` after each
    document; every training sequence starts at a document boundary (so the model sees
    prompts at position 0, as lm-eval shows them) and runs ``max_length`` tokens on across the
    following documents. fp32, AdamW (betas 0.9/0.95, weight decay 0.01), linear warmup then cosine
    decay to 10% of ``lr``, gradient clipping at 1.0, all randomness from ``cfg["seed"]``.

    What the corpus teaches and what it leaves to post-training is decided in
    :func:`statepost.toyworld.toy_corpus`: the problems' language and arithmetic and the facts
    behind toy mmlu/truthfulqa, but not the ``#### N`` answer line that gsm8k strict-match needs.
    """
    import torch
    from tqdm.auto import tqdm

    s = toy_settings(cfg)
    p = s["pretrain"]
    steps, lr, bs, T = int(p["steps"]), float(p["lr"]), int(p["batch_size"]), int(p["max_length"])
    warmup = min(int(p.get("warmup_steps", 20)), max(steps // 5, 1))
    seed = int(s["seed"])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    starts: list[int] = []
    for doc in corpus:
        starts.append(len(ids))
        ids.extend(tokenizer.encode(doc, add_special_tokens=False))
        ids.append(eos)
    stream = torch.tensor(ids + [eos] * (T + 1), dtype=torch.long)
    starts_t = torch.tensor(starts, dtype=torch.long)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(steps - warmup, 1)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    losses: list[float] = []
    t0 = time.time()
    every = max(steps // 10, 1)
    bar = tqdm(range(steps), desc="pretrain toy", disable=not (progress and sys.stderr.isatty()), mininterval=2.0)
    for step in bar:
        pick = starts_t[torch.randint(len(starts_t), (bs,), generator=gen)]
        batch = torch.stack([stream[i: i + T] for i in pick.tolist()])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=batch, labels=batch, use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if progress and ((step + 1) % every == 0 or step == 0):
            log.info("pretrain step %d/%d loss %.4f lr %.2e (%.1fs)", step + 1, steps, losses[-1], lr_at(step),
                     time.time() - t0)
    model.eval()
    tail = losses[-10:] or [float("nan")]
    return {
        "steps": steps,
        "tokens_per_step": bs * T,
        "corpus_tokens": len(ids),
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(tail) / len(tail),
        "losses_every_10": losses[::10],
        "time_s": round(time.time() - t0, 2),
    }


def _hash_dir(path: Path, exclude=("run.json", "metrics.jsonl")) -> dict[str, str]:
    return {
        f.relative_to(path).as_posix(): sha256_file(f)
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name not in exclude
    }


def make_toy_base(cfg: Mapping, corpus: Sequence[str], out_dir) -> dict:
    """Build tokenizer + tiny Qwen3, pretrain, save everything into ``out_dir`` atomically; return run.json."""
    import torch
    from transformers import GenerationConfig

    s = toy_settings(cfg)
    prepare_output(out_dir)  # before the compute: writable, and a killed earlier save recovered or cleaned
    t_all = time.time()
    t0 = time.time()
    tokenizer = build_toy_tokenizer(corpus, s["vocab_size"], s["max_position_embeddings"])
    t_tok = time.time() - t0
    log.info("toy tokenizer: %d tokens in %.1fs", len(tokenizer), t_tok)
    model = build_toy_model(s, tokenizer)
    n_params = param_count(model)
    log.info("toy model: %d parameters", n_params)
    with torch.random.fork_rng():
        stats = pretrain_toy(model, tokenizer, corpus, s)
    log.info("pretrain: loss %.3f -> %.3f in %.1fs", stats["loss_first"], stats["loss_last"], stats["time_s"])
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = _hash_dir(tmp)
        run = {
            "source": "toy",
            "repo": None,
            "revision": None,
            "resolved_commit": None,
            "files": files,
            "config": s,
            "parameters": n_params,
            "vocab": {"tokenizer": len(tokenizer), "embedding_rows": model.config.vocab_size},
            "corpus": {"docs": len(corpus), "chars": sum(len(d) for d in corpus),
                       "sha256": hashlib.sha256("\x00".join(corpus).encode()).hexdigest()},
            "pretrain": stats,
            "timings": {"tokenizer_s": round(t_tok, 2), "pretrain_s": stats["time_s"],
                        "total_s": round(time.time() - t_all, 2)},
            "wall_time_s": round(time.time() - t_all, 2),
            "env": env_info(),
            "created": utc_now(),
        }
        write_json(tmp / "run.json", run)
    return run


# --------------------------------------------------------------------------------------------
# Hub models
# --------------------------------------------------------------------------------------------
def _check_no_remote_code(path: Path) -> None:
    for name in ("config.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e.msg})") from None
            if isinstance(cfg, dict) and "auto_map" in cfg:
                raise ValueError(
                    f"{f}: has 'auto_map', i.e. the model needs custom code from the repository; "
                    "trust_remote_code is never enabled, so this model is refused"
                )


def _check_safetensors(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
        extra = f" (found {', '.join(pickles)})" if pickles else ""
        raise ValueError(
            f"{path}: no *.safetensors weights{extra}; pickle weights (pytorch_model.bin, *.pt, *.pth, *.ckpt) "
            "are refused because loading them can run arbitrary code"
        )


def download_hub_model(repo: str, revision: str | None, out_dir, cache_dir=None, endpoint: str | None = None) -> dict:
    """Snapshot a model repo (safetensors, json, tokenizer files only), check it, copy it to ``out_dir``.

    Writes ``run.json`` with ``{source: hub, repo, revision, resolved_commit, files: {name: sha256}}``.
    Refuses a snapshot without ``*.safetensors`` or whose config has ``auto_map``. Warns when
    ``revision`` is not a 40-hex commit. ``endpoint`` overrides ``HF_ENDPOINT``.
    """
    from . import hub

    revision = revision or "main"
    prepare_output(out_dir)  # before the download: writable, and a killed earlier save recovered or cleaned
    t0 = time.time()
    snap, resolved = hub.snapshot(
        repo,
        repo_type="model",
        revision=revision,
        config_key="base_model.revision",
        allow_patterns=HUB_ALLOW,
        ignore_patterns=HUB_IGNORE,
        cache_dir=cache_dir,
        endpoint=endpoint,
    )
    _check_safetensors(snap)
    if not (snap / "config.json").is_file():
        raise ValueError(f"{repo}@{resolved}: snapshot has no config.json")
    _check_no_remote_code(snap)
    log.info("%s@%s: snapshot in %.1fs", repo, resolved[:12], time.time() - t0)

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for f in sorted(snap.rglob("*")):
            if f.is_file():
                dst = tmp / f.relative_to(snap)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst)  # follows the cache's symlinks to the blobs
        files = _hash_dir(tmp)
        run = {
            "source": "hub",
            "repo": repo,
            "revision": revision,
            "resolved_commit": resolved,
            "files": files,
            "wall_time_s": round(time.time() - t0, 2),
            "env": env_info(),
            "created": utc_now(),
        }
        write_json(tmp / "run.json", run)
    return run


# --------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------
def verify_model_dir(path, check_hashes: bool = True, weights: bool = True) -> dict:
    """Check a model directory before anything is loaded from it; return its run.json (or {}).

    * it holds ``*.safetensors`` weights (pickle weights are refused);
    * ``config.json`` / ``tokenizer_config.json`` have no ``auto_map`` (custom code is refused);
    * every file listed in ``run.json["files"]`` exists and has the recorded sha256
      (``weights=False`` skips the ``*.safetensors`` hashes, for tokenizer-only loads).
    Raises ValueError naming the directory or file.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: model directory not found")
    _check_safetensors(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json")
    _check_no_remote_code(path)
    run: dict = {}
    run_file = path / "run.json"
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_file}: not valid JSON ({e.msg})") from None
    files = run.get("files") if isinstance(run, dict) else None
    if check_hashes and not isinstance(files, dict):
        log.warning("%s: no sha256 recorded (run.json 'files'), so its files are not verified", path)
    if check_hashes and isinstance(files, dict):
        for name, want in sorted(files.items()):
            if not weights and name.endswith(".safetensors"):
                continue
            f = path / name
            if not f.is_file():
                raise ValueError(f"{f}: listed in {run_file} but missing")
            got = sha256_file(f)
            if got != want:
                raise ValueError(
                    f"{f}: sha256 {got} does not match {want} recorded in {run_file}; "
                    "the file changed after the model was written, refusing to load it"
                )
    return run


def resolve_dtype(dtype=None, device=None):
    """None -> float32; 'auto' -> bfloat16 on CUDA, else float32; names or torch dtypes pass through."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        on_cuda = torch.cuda.is_available() and (device is None or "cuda" in str(device) or device == "auto")
        return torch.bfloat16 if on_cuda else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype: expected one of auto, {', '.join(table)}, got {dtype!r}")
    return table[name]


def load_model(path, dtype=None, device=None):
    """``AutoModelForCausalLM`` from a verified directory: safetensors only, no remote code, hashes checked.

    ``dtype``: None (float32), 'auto' (bfloat16 on CUDA else float32), a name or a torch dtype.
    ``device``: None (leave on CPU), 'auto' (cuda if available) or a device string.
    """
    import torch
    from transformers import AutoModelForCausalLM

    verify_model_dir(path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=False, dtype=resolve_dtype(dtype, device)
    )
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(path):
    """``AutoTokenizer`` from a verified directory (no remote code; tokenizer file hashes checked)."""
    from transformers import AutoTokenizer

    verify_model_dir(path, weights=False)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_frozen(path, dtype, device):
    """A model that is scored but not trained (teacher, reference): ``dtype`` throughout (buffers too),
    on ``device``, eval mode, no gradients."""
    model = load_model(path, dtype=dtype).to(dtype)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def disable_dropout(model) -> None:
    """Dropout off for good (``nn.Dropout`` modules and attention dropout rates), as TRL's trainers do."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def set_gradient_checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing, non-reentrant (works with DDP); transformers 5 renamed it."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def model_hashes(path) -> dict[str, str]:
    """sha256 of a model directory's weights (``*.safetensors``) and config/tokenizer files (a run's input hashes)."""
    path = Path(path)
    names = sorted(p.name for p in path.glob("*.safetensors")) + [n for n in MODEL_FILES if (path / n).is_file()]
    if not any(n.endswith(".safetensors") for n in names):
        raise ConfigError(f"{path}: no *.safetensors weights (only safetensors checkpoints are loaded)")
    return {n: sha256_file(path / n) for n in names}


__all__ = [
    "EOS", "build_toy_model", "build_toy_tokenizer", "disable_dropout", "download_hub_model", "load_frozen", "load_model",
    "load_tokenizer", "make_toy_base", "model_hashes", "param_count", "pretrain_toy", "resolve_dtype",
    "set_gradient_checkpointing", "toy_settings", "verify_model_dir",
]
