"""Report: loading score files and metrics, tables, figures and the command line, on small synthetic inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from statepost import report as R
from statepost.report import claims as report_claims
from statepost.report import figures, load, statistics, tables
from statepost.config import with_defaults
from statepost.io import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["gsm8k", "truthfulqa_mc2", "mmlu"]
PRIMARY = {"gsm8k": "exact_match,strict-match", "truthfulqa_mc2": "acc,none", "mmlu": "acc,none"}
STDERR = {"gsm8k": 0.012, "truthfulqa_mc2": 0.015, "mmlu": 0.004}

# (run, seed) -> scores on gsm8k, truthfulqa_mc2, mmlu. sft_mild and sft_stress have 2 seeds, opd has seeds 0
# and 2 (seed 2 has no teacher seed), rl has 1 seed.
SCORES = {
    ("base", None): (0.30, 0.40, 0.50),
    ("sft_mild", 0): (0.40, 0.39, 0.49),
    ("sft_mild", 1): (0.42, 0.41, 0.50),
    ("sft_stress", 0): (0.45, 0.32, 0.42),
    ("sft_stress", 1): (0.47, 0.30, 0.40),
    ("opd", 0): (0.50, 0.36, 0.46),
    ("opd", 2): (0.48, 0.34, 0.44),
    ("rl", 0): (0.36, 0.40, 0.498),
}
# Each run's (states, signal) pair, as the DAG's model list gives it.
METHODS = {
    "sft_mild": ("dataset", "nll"),
    "sft_stress": ("dataset", "nll"),
    "opd": ("learner", "teacher_kl"),
    "rl": ("learner", "reward"),
}
SIGNALS = {run: signal for run, (_, signal) in METHODS.items()}


def model_name(run, seed):
    return "base" if run == "base" else f"{run}/seed{seed}"


def models_list(methods=False):
    """The workflow's form: a list of dicts with name/run/seed/teacher in config order; with ``methods``, each
    trained model's states and signal too (as report_models() in workflow/rules/common.smk sends them)."""
    out = []
    for run, seed in SCORES:
        out.append(
            {
                "name": model_name(run, seed),
                "run": run,
                "seed": seed,
                "init": "base",
                "teacher": "sft_stress" if run == "opd" else None,
            }
        )
        if methods and run != "base":
            out[-1].update(states=METHODS[run][0], signal=METHODS[run][1])
    return out


def write_score(root: Path, model: str, bench: str, value: float, stderr=None):
    d = root / model
    d.mkdir(parents=True, exist_ok=True)
    metrics = [{"metric": PRIMARY[bench], "value": value, "stderr": stderr}]
    if bench == "gsm8k":
        metrics.append({"metric": "exact_match,flexible-extract", "value": value + 0.05, "stderr": stderr})
    rec = {
        "model": model, "benchmark": bench, "task": f"statepost_{bench}", "metrics": metrics,
        "primary_metric": PRIMARY[bench], "value": value, "stderr": stderr, "n": 100, "num_fewshot": 0,
        "limit": None, "lm_eval_version": "0.4.13", "model_path": f"results/models/{model}", "created": "now",
    }  # fmt: skip
    (d / f"{bench}.json").write_text(json.dumps(rec))


def write_metrics(root: Path, run: str, seed: int, steps: int = 40):
    d = root / run / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(d / "metrics.jsonl", "w") as f:
        for t in range(1, steps + 1):
            row = {"step": t, "loss": 2.0 * math.exp(-t / 15) + 0.2 + 0.05 * rng.standard_normal(), "lr": 1e-5,
                   "grad_norm": 1.0, "tokens_per_s": 100.0, "padding_waste": 0.1, "time_s": 0.1}  # fmt: skip
            if run == "opd":
                row["kl"] = 0.5 * math.exp(-t / 10) + 0.01
            if run == "rl":
                row["reward"] = min(1.0, 0.2 + t / 60)
            f.write(json.dumps(row) + "\n")


@pytest.fixture
def workspace(tmp_path):
    scores, models = tmp_path / "scores", tmp_path / "models"
    for (run, seed), vals in SCORES.items():
        m = model_name(run, seed)
        for b, v in zip(BENCHES, vals):
            write_score(scores, m, b, v, STDERR[b])
        if run != "base":
            write_metrics(models, run, seed)
    return tmp_path


@pytest.fixture
def loaded(workspace):
    return load.load_scores(workspace / "scores", models_list(), BENCHES)


# ------------------------------------------------------------------------------------------ loading


def test_load_scores_tidy(loaded):
    df = loaded
    assert list(df.columns[:8]) == ["model", "run", "seed", "benchmark", "metric", "value", "stderr", "n"]
    # 8 models x 3 benchmarks primary + 8 gsm8k flexible-extract rows
    assert len(df) == 8 * 3 + 8
    prim = df[df["primary"]]
    assert len(prim) == 24
    assert set(prim.loc[prim["benchmark"] == "gsm8k", "metric"]) == {"exact_match,strict-match"}
    base = prim[(prim["model"] == "base") & (prim["benchmark"] == "mmlu")].iloc[0]
    assert base["run"] == "base" and pd.isna(base["seed"]) and base["value"] == 0.50 and base["n"] == 100
    assert prim[prim["model"] == "opd/seed2"]["seed"].tolist() == [2, 2, 2]


def test_missing_score_file_is_named(workspace):
    (workspace / "scores" / "rl" / "seed0" / "mmlu.json").unlink()
    with pytest.raises(DataError, match=r"rl/seed0/mmlu\.json"):
        load.load_scores(workspace / "scores", models_list())


def test_bad_score_files(workspace):
    path = workspace / "scores" / "base" / "gsm8k.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="base/gsm8k.json: not valid JSON"):
        load.load_scores(workspace / "scores", models_list())
    write_score(workspace / "scores", "base", "gsm8k", 0.3, 0.01)
    rec = json.loads(path.read_text())
    rec["model"] = "sft_mild/seed0"
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match="field 'model'"):
        load.load_scores(workspace / "scores", models_list())
    rec["model"] = "base"
    rec["metrics"] = [{"metric": "exact_match,flexible-extract", "value": 0.3, "stderr": None}]
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match="strict-match"):
        load.load_scores(workspace / "scores", models_list())
    # a null non-primary metric is fine (lm-eval leaves some empty); a null primary is not
    rec["metrics"].append({"metric": "exact_match,strict-match", "value": 0.3, "stderr": None})
    path.write_text(json.dumps(rec))
    df = load.load_scores(workspace / "scores", models_list())
    row = df[(df.model == "base") & (df.benchmark == "gsm8k") & df.primary].iloc[0]
    assert row["value"] == 0.3 and math.isnan(row["stderr"])
    rec["metrics"][0]["value"] = None
    path.write_text(json.dumps(rec))
    df = load.load_scores(workspace / "scores", models_list())
    flex = df[(df.model == "base") & (df.metric == "exact_match,flexible-extract")]["value"]
    assert flex.isna().all() and len(flex) == 1
    rec["metrics"][1]["value"] = None
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"metrics\[1\]\.value must be a number"):
        load.load_scores(workspace / "scores", models_list())


def test_model_list_forms():
    as_list = load.normalize_models(models_list())
    as_names = load.normalize_models([m["name"] for m in models_list()])
    assert {k: (v["run"], v["seed"]) for k, v in as_list.items()} == {
        k: (v["run"], v["seed"]) for k, v in as_names.items()
    }
    assert list(as_list) == [m["name"] for m in models_list()]  # order kept
    assert as_list["opd/seed0"]["teacher"] == "sft_stress"
    assert load.run_order(as_list) == ["base", "sft_mild", "sft_stress", "opd", "rl"]
    with pytest.raises(ConfigError, match="seed"):
        load.normalize_models(["sft_mild"])
    with pytest.raises(ConfigError):
        load.normalize_models({"x/seed0": {"run": "x", "seed": "0"}})


def test_roles_follow_opd_teacher():
    models = models_list() + [{"name": "opd2/seed0", "run": "opd2", "seed": 0, "teacher": "sft_mild"}]
    assert report_claims.resolve_roles(models)["opd_teacher"] == "sft_stress"
    assert report_claims.resolve_roles(models, {"opd": "opd2"})["opd_teacher"] == "sft_mild"
    assert report_claims.resolve_roles(models, {"opd": "opd2", "opd_teacher": "rl"})["opd_teacher"] == "rl"
    with pytest.raises(ConfigError, match="unknown role"):
        report_claims.resolve_roles(models, {"mlid": "x"})


def test_load_metrics(workspace):
    m = load.load_metrics(workspace / "models", models_list())
    assert set(m["model"]) == {model_name(r, s) for r, s in SCORES if r != "base"}
    assert m.groupby("model")["step"].max().eq(40).all()
    assert m.loc[m["run"] == "opd", "kl"].notna().all() and m.loc[m["run"] == "sft_mild", "kl"].isna().all()
    (workspace / "models" / "rl" / "seed0" / "metrics.jsonl").unlink()
    with pytest.raises(DataError, match=r"rl/seed0/metrics\.jsonl"):
        load.load_metrics(workspace / "models", models_list())


# ------------------------------------------------------------------------------------------ tables


def test_summary_two_seeds_and_one(loaded):
    s = statistics.summarize(loaded, runs=load.run_order(models_list())).set_index(["run", "benchmark"])
    mild = s.loc[("sft_mild", "gsm8k")]
    assert mild["n_seeds"] == 2
    assert mild["mean"] == pytest.approx(0.41)
    assert mild["seed_std"] == pytest.approx(np.std([0.40, 0.42], ddof=1))
    assert mild["seed_sem"] == pytest.approx(np.std([0.40, 0.42], ddof=1) / math.sqrt(2))
    assert mild["eval_stderr"] == pytest.approx(0.012)
    assert mild["uncertainty"] == pytest.approx(math.hypot(mild["seed_sem"], 0.012))
    assert mild["spread"] == pytest.approx(mild["seed_std"])
    rl = s.loc[("rl", "mmlu")]  # one seed: no seed spread, lm-eval stderr instead
    assert rl["n_seeds"] == 1 and math.isnan(rl["seed_std"])
    assert rl["spread"] == pytest.approx(0.004) and rl["uncertainty"] == pytest.approx(0.004)
    assert list(dict.fromkeys(s.index.get_level_values(0))) == ["base", "sft_mild", "sft_stress", "opd", "rl"]


def test_tables_content(loaded, tmp_path):
    built = tables.build_tables(loaded, models_list())
    assert set(built) == set(tables.TABLES)
    sc = built["scores"].display.set_index("run")
    assert list(sc.columns) == ["seeds", "GSM8K", "TruthfulQA mc2", "MMLU"]
    assert sc.loc["sft_mild", "seeds"] == 2 and sc.loc["rl", "seeds"] == 1
    assert sc.loc["rl", "MMLU"] == "0.498 ± 0.004"  # one seed: lm-eval stderr
    assert sc.loc["sft_mild", "GSM8K"].startswith("0.410 ± 0.014")  # two seeds: seed std
    assert "(se 0.012)" in sc.loc["sft_mild", "GSM8K"]

    d = built["delta_vs_base"].data.set_index(["run", "benchmark"])
    assert d.loc[("sft_stress", "truthfulqa_mc2"), "delta"] == pytest.approx(0.31 - 0.40)
    assert d.loc[("rl", "gsm8k"), "uncertainty"] == pytest.approx(math.hypot(0.012, 0.012))
    assert "base" not in d.index.get_level_values(0)

    t = built["delta_vs_teacher"].data.set_index("benchmark")
    assert set(t["run"]) == {"opd"} and set(t["teacher"]) == {"sft_stress"}
    # seed 0 paired with teacher seed 0 (0.50 - 0.45); seed 2 against the teacher mean (0.48 - 0.46)
    assert t.loc["gsm8k", "delta"] == pytest.approx(((0.50 - 0.45) + (0.48 - 0.46)) / 2)
    assert t.loc["gsm8k", "paired_seeds"] == 1 and t.loc["gsm8k", "n_seeds"] == 2
    assert built["delta_vs_teacher"].display.iloc[0]["seeds (paired)"] == "2 (1)"

    r = built["retention"].data.set_index("run")
    assert r.loc["sft_stress", "gsm8k_gain"] == pytest.approx(0.16)
    assert r.loc["sft_stress", "retention_change"] == pytest.approx(((0.31 - 0.40) + (0.41 - 0.50)) / 2)
    u = r.loc["rl", "retention_change_unc"]
    assert u == pytest.approx(math.hypot(math.hypot(0.015, 0.015), math.hypot(0.004, 0.004)) / 2)
    assert list(r.index) == ["sft_mild", "sft_stress", "opd", "rl"]


def test_write_tables_csv_md_tex(loaded, tmp_path):
    built = tables.build_tables(loaded, models_list())
    for t in built.values():
        paths = tables.write_table(t, tmp_path)
        assert [p.suffix for p in paths] == [".csv", ".md", ".tex", ".html"]
    back = pd.read_csv(tmp_path / "scores.csv")
    assert {"run", "benchmark", "n_seeds", "mean", "seed_std", "eval_stderr", "uncertainty"} <= set(back.columns)
    assert back.loc[(back.run == "rl") & (back.benchmark == "gsm8k"), "mean"].item() == pytest.approx(0.36)
    md = (tmp_path / "scores.md").read_text()
    assert "| run" in md and "0.498 ± 0.004" in md and "seeds" in md
    assert "+0.110 ± 0.020" in (tmp_path / "delta_vs_base.md").read_text()  # signs kept (no number parsing)
    tex = (tmp_path / "retention.tex").read_text()
    assert "\\begin{tabular}" in tex and "sft\\_mild" in tex and "\\label{tab:retention}" in tex
    # the page `snakemake --report` shows: the Markdown table as an HTML table, numbers right-aligned, with the note
    page = (tmp_path / "scores.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "<title>Benchmark scores per run</title>" in page and page.count("<tr>") == 1 + 5  # header, five runs
    assert '<td style="text-align: right;">0.498 ± 0.004</td>' in page and "root mean square over seeds" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_teacher_table_still_written(loaded, tmp_path):
    models = [dict(m, teacher=None) for m in models_list()]
    t = tables.build_tables(loaded, models)["delta_vs_teacher"]
    assert t.data.empty and "No run in the config has a teacher" in t.note
    tables.write_table(t, tmp_path)
    assert "no rows" in (tmp_path / "delta_vs_teacher.md").read_text()
    assert (tmp_path / "delta_vs_teacher.tex").read_text().startswith("%")


def test_tables_show_each_runs_states_and_signal(loaded, tmp_path):
    built = tables.build_tables(loaded, models_list(methods=True))
    sc = built["scores"].display.set_index("run")
    assert list(sc.columns) == ["states", "signal", "seeds", "GSM8K", "TruthfulQA mc2", "MMLU"]
    assert sc.loc["base", ["states", "signal"]].tolist() == ["–", "–"]
    for run, pair in METHODS.items():
        assert tuple(sc.loc[run, ["states", "signal"]]) == pair
    assert sc.loc["rl", "MMLU"] == "0.498 ± 0.004"  # the numbers are unchanged
    for name in ("delta_vs_base", "retention"):
        disp = built[name].display
        assert list(disp.columns[:3]) == ["run", "states", "signal"], name
        assert [tuple(r) for r in disp[["states", "signal"]].itertuples(index=False)] == [
            METHODS[r] for r in disp["run"]
        ]
    teacher = built["delta_vs_teacher"].display
    assert teacher[["run", "states", "signal", "teacher"]].values.tolist() == [
        ["opd", "learner", "teacher_kl", "sft_stress"]
    ]
    # the numbers carry the pair as well (empty for base)
    data = built["scores"].data
    assert list(data.columns[:3]) == ["run", "states", "signal"]
    assert data.loc[data.run == "opd", "signal"].unique().tolist() == ["teacher_kl"]
    assert data.loc[data.run == "base", "states"].isna().all()
    for t in built.values():
        tables.write_table(t, tmp_path)
    md = (tmp_path / "scores.md").read_text()
    assert "| states" in md and "| learner  | teacher_kl |" in md
    assert "\\begin{tabular}{lllrrrr}" in (tmp_path / "scores.tex").read_text()
    assert "teacher\\_kl" in (tmp_path / "delta_vs_teacher.tex").read_text()


# ------------------------------------------------------------------------------------------ figures


def test_colors_fixed_by_run_order():
    c = figures.run_colors(["base", "a", "b", "c"])
    assert c["base"] == figures.BASE_COLOR and c["a"] == figures.PALETTE[0] and c["c"] == figures.PALETTE[2]
    assert figures.run_colors(["a", "base", "b"]) == {"a": figures.PALETTE[0], "base": figures.BASE_COLOR, "b": figures.PALETTE[1]}


def test_metric_label_names_the_primary_metric():
    assert figures.metric_label("gsm8k") == "GSM8K exact match (strict-match)"
    assert figures.metric_label("gsm8k", "exact_match,flexible-extract") == "GSM8K exact match (flexible-extract)"
    assert figures.metric_label("truthfulqa_mc2") == "TruthfulQA mc2 acc"
    assert figures.metric_label("mmlu", "acc,none") == "MMLU acc"


def test_scores_figure(loaded):
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer

    runs = load.run_order(models_list())
    colors = figures.run_colors(runs)
    fig = figures.scores_figure(statistics.summarize(loaded, runs=runs), colors, loaded)
    axes = [a for a in fig.axes if a.axison]
    # one panel per benchmark, its y-axis named by the metric the score files give
    assert [a.get_ylabel() for a in axes] == ["GSM8K exact match (strict-match)", "TruthfulQA mc2 acc", "MMLU acc"]
    ticks = [t.get_text() for t in axes[0].get_xticklabels()]
    assert ticks == ["base", "sft_mild (2 seeds)", "sft_stress (2 seeds)", "opd (2 seeds)", "rl"]
    assert "lm-eval standard error" in fig.get_supxlabel()
    # one bar per run, coloured by run
    (bars,) = [c for c in axes[1].containers if isinstance(c, BarContainer)]
    assert [to_hex(p.get_facecolor()) for p in bars.patches] == [colors[r].lower() for r in runs]
    assert bars.patches[1].get_height() == pytest.approx(0.40)  # sft_mild on TruthfulQA: (0.39 + 0.41) / 2
    # error bars: seed std for sft_mild (2 seeds), lm-eval stderr for rl (1 seed)
    (gsm,) = [c for c in axes[0].containers if isinstance(c, BarContainer)]
    segments = gsm.errorbar.lines[2][0].get_segments()
    sd = np.std([0.40, 0.42], ddof=1)
    assert segments[1][:, 1] == pytest.approx([0.41 - sd, 0.41 + sd])
    assert segments[4][:, 1] == pytest.approx([0.36 - 0.012, 0.36 + 0.012])


def test_scores_figure_draws_a_zero_score(loaded):
    """A score of exactly 0 has no bar height: it is drawn as a thick line in the run's colour, with its value."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_hex

    runs = load.run_order(models_list())
    colors = figures.run_colors(runs)
    zero = loaded.copy()
    zero.loc[(zero["run"] == "rl") & (zero["benchmark"] == "gsm8k"), "value"] = 0.0
    fig = figures.scores_figure(statistics.summarize(zero, runs=runs), colors, zero)
    gsm, tqa = fig.axes[0], fig.axes[1]
    lines = [c for c in gsm.collections if isinstance(c, LineCollection) and c.get_linewidth()[0] >= 2]
    assert len(lines) == 1 and to_hex(lines[0].get_colors()[0]) == colors["rl"].lower()
    (segment,) = lines[0].get_segments()
    assert segment[:, 1] == pytest.approx([0.0, 0.0]) and segment[:, 0] == pytest.approx([4 - 0.375, 4 + 0.375])
    assert [t.get_text() for t in gsm.texts] == ["0.000"]
    assert not tqa.texts  # scores that show as bars get no marker


def test_retention_vs_gain_figure(loaded):
    runs = load.run_order(models_list())
    colors = figures.run_colors(runs)
    table = tables.retention_table(statistics.summarize(loaded, runs=runs))
    fig = figures.retention_vs_gain_figure(table.data, colors, thresholds=with_defaults({}, "claims")["thresholds"])
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("GSM8K exact match (strict-match) change vs base")
    assert "retention" in ax.get_ylabel() and "TruthfulQA mc2 acc & MMLU acc" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    for run in runs:
        assert texts.count(run) == 1  # one label per run, base included
    assert any("little forgetting" in t for t in texts)
    # dashed zero lines through the origin
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) >= 2
    # origin, every point and its error bar inside the limits
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    d = table.data
    assert x0 < 0 < x1 and y0 < 0 < y1
    assert x1 > (d["gsm8k_gain"] + d["gsm8k_gain_unc"]).max()
    assert y0 < min((d["retention_change"] - d["retention_change_unc"]).min(), -0.05)
    # labels do not overlap one another
    fig.draw_without_rendering()
    r = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, r) for t in ax.texts if t.get_text() in runs]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j])
    # ... nor the threshold notes and the error-bar note; and no error bar crosses a threshold note
    others = [Text.get_window_extent(t, r) for t in ax.texts if t.get_text() not in runs]
    assert len(others) == 3 and not any(b.overlaps(o) for b in boxes for o in others)
    from matplotlib.container import ErrorbarContainer
    from matplotlib.transforms import Bbox

    bars = [Bbox(ax.transData.transform(seg)) for c in ax.containers if isinstance(c, ErrorbarContainer)
            for col in c.lines[2] for seg in col.get_segments()]  # fmt: skip
    notes = [Text.get_window_extent(t, r) for t in ax.texts if t.get_text().startswith(("little", "substantial"))]
    assert len(bars) == 2 * 4 and len(notes) == 2 and not any(n.overlaps(b) for n in notes for b in bars)


def grid_shape(fig) -> tuple[int, int]:
    (shape,) = {a.get_subplotspec().get_gridspec().get_geometry() for a in fig.axes}
    return shape


def test_threshold_notes_move_off_error_bars():
    """A run whose error bar crosses the left end of the threshold lines: the notes go to the right end."""
    from matplotlib.text import Text

    table = pd.DataFrame({"run": ["a", "b"], "n_seeds": [1, 1], "gsm8k_gain": [0.01, 0.30],
                          "gsm8k_gain_unc": [0.01, 0.01], "mmlu_change": [-0.02, -0.2], "mmlu_change_unc": [0.04, 0.01],
                          "retention_change": [-0.02, -0.2], "retention_change_unc": [0.04, 0.01]})  # fmt: skip
    fig = figures.retention_vs_gain_figure(table, thresholds=with_defaults({}, "claims")["thresholds"])
    ax = fig.axes[0]
    fig.draw_without_rendering()
    r = fig.canvas.get_renderer()
    notes = [t for t in ax.texts if t.get_text().startswith(("little", "substantial"))]
    assert [t.get_horizontalalignment() for t in notes] == ["right", "right"]
    a_x = ax.transData.transform((0.01, -0.02))[0]
    assert all(Text.get_window_extent(t, r).x0 > a_x for t in notes)


def test_training_curves_figure(workspace):
    runs = load.run_order(models_list())
    metrics = load.load_metrics(workspace / "models", models_list())
    fig = figures.training_curves_figure(metrics, figures.run_colors(runs), runs, SIGNALS)
    # four runs wrap into two rows of two; each row is a loss row and a second-panel row
    assert grid_shape(fig) == (4, 2)
    assert fig.get_size_inches()[0] < 8
    axes = fig.axes
    titles = [a.get_title() for a in axes if a.get_title()]
    assert titles == ["sft_mild", "sft_stress", "opd", "rl"]
    # an nll run: the loss alone, two rows high; opd and rl: loss above their signal's panel
    spans = {a.get_title(): (a.get_subplotspec().rowspan, a.get_subplotspec().colspan) for a in axes if a.get_title()}
    assert spans["sft_mild"] == (range(0, 2), range(0, 1)) and spans["sft_stress"] == (range(0, 2), range(1, 2))
    assert spans["opd"] == (range(2, 3), range(0, 1)) and spans["rl"] == (range(2, 3), range(1, 2))
    ylabels = [a.get_ylabel() for a in axes]
    assert ylabels == ["training loss\n(nll: the loss is the signal)"] * 2 + [
        "training loss", "KL to teacher", "training loss", "mean reward"]  # fmt: skip
    assert all(a.get_xlabel() == "optimiser step" for a in axes if a.get_ylabel() != "training loss")
    # a smoothed and a raw line per seed: opd has two seeds
    opd_loss = axes[2]
    assert len(opd_loss.get_lines()) == 4 and opd_loss.get_legend() is not None
    # only NLL runs: one row of panels, loss only
    only_sft = metrics[metrics["run"].str.startswith("sft")]
    fig = figures.training_curves_figure(only_sft)
    assert grid_shape(fig) == (1, 2) and len(fig.axes) == 2
    # seven runs: at most three to a row (3 + 2 + 2)
    many = pd.concat([metrics.assign(run=metrics["run"] + f"_{k}") for k in range(2)])
    many = many[many["run"] != "rl_1"]
    fig = figures.training_curves_figure(many, signals={r: SIGNALS[r.rsplit("_", 1)[0]] for r in many["run"]})
    assert grid_shape(fig) == (6, 3) and len([a for a in fig.axes if a.get_title()]) == 7


def test_training_curves_leave_out_skipped_steps(workspace):
    """A skipped step (no update: its logged loss is a placeholder 0) is not on the loss line, and a step that logged
    no value for a key is not on that key's line; skipped steps are ticks along the loss axis instead."""
    metrics = load.load_metrics(workspace / "models", models_list())
    rl = metrics["run"] == "rl"
    skipped = rl & metrics["step"].isin([5, 6, 30])
    metrics["skipped_update"] = np.where(skipped, 1.0, np.where(metrics["run"] == "sft_mild", np.nan, 0.0))
    metrics.loc[skipped, "loss"] = 0.0
    metrics.loc[rl & (metrics["step"] == 12), "reward"] = np.nan  # a step without a reward
    fig = figures.training_curves_figure(metrics[rl], signals={"rl": "reward"})
    loss_ax, reward_ax = fig.axes
    raw, smooth, ticks = loss_ax.get_lines()
    for line in (raw, smooth):
        assert 5 not in line.get_xdata() and 30 not in line.get_xdata() and len(line.get_xdata()) == 37
        assert min(line.get_ydata()) > 0.1  # the placeholder zeros are gone
    assert list(ticks.get_xdata()) == [5, 6, 30] and ticks.get_marker() == "|"
    assert "skipped step (no update): 3" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    # the reward of a skipped step is a measurement (rewards come before the update): kept; step 12's is missing
    reward_steps = list(reward_ax.get_lines()[0].get_xdata())
    assert 5 in reward_steps and 12 not in reward_steps and len(reward_steps) == 39
    assert figures.logged(metrics, "loss")["loss"].min() > 0.1 and len(figures.logged(metrics, "loss")) == len(
        metrics) - 3  # fmt: skip


def test_training_curves_second_panel_follows_the_signal(workspace):
    """The second panel is chosen by the run's signal type, not by which metric names happen to be logged."""
    runs = load.run_order(models_list())
    metrics = load.load_metrics(workspace / "models", models_list())
    metrics.loc[metrics["run"] == "sft_mild", "reward"] = 0.5  # e.g. a learner-state SFT run logging its reward
    signals = dict(SIGNALS, opd="reward")  # opd logs kl and no reward; its panel says so
    fig = figures.training_curves_figure(metrics, figures.run_colors(runs), runs, signals)
    axes = fig.axes
    ylabels = [a.get_ylabel() for a in axes]
    assert ylabels.count("mean reward") == 2 and not any("KL" in y for y in ylabels)
    texts = [t.get_text() for a in axes for t in a.texts]
    assert "(no 'reward' logged)" in texts
    assert ylabels.count("training loss\n(nll: the loss is the signal)") == 2  # sft_mild too, though it logs a reward
    # no signals known (a plain model list): loss only, whatever is logged
    fig = figures.training_curves_figure(metrics, figures.run_colors(runs), runs)
    assert len(fig.axes) == 4 and {a.get_ylabel() for a in fig.axes} == {"training loss"}


def test_save_figure_png_pdf(loaded, tmp_path):
    from matplotlib.image import imread

    runs = load.run_order(models_list())
    fig = figures.scores_figure(statistics.summarize(loaded, runs=runs))
    png, pdf = figures.save_figure(fig, tmp_path, "scores")
    img = imread(png)
    w_in, h_in = fig.get_size_inches()
    # 200 dpi; bbox_inches="tight" trims or grows the canvas a little
    assert img.shape[1] > 0.8 * w_in * figures.FIGURE_DPI and img.shape[0] > 0.8 * h_in * figures.FIGURE_DPI
    assert img.shape[0] < 2 * h_in * figures.FIGURE_DPI
    assert img[..., :3].std() > 0.05  # not blank
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ end to end + CLI


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report.py"), *args], cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_cli_help_is_fast_and_light():
    t0 = time.perf_counter()
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--models-json" in proc.stdout and "--thresholds-json" in proc.stdout
    assert time.perf_counter() - t0 < 10
    code = (
        "import sys, runpy; sys.argv = ['report.py', '--help']\n"
        "try:\n    runpy.run_path('scripts/report.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('pandas', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_cli_end_to_end(workspace):
    models_file = workspace / "models.json"
    models_file.write_text(json.dumps(models_list()))
    args = [
        "--scores-dir", str(workspace / "scores"), "--metrics-dir", str(workspace / "models"),
        "--models-json", f"@{models_file}", "--thresholds-json", '{"little_forgetting": 0.02, "alpha": 0.025}',
        "--roles-json", '{"mild": "sft_mild", "stress": "sft_stress", "opd": "opd", "rl": "rl"}',
        "--benchmarks-json", json.dumps(BENCHES),
        "--tables-dir", str(workspace / "t"), "--figures-dir", str(workspace / "f"),
    ]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "| run" in proc.stdout and "0.498 ± 0.004" in proc.stdout  # the scores table, printed
    assert "claim1:" in proc.stdout
    for p in R.output_paths(workspace / "t", workspace / "f"):
        assert p.is_file() and p.stat().st_size > 0, p
    claims = json.loads((workspace / "t" / "claims.json").read_text())
    assert [c["claim"] for c in claims["claims"]] == ["claim1", "claim2", "claim3"]
    assert claims["roles"]["opd_teacher"] == "sft_stress"  # from the OPD run's teacher
    verdicts = [c["verdict"] for c in claims["claims"]]
    assert [f"{c}: {v}" in proc.stdout for c, v in zip(["claim1", "claim2", "claim3"], verdicts)] == [True] * 3
    md = (workspace / "t" / "claims.md").read_text()
    assert md.count("Verdict: **") == 3
    page = (workspace / "t" / "claims.html").read_text()
    assert page.count("Verdict: <strong>") == 3 and page.count("<table>") == 3 and "<h2>claim1: " in page
    from matplotlib.image import imread

    assert imread(workspace / "f" / "retention_vs_gain.png").shape[1] > 800
    assert not list((workspace / "t").glob(".*.tmp")) and not list((workspace / "f").glob(".*.tmp"))
    # a missing score file: a clear error, exit code 2, nothing half-written
    (workspace / "scores" / "opd" / "seed2" / "gsm8k.json").unlink()
    proc = run_cli(*[a if a != str(workspace / "t") else str(workspace / "t2") for a in args])
    assert proc.returncode == 2 and "opd/seed2/gsm8k.json" in proc.stderr
    assert not (workspace / "t2").exists()
    proc = run_cli(*args[:4], "--models-json", "{bad json")
    assert proc.returncode != 0 and "models-json" in proc.stderr


def test_cli_claims_file(workspace):
    """A claim added in YAML only reaches claims.md/.json through --claims; a malformed file stops the report
    before anything is written, naming the file and key."""
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "claims.yaml").read_text())
    raw["claims"].append(
        {
            "id": "claim4",
            "statement": "Mild SFT keeps MMLU within little_forgetting of base.",
            "roles": ["mild"],
            "checks": [{"quantity": "drop", "role": "mild", "benchmark": "mmlu", "op": "<",
                        "threshold": "little_forgetting"}],
        }
    )  # fmt: skip
    claims_file = workspace / "claims.yaml"
    claims_file.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    args = [
        "--scores-dir", str(workspace / "scores"), "--metrics-dir", str(workspace / "models"),
        "--models-json", json.dumps(models_list(methods=True)), "--benchmarks", *BENCHES,
        "--tables-dir", str(workspace / "t"), "--figures-dir", str(workspace / "f"), "--claims", str(claims_file),
    ]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    claims = json.loads((workspace / "t" / "claims.json").read_text())
    assert [c["claim"] for c in claims["claims"]] == ["claim1", "claim2", "claim3", "claim4"]
    c4 = claims["claims"][3]
    assert c4["checks"][0]["quantity"] == "sft_mild mmlu drop" and c4["checks"][0]["value"] == pytest.approx(0.005)
    assert f"claim4: {c4['verdict']}" in proc.stdout
    assert "## claim4: Mild SFT keeps MMLU" in (workspace / "t" / "claims.md").read_text()
    assert "| states" in proc.stdout and "teacher_kl" in proc.stdout  # the scores table shows the pairs
    raw["claims"][3]["checks"][0]["op"] = "<="
    claims_file.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    proc = run_cli(*[a if a != str(workspace / "t") else str(workspace / "t2") for a in args])
    assert proc.returncode == 2 and f"{claims_file}: claims.3.checks.0.op" in proc.stderr, proc.stderr
    assert not (workspace / "t2").exists()


def test_state_nll_figure_names_the_seeds_and_the_base_references():
    """Each run's seeds differ by line style, so the legend says which style is which seed; the base's reference
    lines are thin solid lines that no seed uses."""
    from statepost.report import diagnostics

    rows = [{"run": run, "seed": seed, "step": step, "state_nll": 0.3 + 0.01 * step}
            for run in ("sft_mild", "rl") for seed in (1, 2) for step in (1, 2, 3)]  # fmt: skip
    diag = pd.DataFrame([{"run": "base", "dataset_nll_base": 0.2, "own_nll_base": 0.15}])
    fig = diagnostics.state_nll_figure(pd.DataFrame(rows), diag, {"sft_mild": "C0", "rl": "C1"},
                                       ["base", "sft_mild", "rl"])  # fmt: skip
    handles, labels = fig.axes[0].get_legend_handles_labels()
    line = dict(zip(labels, handles))
    assert [lab for lab in labels if lab.startswith("seed")] == ["seed 1", "seed 2"]
    assert line["seed 1"].get_linestyle() != line["seed 2"].get_linestyle()
    refs = [line[lab] for lab in labels if lab.startswith("base:")]
    # thin solid lines: a seed's smoothed line is thick, and only the first seed is solid
    assert len(refs) == 2 and all(r.get_linestyle() == "-" and r.get_linewidth() < line["seed 1"].get_linewidth()
                                  for r in refs)  # fmt: skip
