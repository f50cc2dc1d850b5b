"""Local sources: a base model or benchmark files the user already has (``source: local``).

A pre-downloaded model or a cluster whose compute nodes have no internet runs the same DAG from
local copies. What reaches ``results/`` is what a hub download writes: the base model directory
with every file's sha256 in its ``run.json``, the benchmark's ``{split}.jsonl`` with its sha256 in
the manifest.

Snakemake decides reruns from rule params, so the data and base-model rules take the sha256 of the
local files as a param (:func:`fingerprint`, computed when the DAG is built): editing a file reruns
its rule, a ``touch`` or a copy that keeps the content reruns nothing. :func:`check_paths` runs when
the DAG is built and names the config key and the path of anything missing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import shutil
import time
from functools import lru_cache
from pathlib import Path

from .io import ConfigError, atomic_dir, env_info, prepare_output, sha256_file, utc_now, write_json
from .models import HUB_ALLOW, HUB_IGNORE, PICKLE_SUFFIXES, _check_no_remote_code, _check_safetensors, _hash_dir

log = logging.getLogger(__name__)

NOT_COPIED = ("run.json", "metrics.jsonl")  # the workflow's own records: a trained model's run.json is rewritten


def model_files(path) -> list[str]:
    """The files of a local model directory that are copied (and hashed): what a hub snapshot would bring."""
    root = Path(path)
    names = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if not f.is_file() or rel.startswith(".") or f.name in NOT_COPIED:
            continue
        if any(fnmatch.fnmatch(f.name, p) for p in HUB_ALLOW) and not any(fnmatch.fnmatch(f.name, p) for p in HUB_IGNORE):
            names.append(rel)
    return names


def split_files(root, split: str) -> list[Path]:
    """The file(s) of one split in a local benchmark directory: ``{split}.jsonl``, ``{split}.parquet`` or
    the shards ``{split}-*.parquet``; [] when there is none."""
    root = Path(root)
    jsonl = root / f"{split}.jsonl"
    parquet = sorted(p for p in {root / f"{split}.parquet", *root.glob(f"{split}-*.parquet")} if p.is_file())
    if jsonl.is_file() and parquet:
        names = ", ".join(p.name for p in [jsonl, *parquet])
        raise ConfigError(f"{root}: split {split!r} has both JSONL and parquet files ({names}); keep one")
    return [jsonl] if jsonl.is_file() else parquet


def check_paths(config: dict) -> None:
    """Every ``source: local`` path exists and holds what it must; a ConfigError names the key and the path."""
    base = config["base_model"]
    if base["source"] == "local":
        path = Path(base["path"])
        where = f"config key base_model.path: {path}"
        if not path.is_dir():
            raise ConfigError(f"{where}: no such directory (a save_pretrained directory: *.safetensors, config.json, tokenizer files)")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}: no config.json (expected a save_pretrained directory)")
        try:
            _check_safetensors(path)
            _check_no_remote_code(path)
        except ValueError as e:
            raise ConfigError(f"config key base_model.path: {e}") from None
        pickles = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ConfigError(f"{where}: holds pickle weights ({', '.join(pickles)}), which can run arbitrary code "
                              "when loaded; keep only the *.safetensors weights in the directory")
    for name, bench in config["benchmarks"].items():
        if bench["source"] != "local":
            continue
        path = Path(bench["path"])
        if not path.is_dir():
            raise ConfigError(f"config key benchmarks.{name}.path: {path}: no such directory")
        for split in bench["splits"]:
            try:
                found = split_files(path, split)
            except ConfigError as e:
                raise ConfigError(f"config key benchmarks.{name}.path: {e}") from None
            if not found:
                raise ConfigError(
                    f"config key benchmarks.{name}.splits: {path}: no file for split {split!r} "
                    f"(expected {split}.jsonl, {split}.parquet or {split}-*.parquet)"
                )


@lru_cache(maxsize=None)
def _digest(path: str, names: tuple[str, ...], stamps: tuple) -> str:
    files = {n: sha256_file(Path(path) / n) for n in names}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def fingerprint(path, names) -> str:
    """One sha256 over the named files' contents (for a rule param). Cached per DAG build by size and mtime."""
    root = Path(path)
    names = tuple(sorted(names))
    stamps = tuple((n, (root / n).stat().st_size, (root / n).stat().st_mtime_ns) for n in names)
    return _digest(str(root.resolve()), names, stamps)


def model_fingerprint(path) -> str:
    return fingerprint(path, model_files(path))


def benchmark_fingerprint(path, splits) -> str:
    root = Path(path)
    return fingerprint(root, [f.relative_to(root).as_posix() for s in splits for f in split_files(root, s)])


def copy_local_model(path, out_dir) -> dict:
    """Copy a local save_pretrained directory into ``out_dir`` (safetensors, json and tokenizer files only),
    check that transformers loads it without remote code, and write ``run.json`` as a hub download does
    (``source: local``, ``path``, ``files``: sha256 of every file)."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    src = Path(path)
    prepare_output(out_dir)
    t0 = time.time()
    check_paths({"base_model": {"source": "local", "path": str(src)}, "benchmarks": {}})
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for rel in model_files(src):
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst)
        config = AutoConfig.from_pretrained(str(tmp), trust_remote_code=False)
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(f"{src}: model_type {config.model_type!r} is not a causal LM that transformers knows")
        try:
            AutoTokenizer.from_pretrained(str(tmp), trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{src}: no tokenizer that transformers can load ({e})") from None
        run = {
            "source": "local",
            "repo": None,
            "revision": None,
            "resolved_commit": None,
            "path": str(src.resolve()),
            "files": _hash_dir(tmp),
            "wall_time_s": round(time.time() - t0, 2),
            "env": env_info(),
            "created": utc_now(),
        }
        write_json(tmp / "run.json", run)
    log.info("%s: copied %d files in %.1fs", src, len(run["files"]), time.time() - t0)
    return run


__all__ = ["benchmark_fingerprint", "check_paths", "copy_local_model", "fingerprint", "model_files",
           "model_fingerprint", "split_files"]
