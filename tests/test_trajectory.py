"""Learning curves from the models saved along a run's training: hand-made score files in, the table's numbers and
the figure out; and the script the trajectory rule runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_report import write_score

from statepost.io import DataError
from statepost.report import trajectory as T

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["gsm8k", "truthfulqa_mc2", "mmlu"]
# (model, step): base is step 0, the run's own model its last step (run.json), the trajectory the steps between
POINTS = {"base": 0.2, "sft_stress/step50/seed0": 0.4, "sft_stress/step100/seed0": 0.5, "sft_stress/seed0": 0.55,
          "sft_stress/step50/seed1": 0.35, "sft_stress/seed1": 0.6}  # fmt: skip
TRAJ = [{"name": f"sft_stress/step{s}/seed{seed}", "run": "sft_stress", "seed": seed, "step": s}
        for seed, steps in ((0, (50, 100)), (1, (50,))) for s in steps]  # fmt: skip


def _world(tmp_path: Path) -> tuple[Path, Path]:
    scores, models = tmp_path / "scores", tmp_path / "models"
    for model, v in POINTS.items():
        for i, bench in enumerate(BENCHES):
            write_score(scores, model, bench, v - 0.1 * i, 0.01)
    for seed in (0, 1):
        (models / "sft_stress" / f"seed{seed}").mkdir(parents=True)
        (models / "sft_stress" / f"seed{seed}" / "run.json").write_text(json.dumps({"final_step": 200}))
    return scores, models


def test_the_curve_runs_from_the_base_through_the_saved_steps_to_the_runs_own_model(tmp_path):
    scores, models = _world(tmp_path)
    df = T.load_trajectory(scores, models, TRAJ, BENCHES)
    table = T.trajectory_table(df).data
    assert list(table.columns) == ["run", "seed", "step", "gsm8k exact_match,strict-match",
                                   "gsm8k exact_match,flexible-extract", "truthfulqa_mc2 acc,none", "mmlu acc,none"]
    got = table[["seed", "step", "gsm8k exact_match,strict-match", "mmlu acc,none"]].round(6).values.tolist()
    assert got == [[0, 0, 0.2, 0.0], [0, 50, 0.4, 0.2], [0, 100, 0.5, 0.3], [0, 200, 0.55, 0.35],
                   [1, 0, 0.2, 0.0], [1, 50, 0.35, 0.15], [1, 200, 0.6, 0.4]]  # fmt: skip
    assert table["gsm8k exact_match,flexible-extract"].round(6).tolist()[:2] == [0.25, 0.45]  # write_score: +0.05


def test_files_are_written_and_a_missing_score_or_run_json_is_named(tmp_path):
    scores, models = _world(tmp_path)
    paths = T.make_trajectory(scores, models, TRAJ, BENCHES, tmp_path / "tables", tmp_path / "figures")
    assert {p.name for p in paths} == {f"trajectory.{e}" for e in ("csv", "md", "tex", "html", "png", "pdf")}
    assert sorted(paths) == sorted(T.output_paths(tmp_path / "tables", tmp_path / "figures"))  # the rule's outputs
    assert (tmp_path / "figures" / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(tmp_path / "tables" / "trajectory.csv")) == 7
    (scores / "sft_stress" / "step100" / "seed0" / "mmlu.json").unlink()
    with pytest.raises(DataError, match=r"missing score file\(s\): .*sft_stress/step100/seed0/mmlu\.json"):
        T.load_trajectory(scores, models, TRAJ, BENCHES)
    (models / "sft_stress" / "seed1" / "run.json").unlink()
    with pytest.raises(DataError, match=r"sft_stress/seed1/run\.json: cannot read the run's final_step"):
        T.load_trajectory(scores, models, TRAJ, BENCHES)


def test_the_script_writes_the_table_and_figure(tmp_path):
    scores, models = _world(tmp_path)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "trajectory.py"), "--scores-dir", str(scores),
                          "--models-dir", str(models), "--trajectory-json", json.dumps(TRAJ),
                          "--benchmarks-json", json.dumps(BENCHES), "--tables-dir", str(tmp_path / "t"),
                          "--figures-dir", str(tmp_path / "f")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t" / "trajectory.md").is_file() and (tmp_path / "f" / "trajectory.pdf").is_file()
