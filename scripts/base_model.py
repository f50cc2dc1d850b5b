#!/usr/bin/env python
"""Make the base model directory (results/{experiment}/models/base): a Hub snapshot or the toy Qwen3.

``base_model.source: hub`` snapshots ``repo`` at ``revision`` (safetensors, json and tokenizer
files only; pickles and code are never fetched), refuses repos that need custom code, and
records the resolved commit and every file's sha256 in run.json.
``base_model.source: local`` copies a save_pretrained directory you already have (safetensors,
json and tokenizer files only; pickle weights and custom code are refused) and records every
file's sha256 in run.json, as for a hub download.
``base_model.source: toy`` trains a byte-level BPE tokenizer and pretrains a tiny Qwen3 on a
corpus drawn from the toy benchmarks' world (never their evaluation rows), so it also needs
the benchmarks section of the config.

Examples:
  scripts/base_model.py --config config/toy.yaml --out results/toy/models/base
  scripts/base_model.py --config-json '{"source": "hub", "repo": "Qwen/Qwen3-0.6B-Base", "revision": "main"}'
  scripts/base_model.py --config-json '{"source": "local", "path": "/shared/models/Qwen3-0.6B-Base"}'
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from statepost.io import json_arg  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-json", type=json_arg, help="the base_model section as JSON, or @FILE")
    src.add_argument("--config", metavar="FILE", help="a whole config file (YAML/JSON): base_model and benchmarks")
    p.add_argument("--benchmarks-json", type=json_arg, help="the benchmarks section as JSON (toy: the corpus avoids their rows)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="toy: results/{experiment}/data; the corpus leaves out every evaluation row found there")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (the workflow: results/{experiment}/models/base)")
    p.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache directory (default: HF_HUB_CACHE)")
    p.add_argument("--log", metavar="FILE", help="also append the log to FILE")
    return p.parse_args(argv)


def load_cfgs(args) -> tuple[dict, dict]:
    if args.config_json is not None:
        base = args.config_json
        benches = args.benchmarks_json or {}
    else:
        full = yaml.safe_load(Path(args.config).read_text())
        base = full.get("base_model") or {}
        benches = args.benchmarks_json or full.get("benchmarks") or {}
    if not isinstance(base, dict) or base.get("source") not in ("hub", "toy", "local"):
        got = base.get("source") if isinstance(base, dict) else base
        sys.exit(f"error: base_model.source must be 'hub', 'toy' or 'local', got {got!r}")
    return base, benches


def main(argv=None) -> int:
    args = parse_args(argv)
    from statepost.io import setup_logging
    from statepost.progress import bars_only_on_a_terminal

    bars_only_on_a_terminal()  # a job's log gets log lines, not tqdm's carriage returns

    setup_logging(args.log)
    log = logging.getLogger("base_model")
    base, benches = load_cfgs(args)
    t0 = time.time()
    if base["source"] == "hub":
        from statepost.models import download_hub_model

        if not base.get("repo"):
            sys.exit("error: base_model.repo is required for source 'hub'")
        log.info("downloading %s@%s into %s", base["repo"], base.get("revision", "main"), args.out)
        try:
            run = download_hub_model(base["repo"], base.get("revision", "main"), args.out, cache_dir=args.cache_dir)
        except ValueError as e:
            log.error("%s", e)
            return 1
        log.info("resolved commit %s; %d files", run["resolved_commit"], len(run["files"]))
    elif base["source"] == "local":
        from statepost.io import ConfigError
        from statepost.local import copy_local_model

        log.info("copying %s into %s", base.get("path"), args.out)
        try:
            run = copy_local_model(base["path"], args.out)
        except (ConfigError, ValueError) as e:
            log.error("%s", e)
            return 1
    else:
        from statepost.toyworld import toy_corpus
        from statepost.models import make_toy_base, toy_settings

        s = toy_settings(base)
        t = time.time()
        corpus = toy_corpus(benches, seed=int(s["seed"]), n_docs=int(s["pretrain"]["corpus_docs"]),
                            data_dir=args.data_dir,
                            answer_line_frac=float(s["pretrain"]["answer_line_frac"]),
                            answer_line_names=int(s["pretrain"]["answer_line_names"]),
                            fact_coverage=float(s["pretrain"]["fact_coverage"]))
        digest = hashlib.sha256("\x00".join(corpus).encode()).hexdigest()
        log.info("toy corpus: %d documents, %d characters (sha256 %s) in %.1fs",
                 len(corpus), sum(map(len, corpus)), digest[:12], time.time() - t)
        run = make_toy_base(s, corpus, args.out)
        log.info("toy base: %d parameters; tokenizer %.1fs; pretrain %d steps %.1fs, loss %.3f -> %.3f",
                 run["parameters"], run["timings"]["tokenizer_s"], run["pretrain"]["steps"],
                 run["timings"]["pretrain_s"], run["pretrain"]["loss_first"], run["pretrain"]["loss_last"])
    log.info("done in %.1fs: %s", time.time() - t0, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
