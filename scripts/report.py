#!/usr/bin/env python
"""Build the report: score tables, figures and claim verdicts from score files and training metrics.

Reads   {scores-dir}/{model}/{benchmark}.json       for every model in --models-json and every benchmark
        {scores-dir}/{model}/{benchmark}.samples.jsonl  beside each (the per-item scores that pair a change's
                                                     standard error over the items; without one: unpaired, marked)
        {metrics-dir}/{run}/seed{seed}/metrics.jsonl  for every trained model
Judges  every claim of --claims (config/claims.yaml)
Writes  {tables-dir}/{scores,delta_vs_base,delta_vs_teacher,retention}.{csv,md,tex,html}, claims.{md,html,json}
        {figures-dir}/{scores,retention_vs_gain,training_curves}.{png,pdf}
        with --diagnostics-dir (reading {diagnostics-dir}/{model}.json for every model):
        {tables-dir}/diagnostics.{csv,md,tex,html}, {figures-dir}/{drift_vs_retention,state_nll}.{png,pdf}
and prints the scores table (Markdown) to stdout.

Each *-json option takes the JSON text itself or @FILE (a JSON or YAML file).
  --models-json      [{"name": "base", "run": "base", "seed": null},
                      {"name": "opd/seed0", "run": "opd", "seed": 0, "teacher": "sft_stress",
                       "states": "learner", "signal": "teacher_kl"}, ...]
                      in config order (it sets row order and colours; states and signal are shown
                      in the tables and pick the second training-curve panel). Also accepted: a
                      mapping {name: {"run", "seed", "teacher", ...}} or a plain list of names.
  --thresholds-json  {"little_forgetting": 0.02, "substantial_loss": 0.05, "min_gain": 0.0,
                      "no_loss": 0.0, "surpass_margin": 0.0, "alpha": 0.025}
                      (missing keys: the config schema's defaults)
  --roles-json       {"mild": "sft_mild", "stress": "sft_stress", "opd": "opd", "rl": "rl"}
                      (missing keys: the config schema's defaults; opd_teacher is the teacher the
                      opd run names, see derived_roles in the claims file)
  --benchmarks-json  ["gsm8k", "truthfulqa_mc2", "mmlu"]  in table order; which one is the target
                      and which measure retention comes from workflow/tasks/benchmarks.yaml
  --claims           the claims file (default: config/claims.yaml), checked against
                      workflow/schemas/claims.schema.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as `python scripts/report.py` from anywhere: make the repo's package importable without installing it.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from statepost.io import json_arg  # noqa: E402  (light: no pandas)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores-dir", required=True, help="score files root (the workflow: results/{experiment}/scores)")
    p.add_argument("--metrics-dir", required=True, help="trained models root (the workflow: results/{experiment}/models)")
    p.add_argument("--models-json", required=True, type=json_arg, help="model list (JSON text or @FILE), see above")
    p.add_argument("--thresholds-json", type=json_arg, help="verdict thresholds (JSON text or @FILE)")
    p.add_argument("--roles-json", type=json_arg, help="claim roles -> runs (JSON text or @FILE)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--benchmarks", nargs="+", default=None,
        help="benchmarks in config order (default: every benchmark of workflow/tasks/benchmarks.yaml)",
    )  # fmt: skip
    g.add_argument("--benchmarks-json", type=json_arg, help="the same as a JSON list (JSON text or @FILE)")
    p.add_argument("--claims", default=None, help="claims file (default: config/claims.yaml)")
    p.add_argument("--diagnostics-dir", default=None,
                   help="results/{experiment}/diagnostics: add the diagnostics table and figures (default: none)")
    p.add_argument("--tables-dir", required=True, help="(the workflow: results/{experiment}/tables)")
    p.add_argument("--figures-dir", required=True, help="(the workflow: results/{experiment}/figures)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    models, thresholds, roles = args.models_json, args.thresholds_json, args.roles_json
    benchmarks = args.benchmarks or args.benchmarks_json
    if not benchmarks:
        from statepost.benchmarks import NAMES as benchmarks
    benchmarks = list(benchmarks)
    if not all(isinstance(b, str) for b in benchmarks):
        raise SystemExit(f"error: --benchmarks: expected names, got {benchmarks!r}")

    from statepost import report  # heavy imports (pandas, matplotlib) only after parsing
    from statepost.io import ConfigError, DataError

    try:
        out = report.make_report(
            args.scores_dir,
            args.metrics_dir,
            models,
            args.tables_dir,
            args.figures_dir,
            thresholds=thresholds,
            roles=roles,
            benchmarks=benchmarks,
            claims=args.claims,
            diagnostics_dir=args.diagnostics_dir,
        )
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out["tables"]["scores"].markdown())
    for r in out["claims"]:
        print(f"{r['claim']}: {r['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
