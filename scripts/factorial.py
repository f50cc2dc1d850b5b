#!/usr/bin/env python
"""The states x signals factorial: the effects of state source and signal (and their interaction), the dose-response
over lambda, and each run against base, as tables (tables/effects and tables/factorial_cells, .csv/.md/.tex/.html)
and figures (figures/grid and figures/dose_response, .png/.pdf).

Example (the toy's factorial, config/factorial.yaml):
  python scripts/factorial.py --scores-dir results/toy-factorial/scores --models-dir results/toy-factorial/models \\
      --diagnostics-dir results/toy-factorial/diagnostics \\
      --factorial-json '{"grid": {"dataset": {"nll": "dataset_nll", "teacher_kl": "dataset_kl"},
                                  "learner": {"nll": "learner_nll", "teacher_kl": "opd"}}, "dose": [], "beside": []}' \\
      --runs-json @runs.json --seeds-json '[1, 2, 3]' --benchmarks-json '["gsm8k", "truthfulqa_mc2", "mmlu"]' \\
      --color-scale 0.05 \\
      --tables-dir results/toy-factorial/tables --figures-dir results/toy-factorial/figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statepost.io import json_arg  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores-dir", required=True, type=Path, help="results/{experiment}/scores")
    p.add_argument("--models-dir", required=True, type=Path, help="results/{experiment}/models (each run's metrics.jsonl)")
    p.add_argument("--diagnostics-dir", required=True, type=Path, help="results/{experiment}/diagnostics")
    p.add_argument("--factorial-json", required=True, type=json_arg, help="the config's factorial (JSON text or @FILE)")
    p.add_argument("--runs-json", required=True, type=json_arg, help="the config's runs that it names (JSON or @FILE)")
    p.add_argument("--seeds-json", required=True, type=json_arg, help="the seeds (JSON list)")
    p.add_argument("--benchmarks-json", required=True, type=json_arg, help="the configured benchmarks (JSON list)")
    p.add_argument("--color-scale", required=True, type=float,
                   help="the grid's colour scale spans at least +- this retention change (claims.thresholds.substantial_loss)")
    p.add_argument("--tables-dir", required=True, type=Path, help="results/{experiment}/tables")
    p.add_argument("--figures-dir", required=True, type=Path, help="results/{experiment}/figures")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from statepost.io import ConfigError, DataError
    from statepost.report.factorial import Design, make_factorial

    try:
        design = Design(args.factorial_json, args.runs_json, args.seeds_json)
        paths = make_factorial(args.scores_dir, args.diagnostics_dir, args.models_dir, design, args.benchmarks_json,
                               args.tables_dir, args.figures_dir, args.color_scale)  # fmt: skip
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
