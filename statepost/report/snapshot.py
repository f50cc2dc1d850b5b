"""A snapshot of an experiment's results for the docs: the numbers the README and config/README.md quote.

``make toy`` and ``make toy-seeds`` write ``docs/toy/{experiment}.md`` from ``results/{experiment}/`` (its score
files, ``tables/scores.md``, ``tables/claims.json`` and the training metrics) and rewrite every quoted block of the
docs from it, so no number about the toy's results is typed by hand. A quoted block is

    <!-- snapshot docs/toy/toy-seeds.md#claims -->
    ...the section, exactly as the snapshot has it...
    <!-- end snapshot -->

``tests/test_snapshot.py`` fails when a doc's block differs from its snapshot, and when a snapshot differs from a
fresh run of its experiment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from statepost import benchmarks as bench_facts
from statepost.io import atomic_file

from .claims import power, requirement
from .figures import SIGNAL_PANEL

BLOCK = re.compile(r"(<!-- snapshot (?P<path>[^#\s]+)#(?P<section>[\w-]+) -->\n)(?P<body>.*?)(<!-- end snapshot -->)",
                   re.S)  # fmt: skip
SECTION = re.compile(r"^## (?P<name>[\w-]+)\n\n(?P<body>.*?)(?=^## |\Z)", re.S | re.M)
HEADLINE = {"nll": ("loss", "training loss"), **SIGNAL_PANEL}  # per signal: the metric and its words
WINDOW = 10  # steps averaged at the start and the end of training


def _short(metric: str) -> str:
    return metric.split(",", 1)[-1]


def _score_files(results: Path) -> pd.DataFrame:
    """One row per model, benchmark and metric of ``results/scores``: model, run, seed, benchmark, metric, value,
    stderr, n."""
    rows = []
    for path in sorted((results / "scores").rglob("*.json")):
        rec = json.loads(path.read_text())
        model = path.parent.relative_to(results / "scores").as_posix()
        run, _, seed = model.partition("/seed")
        for m in rec["metrics"]:
            rows.append({"model": model, "run": run, "seed": int(seed) if seed else None,
                         "benchmark": rec["benchmark"], "metric": m["metric"], "value": m["value"],
                         "stderr": m.get("stderr"), "n": rec.get("n")})  # fmt: skip
    return pd.DataFrame(rows)


def base_line(scores: pd.DataFrame) -> str:
    base = scores[scores["run"] == "base"].set_index(["benchmark", "metric"])
    parts = []
    for b in bench_facts.BENCHMARKS.values():
        if (b.name, b.primary_metric) not in base.index:
            continue
        r = base.loc[(b.name, b.primary_metric)]
        metric = f" {_short(b.primary_metric)}" if b.metrics else ""
        others = "".join(f"; {_short(m)} {base.loc[(b.name, m), 'value']:.3f}"
                         for m in b.metrics if (b.name, m) in base.index)  # fmt: skip
        parts.append(f"{b.label}{metric} **{r['value']:.3f} ± {r['stderr']:.3f}** ({int(r['n'])} items{others})")
    return "Base (one model; ± lm-eval's standard error): " + ", ".join(parts) + "."


def _rank(runs: list[str]):
    """Sort key of (run, seed): base, then ``runs`` in config order, then seed."""
    order = ["base", *runs]
    return lambda run, seed: (order.index(run) if run in order else len(order), run, -1 if pd.isna(seed) else seed)


def per_seed_table(scores: pd.DataFrame, runs: list[str]) -> str:
    """Run x seed: every benchmark's primary metric, GSM8K's other metrics beside it."""
    value = {(r.model, r.benchmark, r.metric): r.value for r in scores.itertuples()}
    cols = [(b, m) for b in bench_facts.BENCHMARKS.values() for m in (b.primary_metric, *b.metrics)
            if ((scores["benchmark"] == b.name) & (scores["metric"] == m)).any()]  # fmt: skip
    rank = _rank(runs)
    rows = []
    for r in sorted(scores.drop_duplicates("model").itertuples(), key=lambda r: rank(r.run, r.seed)):
        shown = {"run": r.run, "seed": "–" if pd.isna(r.seed) else str(int(r.seed))}
        for b, m in cols:
            v = value.get((r.model, b.name, m))
            shown[f"{b.label} {_short(m)}" if b.metrics else b.label] = "–" if v is None else f"{v:.3f}"
        rows.append(shown)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def claims_table(claims: list[dict]) -> str:
    """One row per check: value ± its standard error (df), requirement, where the true value must lie for the
    check to be decided with probability 0.8 at this size (the smallest decidable effect), outcome; the verdict on
    a claim's first row."""
    rows = []
    for c in claims:
        first = True
        for k in c["checks"] or [None]:
            verdict = ""
            if first:
                lean = f" (checks: {c['leaning']})" if "leaning" in c else ""
                verdict = f"**{c['verdict']}**{lean}, {c['n_seeds']} seed{'s' if c['n_seeds'] != 1 else ''}"
            if k is None:
                rows.append({"claim": c["claim"], "check": "–", "value": "–", "requirement": "–",
                             "80% power": "–", "outcome": "–", "verdict": verdict})  # fmt: skip
                continue
            df = "∞" if k.get("df") is None else f"{k['df']:.0f}"
            se = "" if k["uncertainty"] is None else f" ± {k['uncertainty']:.3f}"
            req = requirement(k)
            rows.append({"claim": c["claim"] if first else "", "check": f"`{k['quantity']}`",
                         "value": f"{k['value']:+.3f}{se} (df {df})", "requirement": req, "80% power": power(k),
                         "outcome": k["outcome"], "verdict": verdict})  # fmt: skip
            first = False
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def training_table(results: Path, signals: dict[str, str]) -> str:
    """Per trained run (in ``signals``' order) and seed: its signal's headline metric, mean over the first and the
    last WINDOW steps."""
    rows = []
    rank = _rank(list(signals))
    found = [(p.parent.parent.name, int(p.parent.name.removeprefix("seed")), p)
             for p in (results / "models").glob("*/seed*/metrics.jsonl")]  # fmt: skip
    for run, seed, path in sorted(found, key=lambda f: rank(f[0], f[1])):
        key, words = HEADLINE.get(signals.get(run), ("loss", "training loss"))
        values = [json.loads(line).get(key) for line in path.read_text().splitlines() if line.strip()]
        values = [v for v in values if v is not None]
        if not values:
            continue
        head, tail = values[:WINDOW], values[-WINDOW:]
        rows.append({"run": run, "seed": str(seed), "metric": words,
                     f"first {WINDOW} steps": f"{sum(head) / len(head):.3f}",
                     f"last {WINDOW} steps": f"{sum(tail) / len(tail):.3f}"})  # fmt: skip
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else "(no training metrics)"


def drift_text(results: Path) -> str:
    """Off-task drift per run (each seed's KL(model‖base)) and its rank correlation with the retention change."""
    from .diagnostics import DRIFT, spearman_text

    path = results / "tables" / "diagnostics.csv"
    if not path.is_file():
        return "(no diagnostics)"
    data = pd.read_csv(path)
    trained = data[data["run"] != "base"]
    per_run = "; ".join(
        f"`{run}` " + ", ".join(f"{v:.3f}" for v in g["off_task_kl_model_base"])
        for run, g in trained.groupby("run", sort=False)
    )
    rho = "; ".join(f"{name}: {spearman_text(data, f'off_task_{key}')}" for key, name in DRIFT.items())
    return (f"Off-task KL(model‖base), nats per token, per seed: {per_run}. Spearman rank correlation of off-task "
            f"drift with the mean retention change: {rho}.")  # fmt: skip


def render(results, signals: dict[str, str], make: str) -> str:
    """The snapshot of ``results`` (``results/{experiment}``) as Markdown sections; ``signals``: run -> signal type,
    in the config's run order; ``make``: the command that writes it."""
    results = Path(results)
    scores = _score_files(results)
    claims = json.loads((results / "tables" / "claims.json").read_text())["claims"]
    sections = {
        "base": base_line(scores),
        "scores": (results / "tables" / "scores.md").read_text().strip(),
        "per-seed": per_seed_table(scores, list(signals)),
        "claims": claims_table(claims),
        "training": training_table(results, signals),
        "drift": drift_text(results),
    }
    trajectory = results / "tables" / "trajectory.md"
    if trajectory.is_file():  # a run saved models along its training: its scores there (the table, note dropped)
        sections["trajectory"] = trajectory.read_text().split("\n\n")[1]
    for name in ("effects", "factorial_cells"):  # the states x signals factorial (its tables, notes dropped)
        path = results / "tables" / f"{name}.md"
        if path.is_file():
            sections[name.replace("_", "-")] = path.read_text().split("\n\n")[1]
    head = (f"<!-- Written by `{make}` from {results.as_posix()}/ (statepost/report/snapshot.py): do not edit. "
            "README.md and config/README.md quote its sections. -->\n\n"
            f"# Snapshot of {results.as_posix()}/\n\n")  # fmt: skip
    return head + "".join(f"## {name}\n\n{body.strip()}\n\n" for name, body in sections.items())


def sections(text: str) -> dict[str, str]:
    """A snapshot's sections by name."""
    return {m["name"]: m["body"].strip() for m in SECTION.finditer(text)}


def quote(doc_text: str, snapshots: dict) -> str:
    """``doc_text`` with every quoted block replaced by its snapshot's section. ``snapshots``: path -> text for the
    snapshots at hand (others are read from their path, relative to the working directory)."""
    given = {Path(k).as_posix(): v for k, v in snapshots.items()}

    def sub(m):
        text = given.get(m["path"])
        if text is None and not Path(m["path"]).is_file():
            raise FileNotFoundError(f"{m['path']}: no such snapshot (make toy and make toy-seeds write them)")
        snap = sections(text if text is not None else Path(m["path"]).read_text(encoding="utf-8"))
        if m["section"] not in snap:
            raise KeyError(f"{m['path']} has no section {m['section']!r} (it has {', '.join(snap)})")
        return f"{m[1]}{snap[m['section']]}\n{m[5]}"

    return BLOCK.sub(sub, doc_text)


def write(path, text: str) -> None:
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
