"""Small file helpers shared by every rule: atomic writes, JSON lines, hashes, provenance."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import yaml


class DataError(ValueError):
    """Bad input data; the message names the file and line (or the field)."""


class ConfigError(ValueError):
    """Bad configuration; the message names the key path."""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_file(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """Yield ``(line number, parsed value)`` per non-empty line; bad JSON raises DataError naming path:line."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: json: not valid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield one dict per non-empty line; a bad line raises DataError naming path:line."""
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: row: expected a JSON object, got {type(row).__name__}")
        yield row


def json_arg(text: str):
    """An ``argparse`` type for the scripts' config arguments: JSON text, or ``@FILE`` (JSON or YAML).

    The rules pass JSON on the command line; a person rerunning a script by hand can point to a
    file instead. Errors name the file or the position in the text.
    """

    source = "JSON text"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"{source}: cannot read ({e.strerror})") from None
        try:
            return yaml.safe_load(text)  # YAML reads JSON too
        except yaml.YAMLError as e:
            raise argparse.ArgumentTypeError(f"{source}: not valid YAML/JSON ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"not valid {source} ({e.msg} at line {e.lineno} column {e.colno}): {text[:200]!r}"
        ) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_PACKAGES = ("torch", "transformers", "lm_eval", "accelerate", "datasets", "huggingface_hub", "snakemake")


def env_info() -> dict:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "git_commit": git_commit(),
        "hostname": platform.node(),
        "created": utc_now(),
    }


def setup_logging(log_file: str | os.PathLike | None = None, level: int | None = None) -> None:
    """One log format for every script: stderr (Snakemake's per-job log) and optionally a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if level is None else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
