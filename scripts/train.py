#!/usr/bin/env python
"""Train one (run, seed): the one loop for every method (SFT, on-policy distillation, RL).

Single process:   python scripts/train.py --run-json @run.json --init results/toy/models/base --out DIR
Data parallel:    accelerate launch --num_processes N scripts/train.py ...   (same arguments)
FSDP (GPUs):      accelerate launch --config_file profiles/accelerate/fsdp.yaml --num_processes N scripts/train.py ...

Writes DIR (save_pretrained safetensors + tokenizer + generation_config + run.json + metrics.jsonl)
atomically at the end, and the same at each --trajectory-json step. Resumable state goes to --state-dir every checkpoint.every steps; rerunning
the same command resumes from it (if the run config is unchanged) and it is removed on success.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statepost.io import json_arg  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-json", required=True, type=json_arg, help="resolved run config as JSON text, or @FILE")
    p.add_argument("--init", required=True, type=Path, help="model directory the run starts from")
    p.add_argument("--teacher", type=Path, default=None, help="teacher model directory (teacher_kl signals)")
    p.add_argument("--data-dir", type=Path, required=True, help="prepared data (the workflow: results/{experiment}/data)")
    p.add_argument("--out", required=True, type=Path, help="final model directory (written atomically)")
    p.add_argument(
        "--state-dir", type=Path, default=None,
        help="resumable training state, outside --out (default: OUT's parent/.OUT-name.state)",
    )
    p.add_argument("--metrics", type=Path, default=None, help="also copy metrics.jsonl here (default: OUT/metrics.jsonl only)")
    # when to checkpoint and log change no weight, so the workflow passes them apart from --run-json (as resources,
    # which trigger no rerun); absent here and in --run-json, the schema's defaults
    p.add_argument("--checkpoint-every", type=int, help="steps between resumable states (wins over checkpoint.every)")
    p.add_argument("--checkpoint-keep", type=int, help="resumable states kept (wins over checkpoint.keep)")
    p.add_argument("--log-every", type=int, help="steps between log lines (wins over log_every)")
    p.add_argument("--no-progress", action="store_true",
                   help="no tqdm bar; log a line per log_every steps (the default when stderr is not a terminal)")
    p.add_argument("--tracking", default="none",
                   help="none, or trackers to send every metrics line to: tensorboard, wandb, or both comma-separated")
    p.add_argument("--tracking-dir", type=Path, default=None,
                   help="where the trackers write (needed with --tracking; the workflow: "
                        "results/{experiment}/tracking/RUN/seedSEED)")
    p.add_argument("--trajectory-json", type=json_arg, default={},
                   help="{step: directory} (JSON or @FILE): also write the model there after those optimiser steps "
                        "(runs.<run>.trajectory), each below the run's last step")  # fmt: skip
    p.add_argument(
        "--state-nll-every", type=int, default=0,
        help="log state_nll, the init model's NLL of the step's states, every N steps (0, the default: never)",
    )  # fmt: skip
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import logging

    from statepost.progress import bars_only_on_a_terminal

    on_a_terminal = bars_only_on_a_terminal()  # before tqdm and transformers are imported
    from statepost.io import setup_logging

    setup_logging()
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from statepost.io import ConfigError, DataError

    try:
        cfg = args.run_json
        if not isinstance(cfg, dict):
            raise ConfigError("--run-json: expected a JSON object")
        checkpoint = {"every": args.checkpoint_every, "keep": args.checkpoint_keep}
        checkpoint = {**cfg.get("checkpoint", {}), **{k: v for k, v in checkpoint.items() if v is not None}}
        cfg = {**cfg, **({"checkpoint": checkpoint} if checkpoint else {})}
        cfg.update({"log_every": args.log_every} if args.log_every is not None else {})
        from statepost.train.loop import TrainingError, train
        from statepost.train.tracking import tracker_names

        tracking = tracker_names(args.tracking)
        if tracking and args.tracking_dir is None:
            raise ConfigError(f"--tracking {args.tracking}: give --tracking-dir, where the trackers write")

        try:
            train(
                cfg,
                init_dir=args.init,
                out_dir=args.out,
                data_dir=args.data_dir,
                state_dir=args.state_dir,
                teacher_dir=args.teacher,
                metrics_path=args.metrics,
                progress=on_a_terminal and not args.no_progress,
                tracking=tracking,
                tracking_dir=args.tracking_dir if tracking else None,
                state_nll_every=args.state_nll_every,
                trajectory=args.trajectory_json,
            )
        except TrainingError as e:
            logging.getLogger("statepost.train").error("%s", e)
            return 3
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
