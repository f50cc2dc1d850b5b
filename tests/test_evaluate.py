"""statepost.evaluate: local lm-eval tasks over our data files, scored with a tiny random Qwen3 on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from _train_toy import build_model

from statepost import benchmarks
from statepost import evaluate as ev
from statepost.io import DataError

REPO = Path(__file__).resolve().parent.parent
SHOTS = {"gsm8k": 2, "mmlu": 2, "truthfulqa_mc2": 0}
LIMIT = {"gsm8k": 2, "mmlu": 2, "truthfulqa_mc2": None}
EXPECTED_N = {"gsm8k": 2, "mmlu": 4, "truthfulqa_mc2": 3}  # mmlu: limit applies per subject (2 subjects)
MAX_GEN_TOKS = 6

SCORE_SCHEMA = {
    "type": "object",
    "required": ["model", "benchmark", "task", "metrics", "primary_metric", "value", "stderr", "n",
                 "num_fewshot", "limit", "lm_eval_version", "model_path", "created"],
    "properties": {
        "model": {"type": "string"},
        "benchmark": {"enum": ["gsm8k", "mmlu", "truthfulqa_mc2"]},
        "task": {"type": "string"},
        "metrics": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ["metric", "value", "stderr"], "additionalProperties": False,
                "properties": {"metric": {"type": "string", "pattern": "^[^,]+,[^,]+$"},
                               "value": {"type": "number"}, "stderr": {"type": ["number", "null"]}},
            },
        },
        "primary_metric": {"type": "string"},
        "value": {"type": "number", "minimum": 0, "maximum": 1},
        "stderr": {"type": ["number", "null"], "minimum": 0},
        "n": {"type": "integer", "minimum": 1},
        "num_fewshot": {"type": "integer", "minimum": 0},
        "limit": {"type": ["integer", "null"]},
        "lm_eval_version": {"type": "string"},
        "model_path": {"type": "string"},
        "created": {"type": "string"},
    },
}


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _gsm8k_row(i: int) -> dict:
    return {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
            "answer": f"He has {i}+{i + 2}={2 * i + 2} apples.\n#### {2 * i + 2}"}


def _mmlu_row(subject: str, i: int) -> dict:
    return {"question": f"Which {subject} statement number {i} is true?", "subject": subject,
            "choices": ["one", "two", "three", "four"], "answer": i % 4}


def _tqa_row(i: int) -> dict:
    return {"question": f"What happens if you eat {i} watermelon seeds?",
            "mc1_targets": {"choices": ["Nothing happens", "Trees grow"], "labels": [1, 0]},
            "mc2_targets": {"choices": ["Nothing happens", "You digest them", "Trees grow"], "labels": [1, 1, 0]}}


def make_data(root: Path) -> Path:
    data = root / "data"
    _write_jsonl(data / "gsm8k" / "train.jsonl", [_gsm8k_row(i) for i in range(4)])
    _write_jsonl(data / "gsm8k" / "test.jsonl", [_gsm8k_row(i) for i in range(10, 13)])
    # virology has dev rows only: it is not scored and gets no task
    _write_jsonl(data / "mmlu" / "dev.jsonl", [_mmlu_row(s, i) for s in ("anatomy", "philosophy", "virology")
                                               for i in range(2)])
    _write_jsonl(data / "mmlu" / "test.jsonl", [_mmlu_row(s, i) for s in ("anatomy", "philosophy")
                                                for i in range(10, 13)])
    _write_jsonl(data / "truthfulqa_mc2" / "validation.jsonl", [_tqa_row(i) for i in range(3)])
    return data


def make_model(root: Path, data: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [line for p in sorted(data.rglob("*.jsonl")) for line in p.read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    out = root / "model"
    build_model(len(fast), layers=1, heads=2, kv_heads=1, max_positions=1024, eos_id=eos).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _cfg(benchmark: str, **kw) -> dict:
    return {"num_fewshot": SHOTS[benchmark], "max_gen_toks": MAX_GEN_TOKS, "limit": LIMIT[benchmark],
            "batch_size": 4, **kw}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalworld")
    data = make_data(root)
    return {"root": root, "data": data, "model": make_model(root, data)}


@pytest.fixture(scope="module")
def scored(world):
    """Evaluate the tiny model once on every benchmark; keep the rendered tasks for inspection."""
    out = {}
    for b in benchmarks.NAMES:
        path = world["root"] / "results" / "toy" / "scores" / "base" / f"{b}.json"
        rec = ev.evaluate(world["model"], b, world["data"], _cfg(b), path, device="auto", dtype="auto",
                          workdir=world["root"] / "work" / b)
        samples = [json.loads(line) for line in path.with_name(f"{b}.samples.jsonl").read_text().splitlines()]
        out[b] = {"record": rec, "path": path, "samples": samples}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", benchmarks.NAMES)
def test_score_file_matches_schema(scored, world, benchmark):
    s = scored[benchmark]
    on_disk = json.loads(s["path"].read_text())
    assert on_disk == json.loads(json.dumps(s["record"]))
    jsonschema.validate(on_disk, SCORE_SCHEMA)
    assert on_disk["model"] == "base"  # derived from results/scores/{model}/
    assert on_disk["benchmark"] == benchmark and on_disk["task"] == benchmarks.get(benchmark).task
    assert on_disk["primary_metric"] == benchmarks.get(benchmark).primary_metric
    metrics = {m["metric"]: m for m in on_disk["metrics"]}
    assert on_disk["value"] == metrics[benchmarks.get(benchmark).primary_metric]["value"]
    for m in metrics.values():
        assert 0.0 <= m["value"] <= 1.0
    if benchmark == "gsm8k":
        assert set(metrics) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    else:
        assert set(metrics) == {"acc,none"}
    assert on_disk["n"] == EXPECTED_N[benchmark] == len(s["samples"])
    assert on_disk["num_fewshot"] == SHOTS[benchmark]
    assert on_disk["limit"] == LIMIT[benchmark]
    assert on_disk["model_path"] == str(world["model"])
    assert (on_disk["device"], on_disk["dtype"]) == ev.resolve_device_dtype()
    for row in s["samples"]:
        assert row["task"].startswith("statepost_") and isinstance(row["doc_id"], int)
        assert set(row["metrics"]) <= set(metrics) | {"acc,none"}
        assert row["prompt"] and row["doc"]["question"] in row["prompt"]


@pytest.mark.slow
def test_gsm8k_prompt_shots_and_generation(scored):
    s = scored["gsm8k"]
    rec = s["record"]
    assert rec["generation_kwargs"]["max_gen_toks"] == MAX_GEN_TOKS
    assert "Question:" in rec["generation_kwargs"]["until"]  # builtin stop sequences kept
    for row in s["samples"]:
        prompt = row["prompt"]
        assert prompt.startswith("Question:")
        assert prompt.endswith(f"Question: {row['doc']['question']}\nAnswer:")
        assert prompt.count("Question:") == SHOTS["gsm8k"] + 1  # shots from the train file, plus the question
        assert "#### " in prompt.split("\n\n")[0]  # a shot shows the full worked answer
        assert isinstance(row["response"], str)
        assert set(row["filtered"]) == {"strict-match", "flexible-extract"}
        assert set(row["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        assert row["target"] == row["doc"]["answer"]
    # every shot is a train row, never the test question itself
    train_qs = {_gsm8k_row(i)["question"] for i in range(4)}
    for row in s["samples"]:
        shot_qs = [b.split("\n")[0].removeprefix("Question: ") for b in row["prompt"].split("\n\n")[:-1]]
        assert len(shot_qs) == SHOTS["gsm8k"] and set(shot_qs) <= train_qs


@pytest.mark.slow
def test_mmlu_is_per_subject_with_size_weighted_group(scored):
    s = scored["mmlu"]
    rec = s["record"]
    assert set(rec["subtasks"]) == {"anatomy", "philosophy"}
    assert set(rec["categories"]) == {"stem", "humanities"}
    total = sum(v["n"] for v in rec["subtasks"].values())
    assert total == rec["n"] == 4
    weighted = sum(v["acc"] * v["n"] for v in rec["subtasks"].values()) / total
    assert rec["value"] == pytest.approx(weighted)
    for row in s["samples"]:
        subject = row["doc"]["subject"]
        assert row["task"] == f"statepost_mmlu_{subject}"
        # the builtin subject description, then shots drawn from the subject's own dev rows (first_n)
        assert row["prompt"].startswith(
            f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"Which {subject} statement number 0 is true?")
        assert row["prompt"].count("\nAnswer:") == SHOTS["mmlu"] + 1
        assert row["choices"] == [" A", " B", " C", " D"] and len(row["response"]) == 4


@pytest.mark.slow
def test_truthfulqa_mc2_uses_mc2_choices(scored):
    for row in scored["truthfulqa_mc2"]["samples"]:
        assert row["choices"] == [" " + c for c in row["doc"]["mc2_targets"]["choices"]]
        assert row["prompt"].endswith(f"Q: {row['doc']['question']}\nA:")
        assert 0.0 <= row["metrics"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_rendered_yaml_includes_builtin_and_overrides_only_data(scored, world):
    builtin = benchmarks.lm_eval_tasks_dir()
    task_keys = {"include", "task", "task_alias", "tag", "dataset_path", "dataset_name", "dataset_kwargs"}
    includes = {}
    for b in benchmarks.NAMES:
        for path in sorted((world["root"] / "work" / b / "tasks").glob("*.yaml")):
            cfg = yaml.safe_load(path.read_text())
            inc = Path(cfg["include"])
            assert inc.is_file() and inc.resolve().is_relative_to(builtin.resolve())
            includes[cfg.get("group") or cfg["task"]] = inc.relative_to(builtin).as_posix()
            if "group" in cfg:  # MMLU groups: the builtin group file, with our members
                assert set(cfg) == {"include", "group", "task"}
                continue
            assert set(cfg) == task_keys
            assert cfg["dataset_path"] == "json" and cfg["dataset_name"] is None and cfg["tag"] == []
            assert set(cfg["dataset_kwargs"]) == {"data_files", "cache_dir"}
            for f in cfg["dataset_kwargs"]["data_files"].values():
                assert Path(f).is_file()
    assert includes == {
        "statepost_gsm8k": "gsm8k/gsm8k.yaml",
        "statepost_truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
        "statepost_mmlu_anatomy": "mmlu/default/mmlu_anatomy.yaml",
        "statepost_mmlu_philosophy": "mmlu/default/mmlu_philosophy.yaml",
        "statepost_mmlu_stem": "mmlu/default/_mmlu_stem.yaml",
        "statepost_mmlu_humanities": "mmlu/default/_mmlu_humanities.yaml",
        "statepost_mmlu": "mmlu/default/_mmlu.yaml",
    }
    gsm = yaml.safe_load((world["root"] / "work" / "gsm8k" / "tasks" / "statepost_gsm8k.yaml").read_text())
    files = gsm["dataset_kwargs"]["data_files"]
    assert Path(files["train"]) == (world["data"] / "gsm8k" / "train.jsonl").resolve()
    assert Path(files["test"]) == (world["data"] / "gsm8k" / "test.jsonl").resolve()
    # per-subject MMLU files hold exactly that subject's rows
    sub = world["root"] / "work" / "mmlu" / "data" / "mmlu" / "anatomy"
    rows = [json.loads(x) for x in (sub / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["subject"] for r in rows} == {"anatomy"}


@pytest.mark.slow
def test_same_inputs_same_outputs(scored, world, tmp_path):
    """Fixed seeds: a second run gives the same few-shot prompts, generations and scores."""
    out = tmp_path / "scores" / "again" / "gsm8k.json"
    rec = ev.evaluate(world["model"], "gsm8k", world["data"], _cfg("gsm8k"), out, model_name="again")
    first = scored["gsm8k"]
    assert rec["model"] == "again" and rec["metrics"] == first["record"]["metrics"]
    again = [json.loads(x) for x in out.with_name("gsm8k.samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["response"]) for r in again] == [(r["prompt"], r["response"]) for r in first["samples"]]


def test_missing_data_file_names_the_path(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl: data file not found"):
        ev.evaluate(world["model"], "gsm8k", data, _cfg("gsm8k"), tmp_path / "s" / "gsm8k.json")
    assert not (tmp_path / "s" / "gsm8k.json").exists()
    with pytest.raises(DataError, match=r"truthfulqa_mc2/validation\.jsonl: data file not found"):
        ev.render_tasks("truthfulqa_mc2", tmp_path / "nowhere", {}, tmp_path / "w")


@pytest.mark.parametrize("bad,pattern", [
    ("{not json\n", r"mmlu/test\.jsonl:1: json: not valid JSON"),
    (json.dumps({**_mmlu_row("anatomy", 0), "answer": 7}) + "\n", r"mmlu/test\.jsonl:1: answer: expected an int 0\.\.3, got 7"),
    (json.dumps(_mmlu_row("anatomy", 0)) + "\n" + json.dumps(_mmlu_row("not_a_subject", 0)) + "\n",
     r"MMLU subject 'not_a_subject' has no lm-eval task"),
    ("", r"mmlu/test\.jsonl:1: test: split is empty \(no rows\)"),
])
def test_malformed_data_gives_clear_error(world, tmp_path, bad, pattern):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / "mmlu" / "test.jsonl").write_text(bad)
    with pytest.raises(DataError, match=pattern):
        ev.render_tasks("mmlu", data, _cfg("mmlu"), tmp_path / "w")


def test_too_few_mmlu_dev_rows_for_the_shots(world, tmp_path):
    with pytest.raises(DataError, match=r"'anatomy' has 2 dev rows, fewer than num_fewshot=5"):
        ev.render_tasks("mmlu", world["data"], {"num_fewshot": 5}, tmp_path / "w")


def test_broken_template_is_reported_as_not_registered(world, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(benchmarks.TASKS_DIR, templates)
    t = templates / "gsm8k.yaml.template"
    t.write_text(t.read_text().replace("task_alias: gsm8k", "task_alias: [gsm8k"))  # unclosed flow sequence
    spec = ev.render_tasks("gsm8k", world["data"], _cfg("gsm8k"), tmp_path / "w", template_dir=templates)
    with pytest.raises(ev.TaskRegistrationError, match=r"not registered(.|\n)*statepost_gsm8k: .*statepost_gsm8k\.yaml"):
        ev.task_manager(spec)
    # the shipped templates all register
    for b in benchmarks.NAMES:
        ok = ev.render_tasks(b, world["data"], _cfg(b), tmp_path / f"ok_{b}")
        assert set(ok.expected) <= set(ev.task_manager(ok).all_tasks)


def test_metric_list_converts_na_stderr():
    res = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict-match": 1.0,
           "exact_match_stderr,strict-match": 0.0}
    assert ev.metric_list(res) == [
        {"metric": "acc,none", "value": 0.5, "stderr": None},
        {"metric": "exact_match,strict-match", "value": 1.0, "stderr": 0.0},
    ]


def test_cli_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('cli', {str(REPO / 'scripts' / 'evaluate.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "a = m.parse_args(['--model-dir', 'm', '--benchmark', 'mmlu', '--data-dir', 'd', '--eval-json', '{}',"
        " '--out', 'o.json'])\n"
        "assert a.device == 'auto' and a.dtype == 'auto'\n"
        "heavy = [x for x in ('torch', 'lm_eval', 'transformers') if x in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--help"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert "--eval-json" in out.stdout and "--model-name" in out.stdout


@pytest.mark.slow
def test_cli_writes_score_and_reports_timing(scored, world, tmp_path, capsys):
    cli = _load_cli()
    out = tmp_path / "scores" / "base" / "truthfulqa_mc2.json"
    rc = cli.main(["--model-dir", str(world["model"]), "--benchmark", "truthfulqa_mc2", "--data-dir",
                   str(world["data"]), "--eval-json", json.dumps(_cfg("truthfulqa_mc2")), "--out", str(out),
                   "--device", "cpu", "--dtype", "float32"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "timing: imports" in printed and "evaluation" in printed
    rec = json.loads(out.read_text())
    assert rec["value"] == pytest.approx(scored["truthfulqa_mc2"]["record"]["value"])
    assert rec["n"] == 3 and out.with_name("truthfulqa_mc2.samples.jsonl").is_file()


def _load_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("statepost_cli_evaluate", REPO / "scripts" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_generation_is_cut_at_a_special_stop_token_inside_a_batch(tmp_path):
    """lm-eval's hf model runs a batch until every row has met a stop string; a row that wrote "<|im_end|>" (a
    special token) early is scored up to it, not with what it wrote after it while the batch ran on."""
    import torch
    from lm_eval.api.instance import Instance
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from statepost import gsm8k
    from statepost.backends import make_lm

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["Question: 3 + 4 = 7. The answer is 7.\n#### 7"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_end|>"])
    build_model(len(fast), layers=1, heads=2, kv_heads=1, max_positions=256,
                eos_id=fast.eos_token_id).save_pretrained(tmp_path)
    fast.save_pretrained(tmp_path)
    lm = make_lm("hf", tmp_path, "float32", "cpu", 2)

    def ids(text):
        return fast(text, add_special_tokens=False)["input_ids"]

    rows = [ids(" 7.") + ids("<|im_end|>") + ids(" #### 9"), ids(" 3 + 4 = 7.\n#### 7")]
    width = max(map(len, rows))
    rows = [r + [fast.eos_token_id] * (width - len(r)) for r in rows]  # generate pads finished rows with EOS

    def generate(context, attention_mask, stop, max_length, **kwargs):  # the model's tokens, fixed
        assert "<|im_end|>" in stop
        return torch.cat([context, torch.tensor(rows)], dim=1)

    lm._model_generate = generate
    until = {"until": list(gsm8k.task_stop_sequences()), "max_gen_toks": 16, "do_sample": False}
    requests = [Instance("generate_until", {}, ("Question: 3 + 4?\nAnswer:", until), i) for i in range(2)]
    assert lm.generate_until(requests) == [" 7.", " 3 + 4 = 7.\n#### 7"]
