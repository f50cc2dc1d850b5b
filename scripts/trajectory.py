#!/usr/bin/env python
"""Learning curves: the scores of the models saved along runs' training (runs.<run>.trajectory), from the base
(step 0) to each run's own model, as a table (tables/trajectory.{csv,md,tex,html}) and a figure
(figures/trajectory.{png,pdf}).

Example:
  python scripts/trajectory.py --scores-dir results/toy/scores --models-dir results/toy/models \\
      --trajectory-json '[{"name": "sft_stress/step50/seed0", "run": "sft_stress", "seed": 0, "step": 50}]' \\
      --benchmarks-json '["gsm8k", "truthfulqa_mc2", "mmlu"]' \\
      --tables-dir results/toy/tables --figures-dir results/toy/figures
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
    p.add_argument("--models-dir", required=True, type=Path, help="results/{experiment}/models (each run's run.json)")
    p.add_argument("--trajectory-json", required=True, type=json_arg,
                   help="the saved models, [{name, run, seed, step}] (JSON text or @FILE)")
    p.add_argument("--benchmarks-json", required=True, type=json_arg, help="the configured benchmarks (JSON list)")
    p.add_argument("--tables-dir", required=True, type=Path, help="results/{experiment}/tables")
    p.add_argument("--figures-dir", required=True, type=Path, help="results/{experiment}/figures")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from statepost.io import ConfigError, DataError
    from statepost.report.trajectory import make_trajectory

    try:
        paths = make_trajectory(args.scores_dir, args.models_dir, args.trajectory_json, args.benchmarks_json,
                                args.tables_dir, args.figures_dir)  # fmt: skip
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
