"""Rerun exactly what an edit affects: on the finished toy run, each config edit below plans exactly
the jobs whose outputs the edit can change (a dry run after the edit, compared job for job)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import snakemake
from test_toy_dag import job_counts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TOY = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
BENCHES = list(TOY["benchmarks"])
RUNS = list(TOY["runs"])
MODELS = 1 + len(RUNS)  # base and one seed of every run
ALONG = len(TOY["runs"]["sft_stress"]["trajectory"])  # sft_stress's models along training: evaluated, not diagnosed
EVALUATED = MODELS + ALONG
EVERYTHING_TRAINED = {"base_model": 1, **{r: 1 for r in RUNS}, "evaluate": EVALUATED * len(BENCHES),
                      "diagnose": MODELS, "report": 1, "trajectory": 1}


def setting(path: str, value):
    """An edit that sets one dotted key path."""

    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return edit


def reorder(obj):
    """The same config with the keys of every mapping in reverse order."""
    if isinstance(obj, dict):
        return {k: reorder(obj[k]) for k in reversed(list(obj))}
    return obj


def run_and_evals(*runs):
    """Each run retrained, evaluated and diagnosed (sft_stress with its models along training), then the report."""
    out = {r: 1 for r in runs}
    out["evaluate"] = (len(runs) + ALONG * ("sft_stress" in runs)) * len(BENCHES)
    out["diagnose"] = len(runs)
    return out | {"report": 1} | ({"trajectory": 1} if "sft_stress" in runs else {})


def claims_edit(tmp_path):
    def edit(cfg):
        claims = yaml.safe_load((ROOT / "config" / "claims.yaml").read_text())
        claims["claims"][0]["statement"] += " (reworded)"
        path = tmp_path / "claims.yaml"
        path.write_text(yaml.safe_dump(claims, sort_keys=False))
        cfg.setdefault("claims", {})["definitions"] = str(path)

    return edit


# (case, edit, the jobs a dry run must plan: {rule: count})
CASES = [
    ("no edit", lambda cfg: None, {}),
    ("keys reordered", None, {}),  # the edit is reorder(), applied to the whole file
    ("gsm8k eval.batch_size", setting("benchmarks.gsm8k.eval.batch_size", 16), {}),
    ("mmlu eval.batch_size", setting("benchmarks.mmlu.eval.batch_size", 8), {}),
    ("checkpoint interval", setting("runs.sft_stress.checkpoint.every", 25), {}),
    ("checkpoints kept", setting("runs.opd.checkpoint.keep", 3), {}),
    ("log interval", setting("runs.rl.log_every", 5), {}),
    ("train memory", setting("resources.train.mem_mb", 6000), {}),
    ("evaluation runtime", setting("resources.evaluate.runtime", 40), {}),
    ("a run's own resources", setting("runs.sft_mild.resources", {"mem_mb": 5000}), {}),
    ("tracking on", setting("tracking", ["tensorboard"]), {}),
    ("an accelerate config", setting("runs.sft_mild.resources", {"accelerate_config": "profiles/accelerate/fsdp.yaml"}),
     {}),
    ("gsm8k generation length", setting("benchmarks.gsm8k.eval.max_gen_toks", 32),
     {"evaluate": EVALUATED, "report": 1, "trajectory": 1}),
    ("mmlu shots", setting("benchmarks.mmlu.eval.num_fewshot", 1), {"evaluate": EVALUATED, "report": 1, "trajectory": 1}),
    ("evaluation dtype", setting("evaluation.dtype", "auto"),
     {"evaluate": EVALUATED * len(BENCHES), "report": 1, "trajectory": 1}),
    ("a verdict threshold", setting("claims.thresholds.alpha", 0.01), {"report": 1}),
    ("diagnostics rows", setting("diagnostics.prompts", 16), {"diagnose": MODELS, "report": 1}),
    ("diagnostics batch size", setting("diagnostics.batch_size", 8), {"diagnose": MODELS, "report": 1}),
    ("diagnostics memory", setting("resources.diagnose.mem_mb", 3000), {}),
    ("state_nll interval", setting("diagnostics.state_nll.every", 2), {}),
    ("state_nll off", setting("diagnostics.state_nll.enabled", False), {}),
    ("a claim role", setting("claims.roles.mild", "sft_stress"), {"report": 1}),
    ("a claim's wording", "claims_edit", {"report": 1}),
    ("mild SFT learning rate", setting("runs.sft_mild.optim.lr", 2.0e-3), run_and_evals("sft_mild")),
    ("stress SFT epochs", setting("runs.sft_stress.optim.epochs", 7), run_and_evals("sft_stress", "opd")),
    ("models along training", setting("runs.sft_stress.trajectory", [25, 50]),
     {"sft_stress": 1, "opd": 1, "evaluate": (2 + 2) * len(BENCHES), "diagnose": 2, "report": 1, "trajectory": 1}),
    ("OPD direction", setting("runs.opd.signal.direction", "forward"), run_and_evals("opd")),
    ("RL clip range", setting("runs.rl.signal.clip_eps", 0.3), run_and_evals("rl")),
    ("RL completion length", setting("runs.rl.states.max_new_tokens", 40), run_and_evals("rl")),
    ("toy pretraining steps", setting("base_model.pretrain.steps", 500), EVERYTHING_TRAINED),
    ("gsm8k test rows", setting("benchmarks.gsm8k.rows.test", 50), {"data_gsm8k": 1, **EVERYTHING_TRAINED}),
    ("a second seed", setting("seeds", [0, 1]), {**{r: 1 for r in RUNS}, "evaluate": (len(RUNS) + ALONG) * len(BENCHES),
                                                  "diagnose": len(RUNS), "report": 1, "trajectory": 1}),
]  # fmt: skip


@pytest.mark.parametrize("edit,expected", [(e, x) for _, e, x in CASES], ids=[c for c, _, _ in CASES])
def test_an_edit_plans_exactly_what_it_affects(toy_run, tmp_path, edit, expected):
    work, _ = toy_run
    cfg = copy.deepcopy(TOY)
    if edit is None:
        cfg = reorder(cfg)
    elif edit == "claims_edit":
        claims_edit(tmp_path)(cfg)
    else:
        edit(cfg)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = snakemake(work, "-n", "--configfile", str(path))
    planned = {} if "Nothing to be done" in out.stdout + out.stderr else job_counts(out.stdout)
    planned.pop("all", None)
    assert planned == expected, out.stdout[-3000:]
