"""The report: score tables, figures and a verdict for each claim of ``config/claims.yaml``.

Everything here reads the files other rules write (``results/{experiment}/scores/{model}/{benchmark}.json``, the per-sample
logs beside them, and ``results/{experiment}/models/{run}/seed{seed}/metrics.jsonl``) and turns them into

* tables (``results/{experiment}/tables/{name}.csv|.md|.tex|.html``): ``scores``, ``delta_vs_base``, ``delta_vs_teacher``,
  ``retention``, plus ``claims.md`` / ``claims.html`` / ``claims.json``;
* figures (``results/{experiment}/figures/{name}.png|.pdf``): ``scores``, ``retention_vs_gain``, ``training_curves``;
* with the diagnostics (``results/{experiment}/diagnostics/{model}.json``): the ``diagnostics`` table and the
  ``drift_vs_retention`` and ``state_nll`` figures (:mod:`.diagnostics`).

Modules: :mod:`.load` (model list, score files, metrics), :mod:`.statistics` (summaries, the uncertainty
convention and the tests' maths), :mod:`.tables`, :mod:`.figures`, :mod:`.claims` (the interpreter of the claims
file, which :func:`statepost.config.load_claims` reads and validates, and the writer of its verdicts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from statepost import benchmarks as bench_facts
from statepost.config import load_claims

from .claims import QUANTITIES, check_thresholds, claims_markdown, resolve_roles, verdicts, write_claims
from .diagnostics import FIGURES as DIAGNOSTICS_FIGURES, TABLE as DIAGNOSTICS_TABLE, write_diagnostics
from .figures import (FIGURE_FORMATS, FIGURES, retention_vs_gain_figure, run_colors, save_figure, scores_figure,
                      training_curves_figure)  # fmt: skip
from .load import (BASE, load_items, load_metrics, load_scores, normalize_models, run_methods, run_order,
                   target_and_retention)  # fmt: skip
from .statistics import Changes, metric_summaries, summarize
from .tables import TABLE_FORMATS, TABLES, Table, build_tables, write_table

__all__ = [
    "BASE", "FIGURES", "FIGURE_FORMATS", "QUANTITIES", "TABLES", "TABLE_FORMATS", "Table", "build_tables",
    "Changes", "check_thresholds", "claims_markdown", "load_claims", "load_items", "load_metrics", "load_scores",
    "make_report",
    "normalize_models", "output_paths", "resolve_roles", "run_colors", "run_order", "save_figure", "summarize",
    "verdicts", "write_claims", "write_table",
]  # fmt: skip


def output_paths(tables_dir, figures_dir, diagnostics: bool = False) -> list[Path]:
    """Every file ``make_report`` writes (for a Snakemake rule's output list); ``diagnostics``: with a
    diagnostics_dir."""
    t, f = Path(tables_dir), Path(figures_dir)
    tables = list(TABLES) + ([DIAGNOSTICS_TABLE] if diagnostics else [])
    figures = list(FIGURES) + (list(DIAGNOSTICS_FIGURES) if diagnostics else [])
    return (
        [t / f"{n}.{e}" for n in tables for e in TABLE_FORMATS]
        + [t / "claims.md", t / "claims.html", t / "claims.json"]
        + [f / f"{n}.{e}" for n in figures for e in FIGURE_FORMATS]
    )


def make_report(
    scores_dir,
    metrics_dir,
    models,
    tables_dir,
    figures_dir,
    thresholds: Mapping | None = None,
    roles: Mapping | None = None,
    benchmarks: Iterable[str] | None = None,
    claims=None,
    diagnostics_dir=None,
) -> dict:
    """Load scores and metrics, write every table, figure and the claim verdicts. Returns the Table objects,
    verdicts and summary (``{"tables": {...}, "claims": [...], "summary": DataFrame}``).

    ``benchmarks``: in table order (the config's; default every known benchmark); which is the target and which
    measure retention comes from ``statepost.benchmarks``. ``claims``: the claims file (default: the schema's
    ``claims.definitions``), read and validated before anything else. ``diagnostics_dir``: where
    ``{model}.json`` diagnostics are (None: no diagnostics table and figures).
    """
    spec = load_claims(claims)
    norm = normalize_models(models)
    benchmarks = list(bench_facts.NAMES if benchmarks is None else benchmarks)
    target, retention = target_and_retention(benchmarks)
    th = check_thresholds(thresholds)
    roles = resolve_roles(norm, roles, spec)
    runs = run_order(norm)
    colors = run_colors(runs)
    scores = load_scores(scores_dir, norm, benchmarks)
    items = load_items(scores_dir, scores)  # per-item scores: the changes' standard errors pair over the items
    metrics = load_metrics(metrics_dir, norm)
    summary = summarize(scores, runs=runs, benchmarks=benchmarks)
    tables = build_tables(scores, norm, target, retention, summary=summary, items=items)
    for t in tables.values():
        write_table(t, tables_dir)
    others = {m: (s, Changes(s, norm, items)) for m, s in metric_summaries(scores, runs, benchmarks).items()}
    results = verdicts(summary, roles, th, claims=spec, target=target, retention=retention,
                       changes=Changes(summary, norm, items), metrics=others)  # fmt: skip
    write_claims(results, tables_dir, roles, retention)
    signals = {run: signal for run, (_, signal) in run_methods(norm).items()}
    figs = {
        "scores": scores_figure(summary, colors, scores),
        "retention_vs_gain": retention_vs_gain_figure(tables["retention"].data, colors, target, thresholds=th),
        "training_curves": training_curves_figure(metrics, colors, runs, signals),
    }
    for name, fig in figs.items():
        save_figure(fig, figures_dir, name)
    if diagnostics_dir is not None:
        tables[DIAGNOSTICS_TABLE] = write_diagnostics(
            diagnostics_dir, scores, metrics, norm, benchmarks, retention, tables_dir, figures_dir
        )
    return {"tables": tables, "claims": results, "summary": summary}
