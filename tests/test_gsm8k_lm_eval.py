"""The strict and flexible rewards ARE lm-eval's GSM8K scores: each completion of a table is scored by
lm-eval's own filters and exact_match metric, configured from the installed gsm8k task file, and by
our reward; they must agree on every row. The stop sequences and the cut are lm-eval's too."""

from __future__ import annotations

import pytest
import yaml

from statepost import gsm8k
from statepost.benchmarks import lm_eval_tasks_dir

TASK = yaml.safe_load((lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml").read_text())
MODE_OF_FILTER = {"strict-match": "strict", "flexible-extract": "flexible"}

G18 = "Natalia sold 6*3 = <<6*3=18>>18 clips.\n#### 18"
# (completion, gold answer field)
TABLE = [
    (" 6 * 3 = 18 clips.\n#### 18", G18),
    (" The answer is 18.", G18),  # right number, no "#### ": strict 0, flexible 1
    (" #### 18", G18),
    (" #### 18.", G18),  # the final period is ignored
    (" #### 18.00", G18),  # strings, not numbers: 0 in both
    (" #### 18.0\nso 18", G18),
    (" ####18", G18),  # strict needs exactly one space
    (" ####  18", G18),
    (" #### $18", G18),  # strict's regex takes no "$"; flexible does, and "$" is ignored
    (" #### 1,8", G18),  # commas are ignored: "18"
    (" #### 017", G18),
    (" #### 018", G18),  # leading zero: wrong in both
    (" #### 18 #### 19", G18),  # strict: first; flexible: last
    (" #### 19 #### 18", G18),
    (" 18 apples, then 19", G18),
    (" 19 apples, then 18", G18),
    (" It is 18!", G18),
    (" It is 18%", G18),
    (" 6*3=18", G18),
    (" 6 * 3 is eighteen", G18),
    (" ", G18),
    ("", G18),
    (" #### ١٨", G18),  # Arabic-Indic digits: lm-eval reads none
    (" 18\n", G18),
    (" 18.\n", G18),
    (" #### 18\n", G18),
    (" #### 18\r\n", G18),
    (" #### -18", G18),
    (" #### 1000", "Total <<500*2=1000>>1000.\n#### 1,000"),
    (" #### 1,000", "Total <<500*2=1000>>1000.\n#### 1000"),
    (" The total is $1,000.", "#### 1000"),
    (" The total is 1,000.00 dollars", "#### 1000"),
    (" #### -3", "It drops by 3.\n#### -3"),
    (" #### − 3", "#### -3"),  # U+2212 is not a minus sign to lm-eval
    (" the change is -3", "#### -3"),
    (" the change is - 3", "#### -3"),
    (" #### 0.5", "Half: <<1/2=0.5>>0.5\n#### 0.5"),
    (" #### .5", "#### 0.5"),
    (" it is .5", "#### 0.5"),
    (" #### 5", "#### 5 Apples"),  # gold with words after the number
    (" #### 5 apples", "#### 5 Apples"),
    (" it costs 5", "5"),  # a bare-number gold
    (" #### 5", " 5 "),
    (" 1.2.3", "#### 1.2.3"),
    (" so -", "#### 5"),
    (" ,,", "#### 5"),
    (" 1e3", "#### 1000"),
    (" #### 72\n\nQuestion: What is 5?\nAnswer: #### 5", "#### 72"),  # uncut: strict first, flexible last
    (" 72 clips.\n#### 72\n\n", "#### 72"),
    (" [invalid]", "#### [invalid]"),  # lm-eval's fallback string scores against such a gold
    (" #### 3 #### 5", "#### 3 #### 5"),  # the gold loses everything up to its last "#### "
    (" 12." + "3" * 300 + " and #### " + "9" * 200, "#### " + "9" * 200),
]


def lm_eval_score(completion: str, gold: str, filter_name: str) -> float:
    """lm-eval's score of one completion: the task's filter chain, then its exact_match with the task's kwargs."""
    import lm_eval.filters  # noqa: F401 - registers regex, take_first
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.api.registry import get_filter

    steps = next(f["filter"] for f in TASK["filter_list"] if f["name"] == filter_name)
    resps = [[completion]]
    for step in steps:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        resps = list(get_filter(step["function"])(**kwargs).apply(resps, [{}]))
    metric = next(m for m in TASK["metric_list"] if m["metric"] == "exact_match")
    kwargs = {k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")}
    return float(exact_match_hf_evaluate(predictions=[resps[0]], references=[gold], **kwargs)["exact_match"])


SCORED = [(c, g, f, lm_eval_score(c, g, f)) for c, g in TABLE for f in MODE_OF_FILTER]


def test_table_size_and_coverage():
    assert len(TABLE) >= 40
    by = {(c, g, f): s for c, g, f, s in SCORED}
    for f in MODE_OF_FILTER:
        assert {by[(c, g, f)] for c, g in TABLE} == {0.0, 1.0}, f  # each filter both passes and fails rows
    assert any(by[(c, g, "strict-match")] != by[(c, g, "flexible-extract")] for c, g in TABLE)
    # the old lenient mode is not the reported metric
    assert any(gsm8k.reward(c, g, "hash_then_last") != by[(c, g, "strict-match")] for c, g in TABLE)


@pytest.mark.parametrize("completion,gold,filter_name,score", SCORED)
def test_reward_equals_lm_eval(completion, gold, filter_name, score):
    mode = MODE_OF_FILTER[filter_name]
    assert gsm8k.reward(completion, gold, mode) == score
    assert gsm8k.is_correct(completion, gold, mode) == (score == 1.0)
    assert gsm8k.MODE_METRICS[mode] == f"exact_match,{filter_name}"


def test_our_constants_are_the_task_file():
    """The filters, metric kwargs and stop strings written in gsm8k.py are the installed task's."""
    filters = {f["name"]: f["filter"] for f in TASK["filter_list"]}
    assert set(filters) == set(MODE_OF_FILTER)
    for name, steps in filters.items():
        regex, select = gsm8k.LM_EVAL_FILTERS[MODE_OF_FILTER[name]]
        assert [s["function"] for s in steps] == ["regex", "take_first"]
        assert steps[0]["regex_pattern"] == regex.pattern
        assert steps[0].get("group_select", 0) == select
        assert steps[0].get("fallback", gsm8k.LM_EVAL_FALLBACK) == gsm8k.LM_EVAL_FALLBACK
    (metric,) = TASK["metric_list"]
    assert metric["metric"] == "exact_match" and metric["ignore_case"] is True
    assert metric["ignore_punctuation"] is False and not metric.get("ignore_numbers", False)
    assert tuple(metric["regexes_to_ignore"]) == gsm8k.LM_EVAL_IGNORE
    assert TASK["output_type"] == "generate_until" and TASK["doc_to_target"] == "{{answer}}"
    assert gsm8k.task_stop_sequences() == tuple(TASK["generation_kwargs"]["until"])
    assert gsm8k.task_stop_sequences() == ("Question:", "</s>", "<|im_end|>")


NORMALISE = ["1,000", "$5", "a #### 5", "#### 1 #### 2.", "5..", "5.\n", "5.\n\n", "x\n.", "Ab.C", ".", "", "$#,### 7."]


@pytest.mark.parametrize("s", NORMALISE)
def test_normalise_is_the_regexes_to_ignore(s):
    import re

    expect = s
    for pattern in gsm8k.LM_EVAL_IGNORE:
        expect = re.sub(pattern, "", expect)
    assert gsm8k.lm_eval_normalise(s) == expect.lower()


def test_stop_sequences_follow_our_template(tmp_path):
    """Read from the task lm-eval runs: our template, the builtin task it includes, and what it overrides."""
    builtin = lm_eval_tasks_dir()
    (tmp_path / "gsm8k.yaml.template").write_text(
        f'include: "{builtin}/gsm8k/gsm8k.yaml"\ntask: x\ngeneration_kwargs:\n  until: ["\\n\\n", "Q:"]\n'
    )
    assert gsm8k.task_stop_sequences(str(tmp_path)) == ("\n\n", "Q:")
    (tmp_path / "base.yaml").write_text("generation_kwargs: {until: \"Problem:\"}\ndoc_to_text: !function utils.f\n")
    (tmp_path / "gsm8k.yaml.template").write_text('include: "base.yaml"\ntask: x\ndataset_path: "${train}"\n')
    assert gsm8k.task_stop_sequences(str(tmp_path)) == ("Problem:",)


CUTS = ["a Question: b", "a</s>b Question: c", "no stop", "Question:", "x<|im_end|>y</s>z", "", "Question Question:"]


@pytest.mark.parametrize("text", CUTS)
def test_cut_is_lm_evals(text):
    from lm_eval.models.utils import postprocess_generated_text

    stop = list(gsm8k.task_stop_sequences())
    assert gsm8k.cut_at_stop(text, stop) == postprocess_generated_text(text, stop, None)

