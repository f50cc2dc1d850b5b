"""statepost.data: validators, toy generators, the toy corpus, prepare() and scripts/prepare_data.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statepost import benchmarks, data, toyworld
from statepost.io import DataError, sha256_file

ROOT = Path(__file__).resolve().parent.parent

GOOD = {
    "gsm8k": {"question": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
              "answer": "3 + 4 = 7.\n#### 7"},
    "mmlu": {"question": "What is 2 + 2?", "subject": "elementary_mathematics",
             "choices": ["3", "4", "5", "6"], "answer": 1},
    "truthfulqa_mc2": {"question": "Is the Earth flat?",
                       "mc1_targets": {"choices": ["No, it is round.", "Yes."], "labels": [1, 0]},
                       "mc2_targets": {"choices": ["No, it is round.", "No.", "Yes."], "labels": [1, 1, 0]}},
}


def _with(benchmark, **changes):
    row = json.loads(json.dumps(GOOD[benchmark]))
    for k, v in changes.items():
        if v is _DROP:
            row.pop(k)
        else:
            row[k] = v
    return json.dumps(row)


_DROP = object()
G, M, T = "gsm8k", "mmlu", "truthfulqa_mc2"
OK = {b: json.dumps(r) for b, r in GOOD.items()}

# (id, benchmark, split, file lines, bad line number, field named in the message)
MALFORMED = [
    ("bad-json", G, "train", [OK[G], '{"question": "x", "answer": '], 2, "json"),
    ("not-an-object", G, "train", [OK[G], OK[G], "[1, 2]"], 3, "row"),
    ("missing-answer", G, "test", [_with(G, answer=_DROP)], 1, "answer"),
    ("missing-question", G, "test", [OK[G], _with(G, question=_DROP)], 2, "question"),
    ("answer-without-hash", G, "train", [_with(G, answer="3 + 4 = 7. The answer is 7.")], 1, "answer"),
    ("answer-hash-not-number", G, "train", [_with(G, answer="3 + 4 = 7.\n#### seven")], 1, "answer"),
    ("answer-hash-not-last", G, "train", [_with(G, answer="#### 7\nso seven")], 1, "answer"),
    ("question-not-string", G, "train", [_with(G, question=7)], 1, "question"),
    ("empty-split", G, "test", [], 1, "test"),
    ("blank-lines-only", G, "test", ["", "  "], 1, "test"),
    ("three-choices", M, "test", [OK[M], _with(M, choices=["1", "2", "3"])], 2, "choices"),
    ("five-choices", M, "dev", [_with(M, choices=["1", "2", "3", "4", "5"])], 1, "choices"),
    ("choices-not-list", M, "test", [_with(M, choices="1 2 3 4")], 1, "choices"),
    ("choice-not-string", M, "test", [_with(M, choices=["1", "2", 3, "4"])], 1, "choices[2]"),
    ("answer-out-of-range", M, "test", [_with(M, answer=4)], 1, "answer"),
    ("answer-letter", M, "test", [_with(M, answer="B")], 1, "answer"),
    ("answer-bool", M, "test", [_with(M, answer=True)], 1, "answer"),
    ("empty-subject", M, "test", [_with(M, subject="")], 1, "subject"),
    ("missing-subject", M, "dev", [OK[M], OK[M], _with(M, subject=_DROP)], 3, "subject"),
    ("labels-choices-mismatch", T, "validation",
     [_with(T, mc2_targets={"choices": ["a", "b", "c"], "labels": [1, 0]})], 1, "mc2_targets.labels"),
    ("no-true-label", T, "validation",
     [_with(T, mc2_targets={"choices": ["a", "b"], "labels": [0, 0]})], 1, "mc2_targets.labels"),
    ("label-not-binary", T, "validation",
     [_with(T, mc2_targets={"choices": ["a", "b"], "labels": [1, 2]})], 1, "mc2_targets.labels[1]"),
    ("label-string", T, "validation",
     [_with(T, mc1_targets={"choices": ["a", "b"], "labels": ["1", 0]})], 1, "mc1_targets.labels[0]"),
    ("mc1-two-correct", T, "validation",
     [_with(T, mc1_targets={"choices": ["a", "b"], "labels": [1, 1]})], 1, "mc1_targets.labels"),
    ("mc1-correct-not-first", T, "validation",
     [_with(T, mc1_targets={"choices": ["a", "b"], "labels": [0, 1]})], 1, "mc1_targets.labels"),
    ("mc2-true-after-false", T, "validation",
     [_with(T, mc2_targets={"choices": ["a", "b", "c"], "labels": [1, 0, 1]})], 1, "mc2_targets.labels"),
    ("targets-not-object", T, "validation", [_with(T, mc1_targets=["a", "b"])], 1, "mc1_targets"),
    ("targets-missing-choices", T, "validation",
     [_with(T, mc2_targets={"labels": [1, 0]})], 1, "mc2_targets.choices"),
    ("missing-mc1", T, "validation", [OK[T], _with(T, mc1_targets=_DROP)], 2, "mc1_targets"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_file_names_path_line_and_field(tmp_path, case):
    _, benchmark, split, lines, lineno, field = case
    path = tmp_path / f"{split}.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError) as exc:
        data.validate_file(benchmark, split, path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:{lineno}: "), msg
    assert f": {field}" in msg, msg


def test_validate_rows_reports_row_number_and_field():
    rows = [GOOD["mmlu"], dict(GOOD["mmlu"], answer=9)]
    with pytest.raises(DataError, match=r"^src\.parquet:2: answer: expected an int 0\.\.3, got 9$"):
        data.validate_rows("mmlu", "test", rows, "src.parquet")
    with pytest.raises(DataError, match=r"^src:1: test: split is empty"):
        data.validate_rows("mmlu", "test", [], "src")


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        data.validate_file("gsm8k", "train", tmp_path / "train.jsonl")


@pytest.mark.parametrize("benchmark", data.BENCHMARKS)
def test_good_file_passes_and_counts_rows(tmp_path, benchmark):
    path = tmp_path / "x.jsonl"
    path.write_text(OK[benchmark] + "\n\n" + OK[benchmark] + "\n")  # a blank line is tolerated
    assert data.validate_file(benchmark, "split", path) == 2


def test_real_gsm8k_style_answers_pass():
    row = {"question": "q", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072"}
    rows = [row, dict(row, answer="It costs -3.5 dollars.\n#### -3.5\n")]
    assert data.validate_rows("gsm8k", "train", rows, "x.jsonl") == 2


# ---------------------------------------------------------------- toy generators
@pytest.mark.parametrize("benchmark", data.BENCHMARKS)
def test_toy_same_seed_same_bytes(tmp_path, benchmark):
    cfg = {"source": "toy", "seed": 3}
    m1 = data.prepare(benchmark, cfg, tmp_path / "a")
    m2 = data.prepare(benchmark, cfg, tmp_path / "b")
    assert m1["outputs"] == m2["outputs"]
    for split in m1["outputs"]:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    m3 = data.prepare(benchmark, {"source": "toy", "seed": 4}, tmp_path / "c")
    assert m3["outputs"] != m1["outputs"]


@pytest.mark.parametrize("benchmark", data.BENCHMARKS)
def test_toy_files_valid_with_manifest(tmp_path, benchmark):
    out = tmp_path / benchmark
    m = data.prepare(benchmark, {"source": "toy", "seed": 0}, out)
    assert m["source"] == "toy" and m["benchmark"] == benchmark and m["seed"] == 0
    assert m["resolved_commit"] is None and m["files"] == {} and m["created"]
    assert set(m["outputs"]) == set(benchmarks.get(benchmark).splits)
    assert json.loads((out / "manifest.json").read_text()) == m
    for split, o in m["outputs"].items():
        path = out / f"{split}.jsonl"
        assert data.validate_file(benchmark, split, path) == o["rows"] > 0
        assert sha256_file(path) == o["sha256"]


def test_toy_sizes_follow_config():
    g = toyworld.generate_toy("gsm8k", {"seed": 0, "rows": {"train": 17, "test": 5}})
    assert {k: len(v) for k, v in g.items()} == {"train": 17, "test": 5}
    m = toyworld.generate_toy("mmlu", {"seed": 0, "rows": {"dev": 5, "test": 7},
                                   "subjects": ["astronomy", "high_school_geography"]})
    assert len(m["dev"]) == 10 and len(m["test"]) == 14
    for split in m:
        for subject in ("astronomy", "high_school_geography"):
            assert sum(r["subject"] == subject for r in m[split]) == len(m[split]) // 2
    t = toyworld.generate_toy("truthfulqa_mc2", {"seed": 0, "rows": {"validation": 9}})
    assert len(t["validation"]) == 9
    with pytest.raises(ValueError, match="no toy generator"):
        toyworld.generate_toy("mmlu", {"subjects": ["virology"]})


def test_toy_gsm8k_rows_are_correct_arithmetic():
    rows = toyworld.generate_toy("gsm8k", {"seed": 1, "rows": {"train": 200, "test": 50}})
    test_q = {r["question"] for r in rows["test"]}
    assert not test_q & {r["question"] for r in rows["train"]}, "a test question leaked into train"
    for r in rows["train"] + rows["test"]:
        *work, final = r["answer"].split("\n")
        assert 1 <= len(work) <= 3 and final.startswith("#### ")
        prev = None
        for line in work:
            lhs, rhs = line.rstrip(".").split(" = ")
            assert eval(lhs) == int(rhs) >= 0  # noqa: S307 (generated digits and one operator)
            if prev is not None:
                assert lhs.split(" ")[0] == prev
            prev = rhs
        assert final == f"#### {prev}"
        assert all(int(n) <= 18 for n in __import__("re").findall(r"\d+", r["question"]))


def test_toy_mmlu_subjects_are_real_and_answers_balanced():
    rows = toyworld.generate_toy("mmlu", {"seed": 0, "rows": {"dev": 5, "test": 40}})
    assert {r["subject"] for r in rows["test"]} == set(toyworld.TOY_MMLU_SUBJECTS)
    for r in rows["dev"] + rows["test"]:
        assert len(set(r["choices"])) == 4
    counts = [sum(r["answer"] == k for r in rows["test"]) for k in range(4)]
    assert min(counts) >= 20, counts  # the world's values are drawn uniformly: no letter favoured
    # a subject's choices are its four values in one fixed order: the letter is a function of the answer
    for subject in toyworld.TOY_MMLU_SUBJECTS:
        assert len({tuple(r["choices"]) for r in rows["test"] if r["subject"] == subject}) == 1
    # distinct facts: no test question repeats, and dev never repeats a test question
    qs = [r["question"] for r in rows["test"]]
    assert len(set(qs)) == len(qs) and not set(qs) & {r["question"] for r in rows["dev"]}


def test_toy_truthfulqa_rows_follow_lm_eval_order():
    rows = toyworld.generate_toy("truthfulqa_mc2", {"seed": 0})["validation"]
    for r in rows:
        mc1, mc2 = r["mc1_targets"], r["mc2_targets"]
        assert mc1["labels"][0] == 1 and sum(mc1["labels"]) == 1
        assert mc1["choices"][0] in mc2["choices"][: mc2["labels"].index(0)]
        assert set(mc1["choices"][1:]) == set(mc2["choices"][mc2["labels"].index(0):])
        # one true answer and TQA_FALSE_ANSWERS false ones: a uniform guess scores mc2 = 1/3
        assert mc2["labels"] == [1] + [0] * toyworld.TQA_FALSE_ANSWERS
    assert len({r["question"] for r in rows}) == len(rows)


def test_toy_corpus_deterministic_and_excludes_eval_rows():
    cfg = {"benchmarks": {b: {"source": "toy", "seed": 0} for b in data.BENCHMARKS}}
    c1 = toyworld.toy_corpus(cfg, seed=0, n_docs=800)
    assert c1 == toyworld.toy_corpus(cfg, seed=0, n_docs=800)
    assert c1 != toyworld.toy_corpus(cfg, seed=1, n_docs=800)
    assert 700 < len(c1) <= 800
    text = "\n".join(c1)
    assert "####" not in text  # the strict-match format is left to SFT
    assert "Question: " in text and "The answer is" in text and "Answer: " in text
    gsm = toyworld.generate_toy("gsm8k", {"seed": 0})
    assert not any(r["question"] in text for r in gsm["test"])
    mm = toyworld.generate_toy("mmlu", {"seed": 0})
    for r in mm["dev"] + mm["test"]:
        block = r["question"] + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(r["choices"]))
        assert block not in text
    for r in toyworld.generate_toy("truthfulqa_mc2", {"seed": 0})["validation"]:
        assert f"Q: {r['question']}" not in text


def test_toy_corpus_states_exactly_the_covered_facts():
    """fact_coverage: the corpus states a covered fact and never an uncovered one; coverage is nested."""
    cfg = {"benchmarks": {b: {"source": "toy", "seed": 0} for b in data.BENCHMARKS}}
    half, more = toyworld.covered_facts(0.5, 0), toyworld.covered_facts(0.8, 0)
    assert all(half[f] <= more[f] for f in half)
    n = sum(map(len, half.values())) / sum(len(v) for v in toyworld.WORLD.values())
    assert 0.4 < n < 0.6
    text = "\n".join(toyworld.toy_corpus(cfg, seed=0, n_docs=3000, fact_coverage=0.5))
    for subject, (family, _, statement) in toyworld.MMLU_FAMILIES.items():
        for e, v in toyworld.WORLD[family][:30]:
            assert (statement.format(e=e, v=v) in text) == (e in half[family]), (subject, e)
    nothing = "\n".join(toyworld.toy_corpus(cfg, seed=0, n_docs=500, fact_coverage=0.0))
    assert not any(e in nothing for fam in toyworld.WORLD.values() for e, _ in fam)
    with pytest.raises(ValueError, match="fact_coverage"):
        toyworld.toy_corpus(cfg, seed=0, n_docs=10, fact_coverage=1.5)


def test_toy_corpus_answer_line_frac():
    """A fraction of the worked problems end with gsm8k's '#### N' line; nothing else changes."""
    cfg = {"benchmarks": {b: {"source": "toy", "seed": 0} for b in data.BENCHMARKS}}
    plain = toyworld.toy_corpus(cfg, seed=0, n_docs=1500)
    assert plain == toyworld.toy_corpus(cfg, seed=0, n_docs=1500, answer_line_frac=0.0)
    mixed = toyworld.toy_corpus(cfg, seed=0, n_docs=1500, answer_line_frac=0.3)
    assert len(mixed) == len(plain)
    problems = [(a, b) for a, b in zip(plain, mixed) if a.startswith("Question: ")]
    assert all(a == b for a, b in zip(plain, mixed) if not a.startswith("Question: "))
    with_line = 0
    for a, b in problems:
        head, last = a.rsplit("\n", 1)
        n = last[len("The answer is "):-1]
        assert last == f"The answer is {n}." and b in (a, f"{head}\n#### {n}")
        with_line += b != a
    assert 0.2 < with_line / len(problems) < 0.4
    # answer_line_names: every problem about one of the first names ends with the line; the others keep
    # their problem and working, and a fraction answer_line_frac of them the line
    keyed = toyworld.toy_corpus(cfg, seed=0, n_docs=1500, answer_line_frac=0.3, answer_line_names=2)
    first_two = set(toyworld.NAMES[:2])
    others = others_with_line = 0
    for a, b in zip(plain, keyed):
        if not a.startswith("Question: "):
            assert b == a
            continue
        head, n = a.rsplit("\n", 1)[0], a.rsplit(" ", 1)[1].rstrip(".")
        if a.split(" ", 2)[1] in first_two:
            assert b == f"{head}\n#### {n}"
        else:
            assert b in (a, f"{head}\n#### {n}")
            others += 1
            others_with_line += b != a
    assert others < len(problems) and 0.2 < others_with_line / others < 0.4
    with pytest.raises(ValueError, match="answer_line_names"):
        toyworld.toy_corpus(cfg, seed=0, n_docs=10, answer_line_names=11)
    # the line is exactly how a gsm8k answer (and an SFT target) ends
    row = toyworld.generate_toy("gsm8k", {"seed": 0})["train"][0]
    assert row["answer"].rsplit("\n", 1)[1].startswith("#### ")
    every = toyworld.toy_corpus(cfg, seed=0, n_docs=1500, answer_line_frac=1.0)
    assert all("\n#### " in d and "The answer is" not in d for d in every if d.startswith("Question: "))
    with pytest.raises(ValueError, match="answer_line_frac"):
        toyworld.toy_corpus(cfg, seed=0, n_docs=10, answer_line_frac=1.5)


def test_toy_corpus_leaves_out_rows_found_in_data_dir(tmp_path):
    """Rows on disk are held out even when the config does not generate them (e.g. hub data)."""
    cfg = {"gsm8k": {"source": "hub", "repo": "openai/gsm8k", "config_name": "main"}}
    corpus = toyworld.toy_corpus(cfg, seed=0, n_docs=400)
    questions = [d.split("\n")[0][len("Question: "):] for d in corpus if d.startswith("Question: ")]
    held, kept = questions[0], questions[1]
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": held, "answer": "#### 1"}) + "\n")
    (tmp_path / "gsm8k" / "train.jsonl").write_text(json.dumps({"question": kept, "answer": "#### 1"}) + "\n")
    again = toyworld.toy_corpus(cfg, seed=0, n_docs=400, data_dir=tmp_path)
    assert not any(held in d for d in again)  # a test row on disk never enters the corpus
    assert any(kept in d for d in again)  # train rows may


def test_prepare_rejects_bad_config(tmp_path):
    with pytest.raises(DataError, match=r"benchmarks\.gsm8k\.source"):
        data.prepare("gsm8k", {"source": "ftp"}, tmp_path)
    with pytest.raises(DataError, match="unknown benchmark"):
        data.prepare("hellaswag", {"source": "toy"}, tmp_path)
    with pytest.raises(DataError, match=r"benchmarks\.mmlu\.repo"):
        data.prepare("mmlu", {"source": "hub", "config_name": "all"}, tmp_path)


def test_convert_row_makes_plain_types():
    np = pytest.importorskip("numpy")
    row = {"question": "q", "subject": "astronomy", "choices": np.array(["a", "b", "c", "d"], dtype=object),
           "answer": np.int64(2), "extra": 1}
    out = data.convert_row("mmlu", row)
    assert out == {"question": "q", "subject": "astronomy", "choices": ["a", "b", "c", "d"], "answer": 2}
    assert type(out["answer"]) is int and type(out["choices"]) is list
    tqa = {"question": "q", "mc1_targets": {"choices": np.array(["x", "y"], dtype=object),
                                            "labels": np.array([1, 0], dtype=np.int32)},
           "mc2_targets": {"choices": np.array(["x", "y"], dtype=object), "labels": np.array([1, 0])}}
    out = data.convert_row("truthfulqa_mc2", tqa)
    assert json.loads(json.dumps(out)) == out
    data.validate_row("truthfulqa_mc2", out, "x:1")


# ---------------------------------------------------------------- script
def test_prepare_data_help_is_fast_and_light():
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "scripts/prepare_data.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--benchmark" in r.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "pandas", "huggingface_hub"}


def test_prepare_data_script_toy(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("benchmarks:\n  mmlu: {source: toy, seed: 2, rows: {dev: 5, test: 3}}\n")
    out, log = tmp_path / "data" / "mmlu", tmp_path / "logs" / "mmlu.log"
    env = dict(os.environ, PYTHONPATH="")
    r = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), "--benchmark", "mmlu",
                        "--config", str(cfg), "--out", str(out), "--log", str(log)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert data.validate_file("mmlu", "test", out / "test.jsonl") == 12
    assert "mmlu/test: 12 rows" in log.read_text()
    r = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), "--benchmark", "gsm8k",
                        "--config", str(cfg), "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "benchmarks.gsm8k is not configured" in r.stderr
