"""Small file helpers shared by every rule: atomic writes, JSON lines, hashes, provenance."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import yaml

_log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file and line (or the field)."""


class ConfigError(ValueError):
    """Bad configuration; the message names the key path."""


_STALE_TMP = r"[A-Za-z0-9_]{8}\.tmp"  # the random part of a temporary name (ours and tempfile's)


def _temp_beside(path: Path, is_dir: bool) -> Path:
    """A new empty file or folder ``.{name}.XXXXXXXX.tmp`` beside ``path``, created with mode 0o666 / 0o777
    so that the umask (or a default ACL) applies; ``tempfile.mkstemp``/``mkdtemp`` would make it 0600/0700."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if is_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temporary name beside it")


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where the filesystem cannot fsync folders)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and folder under ``path`` (deepest first), then ``path`` itself."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                fsync_file(os.path.join(root, name))
        fsync_dir(root)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets mode ``0o666 & ~umask``; its data is fsynced before the rename and the folder after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, is_dir=False)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    The folder gets mode ``0o777 & ~umask``. When the block succeeds, everything in it is fsynced and it
    is renamed to ``.{name}.new`` (complete), the old ``path`` to ``.{name}.old``, ``.{name}.new`` to
    ``path``; then ``.old`` is removed. A kill at any point leaves state that :func:`recover_dir` (run on
    entry here, and by :func:`prepare_output` when a job starts) turns back into ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    new = _sibling(path, "new")
    tmp = _temp_beside(path, is_dir=True)
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, new)
        _swap_in(new, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_dir(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the complete folder ``src`` to ``path``, replacing what is there, as :func:`atomic_dir` would: a
    rename on one filesystem; across filesystems a copy to a temporary folder beside ``path`` first."""
    src, path = Path(src), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    new = _sibling(path, "new")
    try:
        os.replace(src, new)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = _temp_beside(path, is_dir=True)
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            fsync_tree(tmp)
            os.replace(tmp, new)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(src)
    _swap_in(new, path)


def _swap_in(new: Path, path: Path) -> None:
    """``.{name}.new`` (complete) becomes ``path``; the old ``path`` goes by way of ``.{name}.old``."""
    old = _sibling(path, "old")
    fsync_dir(path.parent)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def recover_dir(path: str | os.PathLike) -> None:
    """Undo what a kill inside :func:`atomic_file` / :func:`atomic_dir` left beside ``path``.

    If ``path`` is missing (killed between moving the old one aside and moving the new one in), the
    complete ``.{name}.new`` or else the previous ``.{name}.old`` becomes ``path``. Then the leftover
    ``.new``/``.old`` and temporary ``.{name}.XXXXXXXX.tmp`` siblings are removed. Only one job writes
    a given output, so whatever is left beside it when that job starts is stale.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    new, old = _sibling(path, "new"), _sibling(path, "old")
    if not path.exists():
        for src in (new, old):
            if src.is_dir():
                os.replace(src, path)
                fsync_dir(path.parent)
                _log.warning("%s: recovered from %s (a job was killed while replacing it)", path, src.name)
                break
    stale = re.compile(rf"^\.{re.escape(path.name)}\.(?:new|old|{_STALE_TMP})$")
    for p in path.parent.iterdir():
        if stale.match(p.name):
            _log.info("%s: removing %s left by an earlier, killed job", path.parent, p.name)
            _remove(p)


def prepare_output(*paths: str | os.PathLike) -> None:
    """Before a job spends compute: each output's folder exists and is writable (else OSError naming it),
    and what a killed earlier job left beside each output is recovered or removed (:func:`recover_dir`)."""
    for path in map(Path, paths):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _temp_beside(path, is_dir=False).unlink()
        except OSError as e:
            raise OSError(
                e.errno, f"{path.parent}: cannot write {path.name} there ({e.strerror}); nothing was computed"
            ) from None
        recover_dir(path)


def scratch_dir(path: str | os.PathLike, tag: str) -> Path:
    """A fresh working folder ``.{name}.{tag}`` beside the output ``path`` (one left by a killed job is
    removed first); the caller removes it when done."""
    path = Path(path)
    work = _sibling(path, tag)
    if work.exists():
        _log.info("%s: removing %s left by an earlier, killed job", path.parent, work.name)
        _remove(work)
    work.mkdir(parents=True)
    return work


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


def samples_path(score_json: str | os.PathLike) -> Path:
    """lm-eval's per-sample log beside a score file: ``{benchmark}.json`` -> ``{benchmark}.samples.jsonl``. Its one
    definition: the evaluation writes it, the workflow declares it and the report reads it by this name."""
    score_json = Path(score_json)
    return score_json.with_name(score_json.name.removesuffix(".json") + ".samples.jsonl")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """Yield ``(line number, parsed value)`` per non-empty line; bad JSON or bytes that are not UTF-8 raise
    DataError naming path:line."""
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
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
