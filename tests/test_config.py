"""Config validation: defaults, cross-key checks, and an error naming the key path for every mistake."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from statepost import config as cfglib
from statepost.io import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TOY = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
PAPER = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def toy():
    return copy.deepcopy(TOY)


def test_both_configs_validate_and_get_defaults():
    for raw in (toy(), copy.deepcopy(PAPER)):
        cfg = cfglib.validate(raw)
        assert cfg["seeds"] == [0]
        assert cfg["runs"]["opd"]["signal"]["direction"] == "reverse"
        assert cfg["runs"]["rl"]["signal"]["clip_eps"] == 0.2
        assert cfg["runs"]["sft_mild"]["checkpoint"]["keep"] == 2
        assert cfg["claims"]["thresholds"]["little_forgetting"] == 0.02


def test_hub_base_model_gets_no_toy_defaults():
    cfg = cfglib.validate(copy.deepcopy(PAPER))
    assert set(cfg["base_model"]) == {"source", "repo", "revision"}
    assert "rows" not in cfg["benchmarks"]["gsm8k"] and "seed" not in cfg["benchmarks"]["gsm8k"]


def test_paper_fewshot_defaults():
    raw = copy.deepcopy(PAPER)
    for bench in raw["benchmarks"].values():
        bench["eval"].pop("num_fewshot")
    cfg = cfglib.validate(raw)
    assert {b: v["eval"]["num_fewshot"] for b, v in cfg["benchmarks"].items()} == {
        "gsm8k": 5,
        "truthfulqa_mc2": 0,
        "mmlu": 5,
    }


def test_run_order_puts_teacher_first_and_model_names():
    cfg = cfglib.validate(toy())
    order = cfglib.run_order(cfg)
    assert order.index("sft_stress") < order.index("opd")
    cfg["seeds"] = [0, 1]
    names = cfglib.model_names(cfg)
    assert names[0] == "base" and "opd/seed1" in names and len(names) == 1 + 4 * 2


def test_resolve_run_is_complete_and_hash_is_stable():
    cfg = cfglib.validate(toy())
    run = cfglib.resolve_run(cfg, "opd", 3)
    assert run["name"] == "opd" and run["seed"] == 3 and "resources" not in run
    # what changes no weight is not part of the run's identity: it reaches the job as resources
    assert not {"checkpoint", "log_every"} & set(run)
    assert cfglib.run_runtime(cfg, "opd") == {"checkpoint_every": 10, "checkpoint_keep": 2, "log_every": 1}
    assert run["states"]["top_p"] == 1.0 and run["optim"]["max_steps"] == 40
    assert cfglib.config_hash(run) == cfglib.config_hash(cfglib.resolve_run(cfg, "opd", 3))
    assert cfglib.config_hash(run) != cfglib.config_hash(cfglib.resolve_run(cfg, "opd", 4))


def _set(cfg, path, value):
    *head, last = path
    node = cfg
    for key in head:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()

# (case id, edits [(key path, value)], text the error must contain)
BAD = [
    ("unknown top key", [(("epochs",), 3)], "config key epochs: Additional properties"),
    ("unknown run key", [(("runs", "sft_mild", "lr"), 1e-3)], "runs.sft_mild"),
    ("unknown optim key", [(("runs", "sft_mild", "optim", "learning_rate"), 1e-3)], "runs.sft_mild.optim"),
    ("lr is a string", [(("runs", "sft_mild", "optim", "lr"), "fast")], "runs.sft_mild.optim.lr"),
    ("negative lr", [(("runs", "sft_mild", "optim", "lr"), -1.0)], "runs.sft_mild.optim.lr"),
    ("zero batch", [(("runs", "rl", "optim", "batch_size"), 0)], "runs.rl.optim.batch_size"),
    ("bad schedule", [(("runs", "rl", "optim", "schedule"), "exp")], "runs.rl.optim.schedule"),
    ("seed not integer", [(("seeds",), [0, "one"])], "seeds.1"),
    ("seeds empty", [(("seeds",), [])], "seeds"),
    ("negative seed", [(("seeds",), [-1])], "seeds.0"),
    ("init names no model", [(("runs", "sft_mild", "init"), "sft_gentle")], "runs.sft_mild.init"),
    ("teacher names no model", [(("runs", "opd", "signal", "teacher"), "oracle")], "runs.opd.signal.teacher"),
    ("teacher missing", [(("runs", "opd", "signal", "teacher"), DELETE)], "runs.opd.signal.teacher"),
    ("teacher on nll", [(("runs", "sft_mild", "signal", "teacher"), "base")], "runs.sft_mild.signal.teacher"),
    ("unknown signal", [(("runs", "sft_mild", "signal", "type"), "dpo")], "runs.sft_mild.signal.type"),
    ("unknown state source", [(("runs", "sft_mild", "states", "source"), "replay")], "runs.sft_mild.states.source"),
    ("learner without temperature", [(("runs", "opd", "states", "temperature"), DELETE)], "runs.opd.states.temperature"),
    ("learner without max_new_tokens", [(("runs", "rl", "states", "max_new_tokens"), DELETE)], "runs.rl.states.max_new_tokens"),
    ("learner without max_steps", [(("runs", "rl", "optim", "max_steps"), DELETE)], "runs.rl.optim.max_steps"),
    ("reward on dataset states", [(("runs", "sft_mild", "signal"), {"type": "reward"})], "runs.sft_mild.signal"),
    ("filter on dataset states", [(("runs", "sft_mild", "states", "filter"), {"reward": "gsm8k"})], "runs.sft_mild.states.filter"),
    ("states data not a benchmark", [(("runs", "sft_mild", "states", "data"), "math")], "runs.sft_mild.states.data"),
    ("states split missing", [(("runs", "sft_mild", "states", "split"), "validation")], "runs.sft_mild.states.split"),
    ("reserved run name", [(("runs", "base"), {"init": "base", "states": {"source": "dataset"}, "signal": {"type": "nll"}})], "runs.base"),
    ("bad run name", [(("runs", "SFT-1"), {"init": "base", "states": {"source": "dataset"}, "signal": {"type": "nll"}})], "runs"),
    ("cycle", [(("runs", "sft_mild", "init"), "sft_stress"), (("runs", "sft_stress", "init"), "sft_mild")], "cycle"),
    ("unknown benchmark", [(("benchmarks", "hellaswag"), {"source": "toy", "splits": ["test"]})], "benchmarks"),
    ("benchmark without eval split", [(("benchmarks", "gsm8k", "splits"), ["train"])], "benchmarks.gsm8k.splits"),
    ("fewshot split missing", [(("benchmarks", "mmlu", "splits"), ["test"]), (("benchmarks", "mmlu", "eval", "num_fewshot"), 2)],
     "benchmarks.mmlu.splits"),
    ("hub benchmark without repo", [(("benchmarks", "gsm8k"), {"source": "hub", "config_name": "main", "splits": ["train", "test"]})], "benchmarks.gsm8k"),
    ("unknown base source", [(("base_model", "source"), "s3")], "base_model.source"),
    ("toy key on hub model", [(("base_model",), {"source": "hub", "repo": "Qwen/Qwen3-0.6B-Base", "hidden_size": 64})], "base_model"),
    ("limit zero", [(("benchmarks", "gsm8k", "eval", "limit"), 0)], "benchmarks.gsm8k.eval.limit"),
    ("bad kl direction", [(("runs", "opd", "signal", "direction"), "sideways")], "runs.opd.signal.direction"),
    ("negative gpu", [(("resources", "train", "gpu"), -1)], "resources.train.gpu"),
    ("top_p above one", [(("runs", "opd", "states", "top_p"), 1.5)], "runs.opd.states.top_p"),
    # on-policy assumptions: settings under which a signal's estimate is degenerate or biased
    ("one sample per prompt for a group-normalised reward", [(("runs", "rl", "states", "samples_per_prompt"), 1)],
     "runs.rl.states.samples_per_prompt: advantages are rewards minus the mean"),
    ("tempered samples for the policy gradient", [(("runs", "rl", "states", "temperature"), 0.7)],
     "runs.rl.states.temperature: the reward signal's policy gradient assumes samples of the policy itself"),
    ("nucleus samples for the policy gradient", [(("runs", "rl", "states", "top_p"), 0.9)],
     "runs.rl.states.top_p"),
    ("tempered samples for the sampled KL estimator",
     [(("runs", "opd", "signal", "estimator"), "sampled"), (("runs", "opd", "states", "temperature"), 0.8)],
     "runs.opd.states.temperature: the sampled teacher-KL estimator"),
    ("stale samples for the sampled KL estimator",
     [(("runs", "opd", "signal", "estimator"), "sampled"), (("runs", "opd", "states", "refresh_every"), 2)],
     "runs.opd.states.refresh_every"),
    ("rollout reuse counts disagree",
     [(("runs", "rl", "signal", "updates_per_batch"), 2), (("runs", "rl", "states", "refresh_every"), 3)],
     "runs.rl.signal.updates_per_batch"),
]


@pytest.mark.parametrize("edits,expect", [(e, x) for _, e, x in BAD], ids=[i for i, _, _ in BAD])
def test_malformed_config_names_the_key(edits, expect):
    cfg = toy()
    for path, value in edits:
        _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        cfglib.validate(cfg)
    assert expect in str(err.value), str(err.value)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        cfglib.load(bad)


def _snakemake(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_snakemake_rejects_bad_config_before_any_job(tmp_path):
    cfg = toy()
    cfg["runs"]["opd"]["signal"]["teacher"] = "oracle"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = _snakemake("-n", "--configfile", str(path))
    assert out.returncode != 0
    assert "runs.opd.signal.teacher" in out.stdout + out.stderr


def test_toy_configfile_replaces_paper_config():
    """--configfile config/toy.yaml must not inherit keys that only the paper config has."""
    probe = _snakemake(
        "-n",
        "--configfile",
        "config/toy.yaml",
        "-s",
        str(ROOT / "tests" / "data" / "print_config.smk"),
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen = yaml.safe_load(probe.stdout.split("CONFIG>>")[1].split("<<CONFIG")[0])
    assert seen["base_model"]["source"] == "toy"
    assert "repo" not in seen["base_model"]
    assert all(b["source"] == "toy" for b in seen["benchmarks"].values())


def test_benchmark_facts_match_the_schema():
    """workflow/tasks/benchmarks.yaml is the one list of benchmarks; the schema accepts exactly those."""
    from statepost import benchmarks

    schema = cfglib.load_schema()
    assert set(schema["properties"]["benchmarks"]["propertyNames"]["enum"]) == set(benchmarks.NAMES)
    assert benchmarks.TARGET == "gsm8k" and set(benchmarks.RETENTION) == {"mmlu", "truthfulqa_mc2"}
    for b in benchmarks.BENCHMARKS.values():
        assert b.eval_split in b.splits and set(b.toy_rows) == set(b.splits), b


def test_a_run_carries_only_its_own_signal_and_state_keys():
    nll = cfglib.with_defaults({"init": "base", "states": {"source": "dataset"}, "signal": {"type": "nll"}}, "run")
    assert nll["signal"] == {"type": "nll"}
    assert "temperature" not in nll["states"] and nll["states"]["group_by_length"] is True
    rl = cfglib.with_defaults(
        {"init": "base", "signal": {"type": "reward"},
         "states": {"source": "learner", "temperature": 1.0, "max_new_tokens": 8, "samples_per_prompt": 2}},
        "run",
    )  # fmt: skip
    assert rl["signal"]["clip_eps"] == 0.2 and "direction" not in rl["signal"] and rl["states"]["top_p"] == 1.0
    with pytest.raises(ConfigError, match=r"run\.signal\.clip_eps"):
        cfglib.with_defaults({"init": "base", "states": {"source": "dataset"}, "signal": {"type": "nll", "clip_eps": 0.1}}, "run")


def test_bare_names_are_short_for_states_and_signal():
    cfg = toy()
    cfg["runs"]["sft_mild"].update(states="dataset", signal="nll")
    run = cfglib.validate(cfg)["runs"]["sft_mild"]
    assert run["states"] == {"source": "dataset", "data": "gsm8k", "split": "train", "max_rows": None,
                             "group_by_length": True, "length_bucket_steps": 64}
    assert run["signal"] == {"type": "nll"}
    short = cfglib.with_defaults({"init": "base", "states": "dataset", "signal": "nll"}, "run")
    assert short["states"] == run["states"] and short["signal"] == run["signal"]
    cfg = toy()
    cfg["runs"]["opd"]["signal"] = "teacher_kl"  # a bare teacher_kl lacks its teacher: named
    with pytest.raises(ConfigError, match=r"runs\.opd\.signal\.teacher: 'teacher' is a required property"):
        cfglib.validate(cfg)
