"""The tables: ``results/{experiment}/tables/{name}.csv`` (numbers), ``.md``, ``.tex`` and ``.html`` (formatted).

``scores``, ``delta_vs_base``, ``delta_vs_teacher`` and ``retention`` (the verdicts' ``claims.md``, ``claims.html``
and ``claims.json`` are written by :mod:`.claims`, with this module's standard-error wording and HTML page). Each
per-run table shows the run's (states, signal) pair next to its name when the model list gives it (the DAG always
does).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import markdown
import numpy as np
import pandas as pd

from statepost.io import ConfigError, atomic_file

from .load import BASE, label, normalize_models, run_methods, run_order, target_and_retention, teacher_ref
from .statistics import Changes, deltas_vs_base, lookup, retention_summary, summarize

TABLES = ("scores", "delta_vs_base", "delta_vs_teacher", "retention")
TABLE_FORMATS = ("csv", "md", "tex", "html")
_TEXT_COLUMNS = ("run", "teacher", "states", "signal", "effect")  # left-aligned

Methods = Mapping[str, tuple]  # run -> (states, signal), see load.run_methods


@dataclass
class Table:
    """A table as numbers (``data``, written as CSV) and as text (``display``, written as Markdown and LaTeX)."""

    name: str
    data: pd.DataFrame
    display: pd.DataFrame
    note: str = ""
    caption: str = ""

    def markdown(self) -> str:
        align = ["left" if c in _TEXT_COLUMNS else "right" for c in self.display.columns]
        body = (
            self.display.to_markdown(index=False, disable_numparse=True, colalign=align)
            if len(self.display)
            else "_(no rows)_"
        )
        parts = [f"**{self.caption}**" if self.caption else "", body, self.note]
        return "\n\n".join(p for p in parts if p) + "\n"

    def latex(self) -> str:
        if not len(self.display):
            return f"% {self.caption}: no rows\n"
        align = "".join("l" if c in _TEXT_COLUMNS else "r" for c in self.display.columns)
        return self.display.to_latex(
            index=False, escape=True, column_format=align, caption=self.caption or None, label=f"tab:{self.name}"
        )


def _fmt(v, u=None, signed=False, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    if u is not None and not (isinstance(u, float) and math.isnan(u)):
        s += f" ± {u:.{digits}f}"
    return s


# How a change's standard error is read: every table's note says it, and so does claims.md (:mod:`.claims`).
UNPAIRED = " †"  # marks a change whose standard error is not paired over the items
SE_HOW = (
    "paired over the test items every model is scored on (the standard error of the per-item differences, "
    "averaged over seeds) and the standard error over seeds of the per-seed changes, in quadrature."
)
_SE_NOTE = "± one standard error of the change: " + SE_HOW
UNPAIRED_NOTE = (
    " † unpaired: a per-sample log is missing, so the two scores' standard errors (lm-eval's and the seeds') are "
    "added in quadrature as if independent, which overstates it."
)


def _change(v, u, paired) -> str:
    """A signed change ± its standard error, marked when unpaired."""
    s = _fmt(v, u, signed=True)
    return s + UNPAIRED if s != "–" and paired is not None and not paired else s


def _se_note(paired: Iterable) -> str:
    return _SE_NOTE + (UNPAIRED_NOTE if not all(bool(p) for p in paired) else "")


def _shown(methods: Methods | None) -> bool:
    """Whether to show the (states, signal) columns: when the model list gave them for some run."""
    return bool(methods) and any(p != (None, None) for p in methods.values())


def _with_method(row: dict, run: str, methods: Methods | None) -> dict:
    """``row`` with the run's states and signal inserted after ``run`` (when shown)."""
    if not _shown(methods):
        return row
    states, signal = methods.get(run, (None, None))
    out = {"run": row["run"], "states": states or "–", "signal": signal or "–"}
    out.update((k, v) for k, v in row.items() if k != "run")
    return out


def _data_with_method(data: pd.DataFrame, methods: Methods | None) -> pd.DataFrame:
    """The numbers with ``states`` and ``signal`` columns after ``run`` (when shown; empty for base)."""
    if not _shown(methods):
        return data
    data = data.copy()
    pairs = [methods.get(run, (None, None)) for run in data["run"]]
    data.insert(1, "signal", [p[1] for p in pairs])
    data.insert(1, "states", [p[0] for p in pairs])
    return data


def scores_table(summary: pd.DataFrame, methods: Methods | None = None) -> Table:
    """Run x benchmark: mean over seeds ± spread (seed std with >1 seed, else lm-eval stderr), seeds shown."""
    data = summary[
        ["run", "benchmark", "metric", "n_seeds", "mean", "seed_std", "seed_sem", "eval_stderr", "uncertainty", "n"]
    ].copy()
    benches = list(dict.fromkeys(summary["benchmark"]))
    rows = []
    for run, g in summary.groupby("run", sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "seeds": int(by["n_seeds"].max())}
        for b in benches:
            if b in by.index:
                r = by.loc[b]
                cell = _fmt(r["mean"], r["spread"])
                if r["n_seeds"] > 1 and not math.isnan(r["eval_stderr"]):
                    cell += f" (se {r['eval_stderr']:.3f})"
                row[label(b)] = cell
            else:
                row[label(b)] = "–"
        rows.append(_with_method(row, run, methods))
    note = (
        "Accuracy (fraction correct; GSM8K: exact match, strict-match extraction; TruthfulQA mc2 and MMLU: acc). "
        "Mean over seeds ± standard deviation over seeds when a run has more than one seed, else ± lm-eval's "
        "standard error; '(se x)' is lm-eval's standard error (root mean square over seeds)."
    )
    if _shown(methods):
        note += " states, signal: where the run's training states come from and what is applied at them."
    return Table("scores", _data_with_method(data, methods), pd.DataFrame(rows), note, "Benchmark scores per run")


def delta_vs_base_table(summary: pd.DataFrame, methods: Methods | None = None, changes: Changes | None = None):
    d = deltas_vs_base(summary, changes)
    benches = list(dict.fromkeys(summary["benchmark"]))
    rows = []
    for run, g in d.groupby("run", sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "seeds": int(by["n_seeds"].max())}
        for b in benches:
            row[label(b)] = _change(by["delta"][b], by["uncertainty"][b], by["paired"][b]) if b in by.index else "–"
        rows.append(_with_method(row, run, methods))
    note = "Change in accuracy against the base model (run mean − base). " + _se_note(d["paired"])
    return Table(
        "delta_vs_base", _data_with_method(d, methods), pd.DataFrame(rows), note, "Change against the base model"
    )


def delta_vs_teacher_table(scores: pd.DataFrame, models, summary: pd.DataFrame | None = None,
                           changes: Changes | None = None) -> Table:  # fmt: skip
    """For runs with a teacher: run − teacher per benchmark, paired by seed where the teacher has that seed."""
    norm = normalize_models(models)
    names = {(info["run"], info["seed"]): name for name, info in norm.items()}
    methods = run_methods(norm)
    prim = scores[scores["primary"]] if "primary" in scores else scores
    if summary is None:
        summary = summarize(scores, runs=run_order(norm))
    look = lookup(summary)
    changes = changes or Changes(summary)
    benches = list(dict.fromkeys(summary["benchmark"]))
    val = {(r.run, r.seed if not pd.isna(r.seed) else None, r.benchmark): r.value for r in prim.itertuples()}
    rows, skipped = [], []
    students = {}
    for info in norm.values():
        if info["teacher"]:
            students.setdefault(info["run"], []).append((info["seed"], info["teacher"]))
    for run, members in students.items():
        teachers = {teacher_ref(t)[0] for _, t in members}
        if len(teachers) != 1:
            raise ConfigError(f"models: run {run!r} names several teacher runs: {sorted(teachers)}")
        t_run = teachers.pop()
        if not any(k[0] == t_run for k in look):
            skipped.append(f"{run} (teacher {t_run} has no scores)")
            continue
        for b in benches:
            diffs, paired, partners = [], 0, []
            for seed, teacher in members:
                _, t_seed = teacher_ref(teacher)
                s_val = val.get((run, seed, b))
                if s_val is None:
                    continue
                partner = None  # the teacher's mean
                if t_run == BASE and (BASE, None, b) in val:
                    partner = (BASE, None)
                elif t_seed is not None and (t_run, t_seed, b) in val:
                    partner = (t_run, t_seed)
                elif (t_run, seed, b) in val:
                    partner = (t_run, seed)
                if partner is None:
                    tv = look[(t_run, b)][0]
                else:
                    tv = val[(*partner, b)]
                    paired += 1
                diffs.append(s_val - tv)
                partners.append((names[(run, seed)], names[partner] if partner else None))
            if not diffs:
                continue
            c = changes(run, t_run, b, partners)
            rows.append(
                {
                    "run": run,
                    "teacher": t_run,
                    "benchmark": b,
                    "n_seeds": len(diffs),
                    "paired_seeds": paired,
                    "run_mean": look[(run, b)][0],
                    "teacher_mean": look[(t_run, b)][0],
                    "delta": float(np.mean(diffs)),
                    **c,
                }
            )
    cols = ["run", "teacher", "benchmark", "n_seeds", "paired_seeds", "run_mean", "teacher_mean", "delta"]
    cols += ["uncertainty", "seed_sem", "item_se", "paired"]
    d = pd.DataFrame(rows, columns=cols)
    disp = []
    for (run, teacher), g in d.groupby(["run", "teacher"], sort=False):
        by = g.set_index("benchmark")
        row = {"run": run, "teacher": teacher, "seeds (paired)": f"{by['n_seeds'].max()} ({by['paired_seeds'].min()})"}
        for b in benches:
            row[label(b)] = _change(by["delta"][b], by["uncertainty"][b], by["paired"][b]) if b in by.index else "–"
        disp.append(_with_method(row, run, methods))
    note = (
        "Change in accuracy against the run's teacher (run − teacher), averaged over the run's seeds; a seed is "
        "compared with the teacher's same seed where it exists ('paired'), else with the teacher's mean (whose "
        "seed standard error is then added). " + _se_note(d["paired"])
    )
    if not students:
        note = "No run in the config has a teacher. " + note
    if skipped:
        note += " Skipped: " + "; ".join(skipped) + "."
    return Table(
        "delta_vs_teacher", _data_with_method(d, methods), pd.DataFrame(disp), note, "Change against the teacher"
    )


def retention_table(
    summary: pd.DataFrame,
    target: str | None = None,
    retention: Iterable[str] | None = None,
    methods: Methods | None = None,
    changes: Changes | None = None,
) -> Table:
    if target is None:
        target = target_and_retention(dict.fromkeys(summary["benchmark"]))[0]
    r = retention_summary(summary, target, retention, changes)
    retention = [c[: -len("_change")] for c in r.columns if c.endswith("_change") and c != "retention_change"]

    def cells(name):  # the change ``name`` (e.g. gsm8k_gain), ± its standard error, marked when unpaired
        return [_change(*x) for x in zip(r[name], r[f"{name}_unc"], r[f"{name}_paired"])]

    disp = pd.DataFrame(
        {
            "run": r["run"],
            "seeds": r["n_seeds"],
            f"{label(target)} gain": cells(f"{target}_gain"),
            **{f"{label(b)} Δ": cells(f"{b}_change") for b in retention},
            "mean retention Δ": cells("retention_change"),
        }
    )
    if _shown(methods):
        disp = pd.DataFrame([_with_method(row, row["run"], methods) for row in disp.to_dict("records")])
    note = (
        f"Gain on {label(target)} and change on the retention benchmarks "
        f"({', '.join(label(b) for b in retention)}) against the base model; 'mean retention Δ' is their mean "
        "(negative = forgetting). "
        + _se_note(r[[c for c in r.columns if c.endswith("_paired")]].to_numpy().ravel())
        + " The mean of k changes has sqrt(sum of their squared standard errors) / k."
    )
    return Table("retention", _data_with_method(r, methods), disp, note, "Gain against retention")


# The HTML page around a Markdown table: what `snakemake --report` shows inline (it offers other text files, .md and
# .csv among them, only as downloads).
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.45; margin: 1.2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; }}
th, td {{ padding: 3px 10px; border-bottom: 1px solid #ddd; font-variant-numeric: tabular-nums; }}
thead th {{ border-bottom: 2px solid #444; }}
tbody tr:hover {{ background: #f4f4f4; }}
</style></head><body>
{body}
</body></html>
"""


def markdown_page(text: str, title: str) -> str:
    """A Markdown text (with pipe tables) as a standalone HTML page, by Python-Markdown."""
    return _PAGE.format(title=html.escape(title), body=markdown.markdown(text, extensions=["tables"]))


def write_table(table: Table, tables_dir) -> list[Path]:
    """Write ``{name}.csv`` (numbers), ``{name}.md``, ``{name}.tex`` and ``{name}.html`` (formatted) atomically."""
    tables_dir = Path(tables_dir)
    paths, md = [], table.markdown()
    for ext, text in (
        ("csv", table.data.to_csv(index=False, float_format="%.6g")),
        ("md", md),
        ("tex", table.latex()),
        ("html", markdown_page(md, table.caption or table.name)),
    ):
        path = tables_dir / f"{table.name}.{ext}"
        with atomic_file(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def build_tables(
    scores: pd.DataFrame,
    models,
    target: str | None = None,
    retention: Iterable[str] | None = None,
    summary: pd.DataFrame | None = None,
    items: dict | None = None,
) -> dict[str, Table]:
    """Every table, in ``TABLES`` order. ``items``: the per-item scores (:func:`.load.load_items`) that pair the
    changes' standard errors over the test items (None: every change unpaired, and marked so)."""
    norm = normalize_models(models)
    methods = run_methods(norm)
    if summary is None:
        summary = summarize(scores, runs=run_order(norm))
    changes = Changes(summary, norm, items)
    return {
        "scores": scores_table(summary, methods),
        "delta_vs_base": delta_vs_base_table(summary, methods, changes),
        "delta_vs_teacher": delta_vs_teacher_table(scores, norm, summary, changes),
        "retention": retention_table(summary, target, retention, methods, changes),
    }
