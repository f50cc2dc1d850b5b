#!/usr/bin/env python
"""Measure one model against the base model on the diagnostics' three fixed state sets.

On GSM8K test prompts with their gold solutions (dataset states), on the model's own sampled completions of the
same prompts (own states) and on the retention benchmarks' probe items (a split no score reads) with a correct
answer (off-task states): the mean per-token KL(model || base) and KL(base || model), the NLL of the tokens under
the model and under the base, the model's entropy, and token counts. Writes --out
(results/{experiment}/diagnostics/{model}.json, schema in results/README.md) atomically.

Example:
  python scripts/diagnose.py --model-dir results/toy/models/sft_mild/seed0 --base-dir results/toy/models/base \\
      --model-name sft_mild/seed0 --data-dir results/toy/data --benchmarks-json '["gsm8k", "truthfulqa_mc2", "mmlu"]' \\
      --probe-splits-json '{"truthfulqa_mc2": "probe", "mmlu": "validation"}' \\
      --settings-json '{"prompts": 32, "max_new_tokens": 48, "temperature": 1.0, "seed": 0, "batch_size": 16,
                        "max_length": 1024, "device": "cpu"}' \\
      --out results/toy/diagnostics/sft_mild/seed0.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statepost.io import json_arg  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path, help="the model measured (save_pretrained directory)")
    p.add_argument("--base-dir", required=True, type=Path, help="the base model it is compared with")
    p.add_argument("--model-name", required=True, help="name recorded in the file (base or {run}/seed{seed})")
    p.add_argument("--data-dir", required=True, type=Path, help="results/{experiment}/data (holds {benchmark}/{split}.jsonl)")
    p.add_argument("--benchmarks-json", required=True, type=json_arg,
                   help="the configured benchmarks (JSON list or @FILE): gsm8k gives the dataset and own states, "
                        "the retention benchmarks the off-task states")  # fmt: skip
    p.add_argument("--probe-splits-json", type=json_arg, default={},
                   help="{retention benchmark: probe split} (JSON or @FILE): where the off-task states come from, "
                        "a split the evaluation never reads; a benchmark not named gives none")  # fmt: skip
    p.add_argument("--settings-json", required=True, type=json_arg,
                   help="the config's diagnostics block without state_nll (JSON text or @FILE)")
    p.add_argument("--out", required=True, type=Path, help="results/{experiment}/diagnostics/{model}.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from statepost.config import with_defaults
    from statepost.io import ConfigError, DataError, env_info, setup_logging, utc_now, write_json

    setup_logging()
    try:
        settings = with_defaults(args.settings_json, "diagnostics")
        settings.pop("state_nll")
        from statepost.diagnostics.statesets import diagnose

        record = diagnose(args.model_dir, args.base_dir, args.data_dir, settings, list(args.benchmarks_json),
                          args.model_name, dict(args.probe_splits_json))  # fmt: skip
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(args.out, {**record, "env": env_info(), "created": utc_now()})
    print(f"wrote {args.out} ({record['time_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
