#!/usr/bin/env python
"""Write the docs' snapshot of an experiment's results and rewrite the blocks of the docs that quote it.

    python scripts/snapshot.py results/toy-seeds docs/toy/toy-seeds.md --make "make toy-seeds" \
        --quote README.md config/README.md

Reads   {results}/scores/**/*.json, {results}/tables/scores.md, claims.json and diagnostics.csv,
        {results}/models/{run}/seed{seed}/metrics.jsonl, and the config (--configfile) for each run's signal
Writes  the snapshot (sections: base, scores, per-seed, claims, training, drift), then each --quote file with every
        `<!-- snapshot PATH#SECTION -->` ... `<!-- end snapshot -->` block replaced by that section
        (statepost/report/snapshot.py).
--check: write nothing; exit 1 naming what differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="results/{experiment}")
    p.add_argument("snapshot", type=Path, help="the snapshot file, e.g. docs/toy/toy-seeds.md")
    p.add_argument("--configfile", nargs="+", default=["config/toy.yaml"], help="the experiment's config files")
    p.add_argument("--make", default="make toy", help="the command named in the snapshot's header")
    p.add_argument("--quote", nargs="*", type=Path, default=[], help="docs whose snapshot blocks to rewrite")
    p.add_argument("--check", action="store_true", help="compare only; exit 1 when anything differs")
    args = p.parse_args(argv)

    from statepost import config as cfglib
    from statepost.report import snapshot

    cfg = cfglib.validate(cfglib.read_config_files(args.configfile))
    signals = {run: cfg["runs"][run]["signal"]["type"] for run in cfglib.run_order(cfg)}
    wanted = {args.snapshot: snapshot.render(args.results, signals, args.make)}
    if not args.check:
        snapshot.write(args.snapshot, wanted[args.snapshot])
    for doc in args.quote:
        wanted[doc] = snapshot.quote(doc.read_text(encoding="utf-8"), {args.snapshot: wanted[args.snapshot]})
    differ = [str(path) for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        print("\n".join(f"differs from the run: {d}" for d in differ) or "the docs agree with the run")
        return 1 if differ else 0
    for doc in args.quote:
        snapshot.write(doc, wanted[doc])
    print(f"wrote {args.snapshot}" + "".join(f", {d}" for d in args.quote))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
