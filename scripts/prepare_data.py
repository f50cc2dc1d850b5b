#!/usr/bin/env python
"""Prepare one benchmark: results/{experiment}/data/{benchmark}/{split}.jsonl + manifest.json.

The benchmark's config entry chooses the source: ``hub`` downloads the parquet files of the
configured dataset revision with huggingface_hub (HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME are
honoured) and converts them; ``toy`` generates seeded rows in the same columns. Every row is
validated before anything is written; files are written atomically.

Examples:
  scripts/prepare_data.py --benchmark gsm8k --config config/toy.yaml --out results/toy/data/gsm8k
  scripts/prepare_data.py --benchmark mmlu --config-json '{"source": "toy", "seed": 0}' --out /tmp/mmlu
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from statepost import benchmarks  # noqa: E402
from statepost.io import json_arg  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=benchmarks.NAMES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-json", type=json_arg, help="the benchmark's config entry as JSON, or @FILE")
    src.add_argument("--config", metavar="FILE",
                     help="YAML/JSON file: a whole config (benchmarks.<benchmark> is used) or the entry itself")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output directory (the workflow: results/{experiment}/data/<benchmark>)")
    p.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache directory (default: HF_HUB_CACHE)")
    p.add_argument("--expect-manifest", metavar="FILE",
                   help="an earlier manifest.json: refuse source files whose sha256 differs from its 'files'")
    p.add_argument("--log", metavar="FILE", help="also append the log to FILE")
    return p.parse_args(argv)


def load_bench_cfg(args) -> dict:
    if args.config_json is not None:
        cfg = args.config_json
    else:
        cfg = yaml.safe_load(Path(args.config).read_text())
        if isinstance(cfg, dict) and "benchmarks" in cfg:
            if args.benchmark not in (cfg["benchmarks"] or {}):
                sys.exit(f"error: {args.config}: benchmarks.{args.benchmark} is not configured")
            cfg = cfg["benchmarks"][args.benchmark]
    if not isinstance(cfg, dict):
        sys.exit(f"error: the config for {args.benchmark} must be a mapping, got {type(cfg).__name__}")
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    from statepost.io import setup_logging
    from statepost.progress import bars_only_on_a_terminal

    bars_only_on_a_terminal()  # a job's log gets log lines, not the download bars' carriage returns

    setup_logging(args.log)
    log = logging.getLogger("prepare_data")
    cfg = load_bench_cfg(args)
    out = Path(args.out)
    expected = None
    if args.expect_manifest:
        expected = json.loads(Path(args.expect_manifest).read_text()).get("files") or None

    from statepost.data import prepare
    from statepost.io import DataError

    t0 = time.time()
    log.info("preparing %s (source %s) into %s", args.benchmark, cfg.get("source"), out)
    try:
        manifest = prepare(args.benchmark, cfg, out, cache_dir=args.cache_dir, expected=expected)
    except DataError as e:
        log.error("%s", e)
        return 1
    for split, o in manifest["outputs"].items():
        log.info("%s/%s: %d rows (sha256 %s)", args.benchmark, split, o["rows"], o["sha256"][:12])
    if manifest.get("resolved_commit"):
        log.info("%s@%s resolved to %s", manifest["repo"], manifest["revision"], manifest["resolved_commit"])
    log.info("done in %.1fs", time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
