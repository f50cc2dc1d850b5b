"""Config validation: defaults, cross-key checks, and an error naming the key path for every mistake."""

import copy
import re
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
    for raw, seeds in ((toy(), [0]), (copy.deepcopy(PAPER), [0, 1, 2])):  # the paper: a verdict needs 3 seeds
        cfg = cfglib.validate(raw)
        assert cfg["seeds"] == seeds
        assert cfg["runs"]["opd"]["signal"]["direction"] == "reverse"
        assert "beta" not in cfg["runs"]["opd"]["signal"]  # jsd's weight: only a jsd run carries it
        assert cfg["runs"]["rl"]["signal"]["clip_eps"] == 0.2
        assert cfg["runs"]["sft_mild"]["checkpoint"]["keep"] == 2
        assert cfg["claims"]["thresholds"]["little_forgetting"] == 0.02


def test_jsd_gets_its_beta_default():
    cfg = toy()
    cfg["runs"]["opd"]["signal"]["direction"] = "jsd"
    assert cfglib.validate(cfg)["runs"]["opd"]["signal"]["beta"] == 0.5


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
    ("experiment is a path", [(("experiment",), "../toy")], "config key experiment"),
    ("experiment has a space", [(("experiment",), "my toy")], "config key experiment"),
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
    ("nll teacher names no model", [(("runs", "sft_mild", "signal", "teacher"), "oracle")], "runs.sft_mild.signal.teacher"),
    ("unknown signal", [(("runs", "sft_mild", "signal", "type"), "dpo")], "runs.sft_mild.signal.type"),
    ("beta without jsd", [(("runs", "opd", "signal", "beta"), 0.3)], "runs.opd.signal.beta"),
    ("accelerate config missing", [(("runs", "opd", "resources"), {"accelerate_config": "profiles/accelerate/fsdp.yml"})],
     "runs.opd.resources.accelerate_config"),
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
    ("a second rollout-reuse key (states.refresh_every is the one)",
     [(("runs", "rl", "signal", "updates_per_batch"), 2)], "runs.rl.signal.updates_per_batch"),
    # -- cross-key checks (statepost/checks.py) and number hints ------------------------------------------------
    ("nan learning rate", [(("runs", "sft_mild", "optim", "lr"), float("nan"))], "runs.sft_mild.optim.lr: nan is not a finite number"),
    ("infinite temperature", [(("runs", "opd", "states", "temperature"), float("inf"))], "runs.opd.states.temperature: inf is not a finite"),
    ("infinite kl coefficient", [(("runs", "rl", "signal", "kl_coef"), float("inf"))], "runs.rl.signal.kl_coef: inf"),
    ("learning rate of 1", [(("runs", "rl", "optim", "lr"), 1.0)], "runs.rl.optim.lr: 1.0 is not a learning rate"),
    ("pretraining learning rate of 5", [(("base_model", "pretrain", "lr"), 5.0)], "base_model.pretrain.lr"),
    ("1e-4 read as text by YAML", [(("runs", "sft_mild", "optim", "lr"), "1e-4")],
     "runs.sft_mild.optim.lr: '1e-4' is not of type 'number' (YAML reads 1e-4 as text"),
    ("heads do not divide hidden", [(("base_model", "num_heads"), 3)], "base_model.num_heads: 3 heads do not divide hidden_size 128"),
    ("kv heads do not divide heads", [(("base_model", "num_kv_heads"), 3)], "base_model.num_kv_heads: 3 key/value heads"),
    ("more kv heads than heads", [(("base_model", "num_kv_heads"), 8)], "base_model.num_kv_heads"),
    ("odd head size", [(("base_model", "hidden_size"), 120), (("base_model", "num_heads"), 8),
                       (("base_model", "num_kv_heads"), 4)], "base_model.num_heads: head size hidden_size / num_heads = 15 is odd"),
    ("sequences beyond the toy's positions", [(("base_model", "max_position_embeddings"), 128)], "runs.sft_mild.optim.max_length: 256 tokens"),
    ("pretraining beyond the toy's positions", [(("base_model", "max_position_embeddings"), 100)], "base_model.pretrain.max_length"),
    ("generation fills the toy's positions", [(("benchmarks", "gsm8k", "eval", "max_gen_toks"), 1024)],
     "benchmarks.gsm8k.eval.max_gen_toks: 1024 generated tokens leave no room"),
    ("batch beyond the prompt pool", [(("runs", "rl", "optim", "batch_size"), 64)],
     "runs.rl.optim.batch_size: one optimiser step takes batch_size 64 x grad_accum 1 x 1 process(es) = 64 prompts, but the run has 32"),
    ("accumulation beyond the rows", [(("runs", "sft_mild", "optim", "grad_accum"), 30)], "runs.sft_mild.optim.batch_size: one optimiser step"),
    ("GPUs multiply the step beyond the pool", [(("runs", "rl", "resources"), {"gpu": 8})], "runs.rl.optim.batch_size: one optimiser step takes batch_size 8 x grad_accum 1 x 8"),
    ("toy split too small for one step", [(("benchmarks", "gsm8k", "rows", "train"), 10)], "runs.sft_mild.optim.batch_size"),
    ("max_rows beyond the split", [(("runs", "rl", "states", "max_rows"), 500)], "runs.rl.states.max_rows: 500, but benchmarks.gsm8k.rows.train is 400"),
    ("completions fill max_length", [(("runs", "opd", "states", "max_new_tokens"), 252)], "runs.opd.states.max_new_tokens: 252 new tokens"),
    ("training on the scored split", [(("runs", "sft_mild", "states", "split"), "test")],
     "runs.sft_mild.states.split: 'test' is the split every model is scored on"),
    ("dataset states from mmlu rows", [(("runs", "sft_mild", "states", "data"), "mmlu"), (("runs", "sft_mild", "states", "split"), "dev")],
     "runs.sft_mild.states.data: 'mmlu' is not one of ['gsm8k']"),
    ("more shots than dev rows", [(("benchmarks", "mmlu", "eval", "num_fewshot"), 6)],
     "benchmarks.mmlu.eval.num_fewshot: 6 examples, but the 'dev' split has 5 rows per subject"),
    ("gsm8k shots beyond its train rows", [(("benchmarks", "gsm8k", "rows", "train"), 20), (("benchmarks", "gsm8k", "eval", "num_fewshot"), 25),
                                           (("runs", "rl", "states", "max_rows"), 16)], "benchmarks.gsm8k.eval.num_fewshot: 25 examples"),
    ("shots on a benchmark without a few-shot split", [(("benchmarks", "truthfulqa_mc2", "eval", "num_fewshot"), 3)],
     "benchmarks.truthfulqa_mc2.eval.num_fewshot: truthfulqa_mc2 has no few-shot split"),
    ("rows for a split that is not prepared", [(("benchmarks", "mmlu", "rows", "auxiliary_train"), 5)], "benchmarks.mmlu.rows.auxiliary_train"),
    ("probe split not prepared", [(("benchmarks", "mmlu", "probe_split"), "auxiliary_train")],
     "benchmarks.mmlu.probe_split: 'auxiliary_train' is not among the splits"),
    ("probe split is the scored split", [(("benchmarks", "truthfulqa_mc2", "probe_split"), "validation")],
     "benchmarks.truthfulqa_mc2.probe_split: 'validation' is the split truthfulqa_mc2 is scored on"),
    ("probe split gives the shots", [(("benchmarks", "mmlu", "probe_split"), "dev"), (("benchmarks", "mmlu", "eval", "num_fewshot"), 2)],
     "benchmarks.mmlu.probe_split: 'dev' gives mmlu's 2 few-shot examples"),
    ("probe split on the target", [(("benchmarks", "gsm8k", "probe_split"), "train")],
     "benchmarks.gsm8k.probe_split: gsm8k is the target benchmark"),
    ("trajectory step at the last step", [(("runs", "opd", "trajectory"), [10, 40])],
     "runs.opd.trajectory: steps [40] are not below optim.max_steps 40"),
    ("trajectory step not a positive integer", [(("runs", "opd", "trajectory"), [0])], "runs.opd.trajectory.0"),
    ("probe split is not a string", [(("benchmarks", "mmlu", "probe_split"), 3)], "benchmarks.mmlu.probe_split"),
    ("the teacher is the init", [(("runs", "opd", "signal", "teacher"), "base")], "runs.opd.signal.teacher: 'base' is also the run's init"),
    ("sampled estimator of a forward KL", [(("runs", "opd", "signal", "estimator"), "sampled"), (("runs", "opd", "signal", "direction"), "forward")],
     "runs.opd.signal.estimator: the sampled estimator estimates the reverse KL only"),
    ("sampled estimator on dataset states",
     [(("runs", "kd"), {"init": "base", "states": "dataset", "signal": {"type": "teacher_kl", "teacher": "sft_stress", "estimator": "sampled"}})],
     "runs.kd.signal.estimator: the sampled estimator needs the policy's own samples"),
    ("a filter that keeps no sample", [(("runs", "opd", "states", "filter"), {"reward": "gsm8k", "min": 1.5})], "runs.opd.states.filter.min: the gsm8k reward"),
    ("a filter that keeps every sample", [(("runs", "opd", "states", "filter"), {"reward": "gsm8k", "min": 0.0})], "keeps every sample"),
    ("a strict reward the toy base never earns", [(("base_model", "pretrain", "answer_line_frac"), 0.0), (("base_model", "pretrain", "answer_line_names"), 0)], "runs.rl.signal.answer_mode: 'strict' rewards only"),
    ("claim role names no run", [(("claims",), {"roles": {"mild": "sft_mlid"}})], "claims.roles.mild: 'sft_mlid' names no run"),
    ("opd role on an SFT run", [(("claims",), {"roles": {"opd": "sft_stress"}})], "claims.roles.opd: 'sft_stress' is not on-policy distillation"),
    ("contradictory forgetting thresholds", [(("claims",), {"thresholds": {"little_forgetting": 0.05, "substantial_loss": 0.02}})],
     "claims.thresholds.substantial_loss: 0.02 is below little_forgetting"),
    ("run named like a data rule", [(("runs", "data_mmlu"), {"init": "base", "states": "dataset", "signal": "nll"})],
     "runs.data_mmlu: 'data_mmlu' is the name of the rule that prepares benchmark mmlu"),
    ("cuda evaluation without a GPU", [(("evaluation", "device"), "cuda")], "evaluation.device: cuda, but resources.evaluate.gpu is 0"),
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


# -- config files: the one strict reader (statepost/configfile.py) -------------------------------------------
TOY_TEXT = (ROOT / "config" / "toy.yaml").read_text()


def _toy_text(old, new):
    assert old in TOY_TEXT, old
    return TOY_TEXT.replace(old, new, 1).encode()


def _line_of(text: str) -> int:
    return TOY_TEXT.splitlines().index(text) + 1


# (case id, file bytes, text the error must contain after "{file}:")
BAD_FILES = [
    ("unclosed flow list", _toy_text("seeds: [0]", "seeds: [0"), "7:11: not valid YAML: expected ',' or ']'"),
    ("tab indentation", _toy_text("  seed: 0\n", "\tseed: 0\n"), f"{_line_of('  seed: 0')}:1: not valid YAML: found character '\\t'"),
    ("duplicate top-level key", _toy_text("seeds: [0]\n", "seeds: [0]\nseeds: [1]\n"), "6:1: config key seeds: duplicate key (first at line 5)"),
    ("duplicate nested key", _toy_text("  num_layers: 2\n", "  num_layers: 2\n  num_layers: 4\n"),
     f"{_line_of('  num_layers: 2') + 1}:3: config key base_model.num_layers: duplicate key"),
    ("duplicate key in a flow mapping", _toy_text("signal: {type: nll}", "signal: {type: nll, type: teacher_kl}"),
     "config key runs.sft_mild.signal.type: duplicate key"),
    ("not UTF-8", TOY_TEXT.encode().replace(b"experiment: toy", b"experiment: caf\xe9", 1), "4:16: not UTF-8 (byte 0xe9)"),
    ("two documents", TOY_TEXT.encode() + b"---\nseeds: [1]\n", "not valid YAML: but found another document"),
    ("a python tag", _toy_text("seeds: [0]", "seeds: !!python/tuple [0]"), "5:8: not valid YAML: could not determine a constructor"),
    ("a list at the top level", b"- experiment: toy\n", "1:1: expected a mapping of config keys at the top level"),
    ("an empty file", b"", "1:1: expected a mapping"),
]


@pytest.mark.parametrize("text,expect", [(t, x) for _, t, x in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_malformed_config_file_names_file_line_and_column(tmp_path, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as err:
        cfglib.load(path)
    assert str(err.value).startswith(f"{path}:") and expect in str(err.value), str(err.value)


def test_strict_reader_reads_what_yaml_reads():
    for name in ("toy.yaml", "config.yaml"):
        path = ROOT / "config" / name
        assert cfglib.read_config_file(path) == yaml.safe_load(path.read_text())


def test_config_check_command(tmp_path):
    """python -m statepost.config checks config files without Snakemake, merged in order as --configfile merges."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(BAD_FILES[0][1])
    out = subprocess.run([sys.executable, "-m", "statepost.config", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and f"{bad}:7:11: not valid YAML" in out.stderr
    more = tmp_path / "more.yaml"
    more.write_text("runs: {rl: {optim: {lr: .nan}}}\n")  # merged over the toy config: one key changed
    out = subprocess.run([sys.executable, "-m", "statepost.config", "config/toy.yaml", str(more)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "runs.rl.optim.lr: nan is not a finite number" in out.stderr, out.stderr
    ok = subprocess.run([sys.executable, "-m", "statepost.config", "config/toy.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def _no_job(out):
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Job stats" not in text and "Building DAG" not in text, text[-3000:]
    return text


def test_snakemake_names_file_line_column_of_the_default_config(tmp_path):
    """config/config.yaml (no --configfile) is read by the strict reader before Snakemake's own."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        (ROOT / "config" / "config.yaml").read_text().replace("seeds: [0, 1, 2]", "seeds: [0, 1, 2]\nseeds: [1]", 1))
    line = (ROOT / "config" / "config.yaml").read_text().splitlines().index("seeds: [0, 1, 2]") + 1
    text = _no_job(_snakemake("-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)))
    assert f"config/config.yaml:{line + 1}:1: config key seeds: duplicate key (first at line {line})" in text
    assert not (tmp_path / "results").exists()


def test_snakemake_names_a_duplicate_key_of_a_configfile(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_bytes(BAD_FILES[3][1])
    text = _no_job(_snakemake("-n", "--configfile", str(path)))
    assert f"{path}:{_line_of('  num_layers: 2') + 1}:3: config key base_model.num_layers: duplicate key" in text


def test_a_configfile_with_a_syntax_error_stops_before_any_job(tmp_path):
    """Snakemake parses a --configfile before the workflow's code runs and reports a syntax error without file or
    line (a limitation of Snakemake); it still stops before any job, and `python -m statepost.config` names the place."""
    path = tmp_path / "syntax.yaml"
    path.write_bytes(BAD_FILES[0][1])
    text = _no_job(_snakemake("-n", "--configfile", str(path)))
    assert "not valid JSON or YAML" in text
    # the documented ways to the place: --verbose shows PyYAML's file, line and column
    verbose = _no_job(_snakemake("-n", "--verbose", "--configfile", str(path)))
    assert re.search(rf'in "{re.escape(str(path))}", line \d+, column \d+', verbose), verbose[-2000:]


def test_min_prompt_tokens_is_a_lower_bound():
    """Every learner prompt is at least MIN_PROMPT_TOKENS tokens under Qwen's pre-tokenizer (the toy copies it):
    BPE merges never cross its pre-token boundaries."""
    from tokenizers import Regex, pre_tokenizers

    from statepost.checks import MIN_PROMPT_TOKENS
    from statepost.gsm8k import format_prompt
    from statepost.models import QWEN_SPLIT

    split = pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False)
    counts = {q: len(split.pre_tokenize_str(format_prompt(q))) for q in ("x", "?", "7", "What is 2+2?", "A  b\nc", " ")}
    assert min(counts.values()) == MIN_PROMPT_TOKENS, counts  # "?" joins the newline: Question, :, " ?\n", Answer, :
