"""GSM8K prompt format, stop sequences, answer extraction, correctness and reward.

The numeric modes (hash, hash_then_last) are tested here; strict and flexible, which are lm-eval's
scores, against lm-eval's own code in test_gsm8k_lm_eval.py."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statepost import gsm8k
from statepost.gsm8k import extract_answer, gold_answer, is_correct, reward

# (text, mode, expected)
CASES = [
    ("", "hash_then_last", None),
    ("", "hash", None),
    ("no numbers here at all", "hash_then_last", None),
    ("no numbers here at all", "hash", None),
    ("#### 42", "hash", "42"),
    ("####42", "hash", "42"),
    ("The answer is\n#### 18", "hash_then_last", "18"),
    ("#### 1,234", "hash", "1234"),
    ("#### $1,234.50", "hash", "1234.5"),
    ("#### -5", "hash", "-5"),
    ("#### -$5", "hash", "-5"),
    ("#### $ 70", "hash", "70"),
    ("#### +7", "hash", "7"),
    ("#### 7.0", "hash", "7"),
    ("#### 7.00", "hash", "7"),
    ("#### 7.", "hash", "7"),
    ("#### 007", "hash", "7"),
    ("#### 0.50", "hash", "0.5"),
    ("#### -0", "hash", "0"),
    ("#### €12", "hash", "12"),
    ("#### £3", "hash", "3"),
    ("#### ٧", "hash", "7"),  # Arabic-Indic seven
    ("#### ７２", "hash", "72"),  # fullwidth digits
    ("#### १२३", "hash", "123"),  # Devanagari digits
    ("first #### 3 then #### 4", "hash", "3"),  # first #### wins (lm-eval strict-match)
    ("#### none here #### 4", "hash", "4"),  # a #### without a number is skipped
    ("#### #### #### 9", "hash", "9"),
    ("#### x", "hash", None),
    ("#### x", "hash_then_last", None),
    ("#### x 12 apples", "hash_then_last", "12"),
    ("She has 3 apples and buys 4 more, so 7.", "hash_then_last", "7"),
    ("She has 3 apples and buys 4 more, so 7.", "hash", None),
    ("The total is $1,000.", "hash_then_last", "1000"),
    ("It costs 12.50 dollars", "hash_then_last", "12.5"),
    ("The temperature is -4 degrees", "hash_then_last", "-4"),
    ("The temperature is \u22124 degrees", "hash_then_last", "-4"),
    ("pages 3-4", "hash_then_last", "4"),  # a hyphen glued to a number is not a minus sign
    ("x=-3", "hash_then_last", "-3"),
    ("answer (-12)", "hash_then_last", "-12"),
    ("so 5,", "hash_then_last", "5"),
    ("The answer is ٣٤", "hash_then_last", "34"),
    ("1 2 3 4 5 6 7 8 9 10", "hash_then_last", "10"),
    ("Answer: 18 and 4", "hash_then_last", "4"),
    ("#### 18 and #### 5", "hash", "18"),
    ("1" * 100_000 + "x", "hash_then_last", "1" * 100_000),
    ("1" * 100_000 + "x", "hash", None),
    ("#" * 100_000, "hash_then_last", None),
    ("#### " + "9" * 50_000, "hash", "9" * 50_000),
    ("#### 1e5", "hash", "1"),  # scientific notation is not parsed: the digit run only
    ("²³", "hash_then_last", None),  # superscripts are not decimal digits
    ("10 apples\r\n#### 10\r\n", "hash", "10"),
]


@pytest.mark.parametrize("text,mode,expected", CASES)
def test_extract_answer_cases(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_case_count():
    assert len(CASES) >= 40


def test_none_and_bad_mode():
    for mode in gsm8k.ANSWER_MODES:
        assert extract_answer(None, mode) is None
    with pytest.raises(ValueError, match="answer mode"):
        extract_answer("#### 1", mode="exact")


# A completion that goes on past its answer into an invented question (a base model does).
RUN_ON = " 3 + 4 = 7.\nThe answer is 7.\n\nQuestion: What is 2 + 2?\nAnswer: 2 + 2 = 4.\n#### 4"


def test_a_completion_is_scored_on_the_text_before_the_stop_string():
    stop = gsm8k.task_stop_sequences()
    text = gsm8k.cut_at_stop(RUN_ON, stop)
    assert text == " 3 + 4 = 7.\nThe answer is 7.\n\n"
    for mode in gsm8k.ANSWER_MODES:
        assert not is_correct(text, "#### 4", mode), mode  # the invented answer is gone
    assert [is_correct(text, "#### 7", m) for m in gsm8k.ANSWER_MODES] == [False, True, False, True]
    # uncut, every mode read the invented "#### 4"
    assert all(is_correct(RUN_ON, "#### 4", m) for m in gsm8k.ANSWER_MODES)


def test_format_prompt_matches_lm_eval():
    assert gsm8k.format_prompt("What is 2+2?") == "Question: What is 2+2?\nAnswer:"
    assert gsm8k.format_target("2+2=4\n#### 4") == " 2+2=4\n#### 4"


def test_gold_answer_takes_last_hash():
    ans = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert gold_answer(ans) == "72"
    assert gold_answer("x #### 1\n#### 1,000") == "1000"
    assert gold_answer("#### -3") == "-3"
    with pytest.raises(ValueError, match="no '####'"):
        gold_answer("72")
    with pytest.raises(ValueError, match="no number"):
        gold_answer("#### none")


def test_is_correct_numeric_equality():
    gold = "working\n#### 1000"
    lenient = "hash_then_last"
    assert is_correct("so #### 1,000.00", gold, lenient)
    assert is_correct("so #### $1000", gold, lenient)
    assert is_correct("the total is 1000.", gold, lenient)
    assert not is_correct("the total is 1000.", gold, mode="hash")
    assert not is_correct("#### 999", gold, lenient)
    assert not is_correct("no answer", gold, lenient)
    assert is_correct("#### ١٠٠٠", gold, lenient)
    # exact decimal comparison, not float: 0.1+0.2 style pitfalls and huge numbers
    assert is_correct("#### 0.30", "#### 0.3", lenient)
    assert not is_correct("#### 0.30000000000000004", "#### 0.3", lenient)
    big = "9" * 40
    assert not is_correct("#### " + big, "#### 1" + "0" * 40, lenient)
    assert is_correct("#### " + big, "#### " + big, lenient)
    assert is_correct("it is 5", "5", lenient)  # bare-number gold


def test_the_default_mode_is_strict_match():
    gold = "working\n#### 1000"
    assert is_correct("so\n#### 1,000", gold) and is_correct("#### 1000.", gold)
    assert not is_correct("so #### 1,000.00", gold)  # strings, not numbers: lm-eval scores it 0
    assert not is_correct("the total is 1000.", gold)  # no "#### N"
    assert not is_correct("####1000", gold)  # one space after ####
    assert is_correct("the total is 1000.", gold, "flexible")
    assert reward("The answer is 18.", "#### 18") == 0.0  # the example


def test_reward_and_format_bonus():
    gold = "#### 7"
    assert reward("#### 7", gold) == 1.0
    assert reward("#### 8", gold) == 0.0
    assert reward("#### 7", gold, format_reward=0.1) == pytest.approx(1.1)
    assert reward("#### 8", gold, format_reward=0.1) == pytest.approx(0.1)
    assert reward("the answer is 7", gold, format_reward=0.1) == 0.0  # strict-match: no #### line
    assert reward("the answer is 7", gold, mode="hash_then_last", format_reward=0.1) == 1.0
    assert reward("the answer is 7", gold, mode="hash", format_reward=0.1) == 0.0
    assert gsm8k.has_answer_line("work\n#### 7.\n")
    assert gsm8k.has_answer_line("  #### -$1,000")
    assert not gsm8k.has_answer_line("#### 7 apples")
    assert not gsm8k.has_answer_line("#### seven")
    assert not gsm8k.has_answer_line("")


@pytest.mark.parametrize(
    "text",
    [
        "1" * 1_000_000 + "x",
        "#" * 1_000_000,
        "####" + " " * 1_000_000 + "x",
        "#### " * 200_000,
        "1," * 500_000,
        "1." * 500_000,
        "-" * 1_000_000,
        "\n#### " + " " * 1_000_000,
        ("#### " + "1" * 1000 + " x\n") * 1000,
        "٧" * 1_000_000,
    ],
)
def test_adversarial_megabyte_inputs_are_fast(text):
    t0 = time.perf_counter()
    for mode in gsm8k.ANSWER_MODES:
        extract_answer(text, mode)
    gsm8k.has_answer_line(text)
    is_correct(text, "#### 1")
    assert time.perf_counter() - t0 < 2.0


@settings(deadline=1000, max_examples=200)
@given(
    st.text(
        alphabet=st.sampled_from(list("0123456789#., -+$€£\n\t x٧７\u2212")) | st.characters(),
        max_size=2000,
    ),
    st.integers(min_value=0, max_value=20),
)
def test_property_never_raises_and_is_canonical(text, reps):
    text = text * reps
    for mode in gsm8k.LM_EVAL_MODES:
        extract_answer(text, mode)
        is_correct(text, text, mode)
    for mode in gsm8k.NUMERIC_MODES:
        out = extract_answer(text, mode)
        if out is not None:
            assert out.lstrip("-").replace(".", "", 1).isdigit() and out.isascii()
            assert out == gsm8k.canonical_number(out.lstrip("-"), out.startswith("-"))
    assert extract_answer(text, "hash") is None or extract_answer(text, "hash_then_last") == extract_answer(
        text, "hash"
    )
    reward(text, "#### 3", format_reward=0.5)


@settings(deadline=1000, max_examples=100)
@given(st.integers(min_value=-(10**30), max_value=10**30), st.sampled_from(["", "$", " "]))
def test_property_roundtrip_integers(n, prefix):
    s = f"{abs(n):,}" if n % 2 else str(abs(n))
    text = f"blah\n#### {'-' if n < 0 else ''}{prefix}{s}"
    assert extract_answer(text, "hash") == str(n)
    assert is_correct(text, f"#### {n}", "hash_then_last")
    assert is_correct(text, f"#### {n}") == (prefix == "")  # strict-match: a digit or "-" right after "#### "
