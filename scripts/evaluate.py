#!/usr/bin/env python
"""Score one model on one benchmark with lm-evaluation-harness (hf or vllm backend) on the local data files.

Writes the score record to --out (results/{experiment}/scores/{model}/{benchmark}.json) and the per-sample log
beside it ({benchmark}.samples.jsonl). Prints the fixed per-job overheads (imports, task build and data
load, model load) apart from the evaluation itself.

Example:
  python scripts/evaluate.py --model-dir results/toy/models/base --benchmark gsm8k --data-dir results/toy/data \\
      --eval-json '{"num_fewshot": 5, "max_gen_toks": 256, "limit": null, "batch_size": 8}' \\
      --out results/toy/scores/base/gsm8k.json
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statepost import benchmarks  # noqa: E402  (light: reads one YAML file)
from statepost.io import json_arg  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path, help="save_pretrained model directory")
    p.add_argument("--benchmark", required=True, choices=benchmarks.NAMES)
    p.add_argument("--data-dir", required=True, type=Path,
                   help="results/{experiment}/data (holds {benchmark}/{split}.jsonl)")
    p.add_argument("--eval-json", required=True, type=json_arg,
                   help="eval config as JSON text, or @FILE: {num_fewshot, max_gen_toks, "
                        "limit, batch_size, split?, fewshot_split?}")
    p.add_argument("--batch-size", type=int, default=None,
                   help="lm-eval batch size (wins over the eval config's batch_size; it does not change scores)")
    p.add_argument("--out", required=True, type=Path, help="score file, results/{experiment}/scores/{model}/{benchmark}.json")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:0, ...")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, ...")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="lm-eval's model type: hf (transformers) or vllm (GPU only; needs the vllm package)")
    p.add_argument("--model-name", default=None,
                   help="name recorded in the score file (default: the path under results/{experiment}/scores/)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the rendered task YAMLs and split data here (default: a work folder beside --out, removed)")
    p.add_argument("--verbose", action="store_true", help="lm-eval's INFO logging")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not isinstance(args.eval_json, dict):
        raise SystemExit("--eval-json: expected a JSON object")
    if args.batch_size is not None:
        args.eval_json["batch_size"] = args.batch_size
    if "batch_size" not in args.eval_json:  # the rule passes the config's as --batch-size (the schema fills it)
        raise SystemExit("--batch-size: none given, and --eval-json has no batch_size")
    t = time.perf_counter()
    from statepost.io import setup_logging
    from statepost.progress import bars_only_on_a_terminal

    bars_only_on_a_terminal()  # a job's log gets lm-eval's results, not its bars' carriage returns

    setup_logging(level=logging.INFO if args.verbose else logging.WARNING)
    from statepost.evaluate import evaluate
    from statepost.io import ConfigError, DataError

    t_pkg = time.perf_counter() - t
    try:
        rec = evaluate(args.model_dir, args.benchmark, args.data_dir, args.eval_json, args.out, device=args.device,
                       dtype=args.dtype, model_name=args.model_name, workdir=args.workdir, backend=args.backend)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rec:  # non-zero rank of a multi-process run; rank 0 reports and writes
        return 0
    tm = rec["timing_s"]
    total = time.perf_counter() - _T_START
    print(f"{rec['model']} {rec['benchmark']}: {rec['primary_metric']} = {rec['value']:.4f}"
          f" (stderr {rec['stderr'] if rec['stderr'] is not None else 'n/a'}), n={rec['n']}, "
          f"{rec['num_fewshot']}-shot")
    print(f"timing: imports {t_pkg + tm['import']:.1f}s, task build+data load {tm['tasks']:.1f}s, "
          f"model load {tm['model']:.1f}s, evaluation {tm['evaluate']:.1f}s, process total {total:.1f}s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
