"""Benchmark data: validators, the Hugging Face hub download and conversion, and the data rule's manifest.

Every benchmark ends up as ``results/{experiment}/data/{benchmark}/{split}.jsonl`` in the columns of the
standard Hugging Face dataset (so lm-eval's builtin tasks read the files unchanged) plus a
``manifest.json`` recording where the rows came from (repo, configured revision, the commit
actually resolved, sha256 of every source file and of every output file).

Three sources, chosen by ``bench_cfg["source"]``: ``hub`` fetches the parquet files of one dataset
config at a revision (:mod:`statepost.hub`) and converts them to plain JSON types; ``toy`` writes
the seeded rows of :mod:`statepost.toyworld`; ``local`` reads the user's own JSONL or parquet files
(:mod:`statepost.local`). All are validated before anything is written.

Format rules beyond column types, enforced by the validators because lm-eval relies on them:
gsm8k answers end with a ``#### <number>`` line (strict-match reads it); mmlu rows have exactly
4 choices and an int answer in 0..3; truthfulqa ``mc1_targets`` has exactly one correct choice and
it comes first (lm-eval's mc1 scores index 0 as gold), ``mc2_targets`` lists its true choices first
and then at least one false one (lm-eval's mc2 splits at the first 0 label).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from . import benchmarks, hub
from .io import DataError, iter_jsonl, sha256_file, utc_now, write_json, write_jsonl
from .toyworld import generate_toy, toy_rows

log = logging.getLogger(__name__)

BENCHMARKS = benchmarks.NAMES
MMLU_SUBJECT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
GSM8K_FINAL_RE = re.compile(r"^#### (-?[0-9][0-9,]*(?:\.[0-9]+)?)$")


# --------------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------------
def _type_name(x) -> str:
    return "null" if x is None else type(x).__name__


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_str(row: dict, field: str, where: str, non_empty: bool = True) -> None:
    if field not in row:
        raise DataError(f"{where}: {field}: missing column")
    v = row[field]
    if not isinstance(v, str):
        raise DataError(f"{where}: {field}: expected a string, got {_type_name(v)}")
    if non_empty and not v.strip():
        raise DataError(f"{where}: {field}: empty string")


def _check_targets(row: dict, field: str, where: str) -> tuple[list, list]:
    if field not in row:
        raise DataError(f"{where}: {field}: missing column")
    t = row[field]
    if not isinstance(t, dict):
        raise DataError(f"{where}: {field}: expected an object with choices and labels, got {_type_name(t)}")
    for key in ("choices", "labels"):
        if key not in t:
            raise DataError(f"{where}: {field}.{key}: missing")
        if not isinstance(t[key], list):
            raise DataError(f"{where}: {field}.{key}: expected a list, got {_type_name(t[key])}")
    choices, labels = t["choices"], t["labels"]
    if not choices:
        raise DataError(f"{where}: {field}.choices: empty list")
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c.strip():
            raise DataError(f"{where}: {field}.choices[{i}]: expected a non-empty string, got {c!r}")
    for i, lab in enumerate(labels):
        if not _is_int(lab) or lab not in (0, 1):
            raise DataError(f"{where}: {field}.labels[{i}]: expected 0 or 1, got {lab!r}")
    if len(labels) != len(choices):
        raise DataError(
            f"{where}: {field}.labels: {len(labels)} labels for {len(choices)} choices (must be the same length)"
        )
    if 1 not in labels:
        raise DataError(f"{where}: {field}.labels: no choice is labelled 1 (at least one must be true)")
    return choices, labels


def validate_row(benchmark: str, row, where: str) -> None:
    """Check one row; ``where`` is the ``path:line`` prefix used in error messages."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: row: expected a JSON object, got {_type_name(row)}")
    if benchmark == "gsm8k":
        _check_str(row, "question", where)
        _check_str(row, "answer", where)
        last = row["answer"].rstrip("\n").split("\n")[-1].strip()
        if not GSM8K_FINAL_RE.match(last):
            raise DataError(
                f"{where}: answer: last line must be '#### <number>' (lm-eval strict-match reads it), got {last!r}"
            )
    elif benchmark == "mmlu":
        _check_str(row, "question", where)
        _check_str(row, "subject", where)
        if not MMLU_SUBJECT_RE.match(row["subject"]):
            raise DataError(f"{where}: subject: expected an MMLU subject name (lower_case), got {row['subject']!r}")
        if "choices" not in row:
            raise DataError(f"{where}: choices: missing column")
        ch = row["choices"]
        if not isinstance(ch, list):
            raise DataError(f"{where}: choices: expected a list of 4 strings, got {_type_name(ch)}")
        if len(ch) != 4:
            raise DataError(f"{where}: choices: expected exactly 4 choices, got {len(ch)}")
        for i, c in enumerate(ch):
            if not isinstance(c, str):
                raise DataError(f"{where}: choices[{i}]: expected a string, got {_type_name(c)}")
        if "answer" not in row:
            raise DataError(f"{where}: answer: missing column")
        a = row["answer"]
        if not _is_int(a):
            raise DataError(f"{where}: answer: expected an int 0..3, got {_type_name(a)} {a!r}")
        if not 0 <= a <= 3:
            raise DataError(f"{where}: answer: expected an int 0..3, got {a}")
    elif benchmark == "truthfulqa_mc2":
        _check_str(row, "question", where)
        _, l1 = _check_targets(row, "mc1_targets", where)
        if sum(l1) != 1:
            raise DataError(f"{where}: mc1_targets.labels: exactly one choice must be labelled 1, got {sum(l1)}")
        if l1[0] != 1:
            raise DataError(f"{where}: mc1_targets.labels: the correct choice must come first (lm-eval scores index 0)")
        _, l2 = _check_targets(row, "mc2_targets", where)
        if 0 not in l2:
            raise DataError(f"{where}: mc2_targets.labels: needs at least one false (0) choice")
        k = l2.index(0)
        if any(l2[k:]):
            raise DataError(
                f"{where}: mc2_targets.labels: true (1) choices must all come before false (0) ones "
                "(lm-eval's mc2 splits at the first 0)"
            )
    else:
        raise DataError(f"{where}: benchmark: unknown benchmark {benchmark!r} (expected one of {BENCHMARKS})")


def validate_rows(benchmark: str, split: str, rows: Iterable, path, first_line: int = 1) -> int:
    """Validate a split's rows (row ``i`` is reported as line ``first_line + i``); return the count."""
    n = 0
    for i, row in enumerate(rows):
        validate_row(benchmark, row, f"{path}:{first_line + i}")
        n += 1
    if n == 0:
        raise DataError(f"{path}:{first_line}: {split}: split is empty (no rows)")
    return n


def read_valid(benchmark: str, split: str, path) -> list[dict]:
    """The rows of a ``{split}.jsonl`` file, each validated; errors name ``path:line`` and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}:0: {split}: file not found")
    rows = []
    for lineno, row in iter_jsonl(path):
        validate_row(benchmark, row, f"{path}:{lineno}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}:1: {split}: split is empty (no rows)")
    return rows


def validate_file(benchmark: str, split: str, path) -> int:
    """Validate a ``{split}.jsonl`` file line by line; return the number of rows."""
    return len(read_valid(benchmark, split, path))




# --------------------------------------------------------------------------------------------
# Hub datasets
# --------------------------------------------------------------------------------------------
def _plain(x):
    """numpy / pyarrow values -> plain JSON types (lists, dicts, str, int, float)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return x.item()
    return x


def convert_row(benchmark: str, row: Mapping) -> dict:
    """A row of the Hub dataset -> the standard columns with plain JSON types."""
    r = {k: _plain(v) for k, v in row.items()}
    if benchmark == "gsm8k":
        keep = ("question", "answer")
    elif benchmark == "mmlu":
        keep = ("question", "subject", "choices", "answer")
    elif benchmark == "truthfulqa_mc2":
        keep = ("question", "mc1_targets", "mc2_targets")
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    return {k: r[k] for k in keep if k in r}


def _split_files(root: Path, config_name: str, split: str) -> list[Path]:
    pats = [f"{config_name}/{split}-*.parquet", f"{config_name}/{split}/*.parquet"]
    files = sorted({p for pat in pats for p in root.glob(pat)})
    return files


def _allow_patterns(config_name: str, splits) -> list[str]:
    return [p for s in splits for p in (f"{config_name}/{s}-*.parquet", f"{config_name}/{s}/*.parquet")]


def _hub_cfg(benchmark: str, cfg: Mapping) -> tuple[str, str, str, list[str]]:
    for k in ("repo", "config_name"):
        if not cfg.get(k):
            raise DataError(f"benchmarks.{benchmark}.{k}: required for source 'hub'")
    return cfg["repo"], cfg["config_name"], cfg.get("revision") or "main", list(
        cfg.get("splits") or benchmarks.get(benchmark).splits)


def fetch_hub_dataset(
    benchmark: str,
    cfg: Mapping,
    out_dir,
    cache_dir=None,
    expected: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> dict:
    """Download one benchmark's parquet files from the Hub, convert, validate, write; return the manifest.

    cfg: ``repo``, ``config_name``, ``revision`` (branch, tag or 40-hex commit), ``splits``.
    ``expected``: ``{relpath: sha256}`` of the source files (e.g. ``files`` of an earlier manifest);
    any mismatch or missing file is refused. ``endpoint`` overrides ``HF_ENDPOINT`` (tests use a local one).
    """
    repo, config_name, revision, splits = _hub_cfg(benchmark, cfg)

    t0 = time.time()
    snap, resolved = hub.snapshot(
        repo,
        repo_type="dataset",
        revision=revision,
        config_key=f"benchmarks.{benchmark}.revision",
        allow_patterns=_allow_patterns(config_name, splits),
        cache_dir=cache_dir,
        endpoint=endpoint,
    )
    log.info("%s: snapshot %s@%s in %.1fs", benchmark, repo, resolved[:12], time.time() - t0)

    files: dict[str, str] = {}
    per_split: dict[str, list[Path]] = {}
    for split in splits:
        found = _split_files(snap, config_name, split)
        if not found:
            raise DataError(
                f"{snap}:0: {split}: no parquet files for config {config_name!r} split {split!r} in {repo}@{resolved} "
                f"(looked for {config_name}/{split}-*.parquet and {config_name}/{split}/*.parquet)"
            )
        per_split[split] = found
        for p in found:
            files[p.relative_to(snap).as_posix()] = sha256_file(p)
    if expected:
        for rel, want in expected.items():
            got = files.get(rel)
            if got is None:
                raise DataError(f"{repo}@{resolved}: {rel}: expected by the manifest but not in the snapshot")
            if got != want:
                raise DataError(
                    f"{repo}@{resolved}: {rel}: sha256 {got} does not match the recorded {want}; "
                    "refusing data that changed since the manifest was written"
                )

    out_dir = Path(out_dir)
    outputs = {}
    converted = {}
    for split, paths in per_split.items():
        rows = []
        for p in paths:
            df = pd.read_parquet(p)
            part = [convert_row(benchmark, r) for r in df.to_dict(orient="records")]
            for i, row in enumerate(part, 1):  # parquet rows are reported as path:row
                validate_row(benchmark, row, f"{p}:{i}")
            rows += part
        validate_rows(benchmark, split, rows, per_split[split][0])
        converted[split] = rows
    for split, rows in converted.items():
        target = out_dir / f"{split}.jsonl"
        write_jsonl(target, rows)
        outputs[split] = {"rows": len(rows), "sha256": sha256_file(target)}
    manifest = {
        "benchmark": benchmark,
        "source": "hub",
        "repo": repo,
        "config_name": config_name,
        "revision": revision,
        "resolved_commit": resolved,
        "files": files,
        "outputs": outputs,
        "seed": None,
        "created": utc_now(),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def write_toy(benchmark: str, cfg: Mapping, out_dir) -> dict:
    """Generate, validate and write toy rows; return the manifest."""
    data = generate_toy(benchmark, cfg)
    out_dir = Path(out_dir)
    outputs = {}
    for split, rows in data.items():
        validate_rows(benchmark, split, rows, f"<toy {benchmark}/{split}>")
        target = out_dir / f"{split}.jsonl"
        write_jsonl(target, rows)
        outputs[split] = {"rows": len(rows), "sha256": sha256_file(target)}
    manifest = {
        "benchmark": benchmark,
        "source": "toy",
        "repo": None,
        "config_name": None,
        "revision": None,
        "resolved_commit": None,
        "files": {},
        "outputs": outputs,
        "seed": int(cfg.get("seed", 0)),
        "toy": {"rows": toy_rows(benchmark, cfg), "subjects": sorted(
            {r["subject"] for rows in data.values() for r in rows}) if benchmark == "mmlu" else None},
        "created": utc_now(),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def read_local_split(benchmark: str, split: str, files: list[Path]) -> list[dict]:
    """The rows of one split of a local benchmark (JSONL or parquet), in the standard columns, each validated
    (errors name ``file:line`` or ``file:row`` and the field)."""
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".jsonl":
            part = [(i, convert_row(benchmark, r) if isinstance(r, dict) else r) for i, r in iter_jsonl(f)]
        else:
            part = list(enumerate((convert_row(benchmark, r) for r in pd.read_parquet(f).to_dict(orient="records")), 1))
        for i, row in part:
            validate_row(benchmark, row, f"{f}:{i}")
        rows += [row for _, row in part]
    validate_rows(benchmark, split, rows, files[0] if files else f"<{split}>")
    return rows


def write_local(benchmark: str, cfg: Mapping, out_dir) -> dict:
    """Read, validate and write a local benchmark's splits (``source: local``); return the manifest, whose
    ``files`` holds the sha256 of every source file (relative to ``path``)."""
    from .local import split_files

    root = Path(cfg["path"])
    out_dir, outputs, files, converted = Path(out_dir), {}, {}, {}
    for split in cfg["splits"]:
        found = split_files(root, split)
        if not found:
            raise DataError(f"{root}:0: {split}: no {split}.jsonl, {split}.parquet or {split}-*.parquet "
                            f"(benchmarks.{benchmark}.path)")
        converted[split] = read_local_split(benchmark, split, found)
        files.update({f.relative_to(root).as_posix(): sha256_file(f) for f in found})
    for split, rows in converted.items():
        target = out_dir / f"{split}.jsonl"
        write_jsonl(target, rows)
        outputs[split] = {"rows": len(rows), "sha256": sha256_file(target)}
    manifest = {
        "benchmark": benchmark, "source": "local", "repo": None, "config_name": None, "revision": None,
        "resolved_commit": None, "path": str(root.resolve()), "files": files, "outputs": outputs, "seed": None,
        "created": utc_now(),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def prepare(benchmark: str, bench_cfg: Mapping, out_dir, cache_dir=None, expected=None, endpoint=None) -> dict:
    """Write ``out_dir/{split}.jsonl`` + ``manifest.json`` for one benchmark from its config entry."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"benchmarks.{benchmark}: unknown benchmark (expected one of {BENCHMARKS})")
    source = bench_cfg.get("source")
    if source == "toy":
        return write_toy(benchmark, bench_cfg, out_dir)
    if source == "hub":
        return fetch_hub_dataset(benchmark, bench_cfg, out_dir, cache_dir=cache_dir, expected=expected,
                                 endpoint=endpoint)
    if source == "local":
        return write_local(benchmark, bench_cfg, out_dir)
    raise DataError(f"benchmarks.{benchmark}.source: expected 'hub', 'toy' or 'local', got {source!r}")


def verify_file(path) -> None:
    """Check a prepared ``{split}.jsonl`` against the sha256 the data rule recorded for it in the
    ``manifest.json`` beside it; a DataError names the file. Without a manifest (data written by hand) only a
    warning: its rows are still validated by :func:`load_split`."""
    path = Path(path)
    manifest_path = path.parent / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}:0: {path.stem}: file not found")
    if not manifest_path.is_file():
        log.warning("%s: no manifest.json beside it, so its sha256 is not checked (its rows are validated)", path)
        return
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{manifest_path}: not a valid manifest ({e})") from None
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    want = (outputs.get(path.stem) or {}).get("sha256") if isinstance(outputs, dict) else None
    if want is None:
        raise DataError(f"{path}: {manifest_path} records no sha256 for split '{path.stem}'")
    got = sha256_file(path)
    if got != want:
        raise DataError(
            f"{path}: sha256 {got} does not match {want} recorded in {manifest_path}; the file changed after the "
            f"data rule wrote it (rerun it: snakemake --forcerun data_{manifest.get('benchmark', path.parent.name)})"
        )


def load_split(data_dir, benchmark: str, split: str) -> list[dict]:
    """The rows of ``{data_dir}/{split}.jsonl`` (data_dir is results/{experiment}/data/{benchmark}) for a consumer (training,
    evaluation): the file checked against its manifest's sha256 (:func:`verify_file`), then every row validated.
    Errors name the file (and ``path:line`` for a row, bad JSON or bytes that are not UTF-8)."""
    path = Path(data_dir) / f"{split}.jsonl"
    verify_file(path)
    return read_valid(benchmark, split, path)


__all__ = [
    "BENCHMARKS", "convert_row", "fetch_hub_dataset", "load_split", "prepare", "validate_file", "validate_row",
    "validate_rows", "verify_file", "write_local", "write_toy",
]
