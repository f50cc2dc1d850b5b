"""GSM8K: prompt format, stop sequences, answer extraction, correctness and reward.

Prompt and target follow lm-eval's ``gsm8k`` task exactly: ``doc_to_text`` is
``"Question: {question}\\nAnswer:"`` and the target is ``" " + answer``.

Stop sequences
--------------
lm-eval generates until a stop string of the task (``generation_kwargs.until``:
``Question:``, ``</s>``, ``<|im_end|>``) or EOS, and scores the text before the
first stop string (:func:`cut_at_stop`, its exact cut). :func:`task_stop_sequences`
reads them from the task lm-eval runs (our template ``workflow/tasks/gsm8k.yaml.template``
and the builtin task file it includes), so training sees the text evaluation sees.

Answer modes
------------
``strict`` and ``flexible`` ARE lm-eval's two GSM8K scores, sample by sample
(``tests/test_gsm8k_lm_eval.py`` runs lm-eval's own filter and metric code over a
table of completions and compares):

* ``"strict"``: the ``strict-match`` filter, regex ``#### (\\-?[0-9\\.\\,]+)``, first
  match, stripped (``"[invalid]"`` when none), then ``exact_match`` against the
  gold ``answer`` text: both sides lose ``,``, ``$``, everything up to the last
  ``"#### "`` and a final ``.``, are lower-cased and compared as strings
  (``"#### 18.00"`` is wrong for gold ``18``; ``"The answer is 18."`` scores 0).
  The claims' primary metric (``exact_match,strict-match``).
* ``"flexible"``: the ``flexible-extract`` filter, regex
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, LAST match, then the same ``exact_match``.

``extract_answer(text, "strict" | "flexible")`` returns the normalised prediction
(what ``exact_match`` compares) or ``None`` when the filter finds nothing.

The numeric modes below equal NO reported metric; they are lenient rewards
(numeric equality, more number formats) for experiments, e.g. a base model that
never writes ``#### N``. ``extract_answer(text, mode)`` returns the answer as a
*canonical decimal string* (``"-1234.5"``, ``"7"``) or ``None``:

* ``"hash"``: the number that follows ``####``. Convention of lm-eval's
  ``strict-match`` filter (regex ``#### (\\-?[0-9\\.\\,]+)``, first match): the
  FIRST ``####`` that is followed by a number wins; a ``####`` followed by no
  number is skipped. We are slightly more lenient than lm-eval: any run of
  spaces/tabs (also none) may separate ``####`` from the number, and a sign
  and/or a currency sign may precede it (``#### -$5``, ``#### $ 1,000``).
* ``"hash_then_last"``: as ``"hash"``; if no ``####`` is followed by a
  number, the LAST number in the text (lm-eval ``flexible-extract`` takes the
  last match too). Only the last ``FALLBACK_WINDOW`` characters are scanned; a
  number cut by the window's left edge is extended to the left over ASCII
  digits and commas, so a long final number is still read whole.

A number is a run of decimal digits (any Unicode ``Nd`` digit, e.g. ``"٧"`` or
``"７"``, mapped to ASCII), possibly with ``,`` thousands separators and a
decimal part ``.ddd``. Normalisation: commas removed, currency signs
(``$ € £``) and a leading ``+`` dropped, a trailing sentence period ignored,
leading zeros and trailing fractional zeros removed (``"007"`` -> ``"7"``,
``"7.00"`` -> ``"7"``), ``-0`` -> ``"0"``. A minus sign (``-`` or U+2212)
counts only when it is not glued to a preceding word or number, so
``"3-4"`` reads as ``4``, ``"x = -4"`` as ``-4``.

In the numeric modes correctness is exact decimal equality (``decimal.Decimal``
comparison, which never rounds), never float equality.

All regexes are linear (no nested or adjacent overlapping quantifiers);
extraction is O(len(text)) and fast on megabyte-long adversarial strings.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from pathlib import Path

from statepost import benchmarks

LM_EVAL_MODES = ("strict", "flexible")  # lm-eval's strict-match and flexible-extract, exactly
NUMERIC_MODES = ("hash", "hash_then_last")  # lenient; equal to no reported metric
ANSWER_MODES = LM_EVAL_MODES + NUMERIC_MODES
# The score file metric each lm-eval mode equals.
MODE_METRICS = {"strict": "exact_match,strict-match", "flexible": "exact_match,flexible-extract"}
# lm-eval's gsm8k task (filter_list: regex_pattern and group_select per filter, then take_first; metric_list:
# exact_match with ignore_case true, ignore_punctuation false and these regexes_to_ignore, in order).
# tests/test_gsm8k_lm_eval.py checks them against the installed task file.
LM_EVAL_FILTERS = {
    "strict": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),
    "flexible": (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),
}
LM_EVAL_FALLBACK = "[invalid]"
LM_EVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
FALLBACK_WINDOW = 10_000
_MINUS = "-\u2212"
_CURRENCY = "$€£"

# A number: digits, optional comma groups, optional decimal part. ``\d`` matches every
# Unicode decimal digit (str patterns). No two quantified parts can match the same
# characters, so matching is linear.
_NUM = r"\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
# "####", blanks, optional sign, optional currency, optional blank, number.
_HASH_RE = re.compile(r"####[ \t]*([+\-\u2212]?)[ \t]?[$€£]?[ \t]?(" + _NUM + ")")
# A well-formed final-answer line: "#### <number>" alone on its line (trailing period allowed).
_FORMAT_RE = re.compile(
    r"(?m)^[ \t]*####[ \t]+[+\-\u2212]?[$€£]?(?:" + _NUM + r")[ \t]*(?:\.[ \t]*)?\r?$"
)


def format_prompt(question: str) -> str:
    """lm-eval gsm8k ``doc_to_text``."""
    return f"Question: {question}\nAnswer:"


def format_target(answer: str) -> str:
    """lm-eval gsm8k target (without the EOS token the trainer appends)."""
    return " " + answer


# -- stop sequences --------------------------------------------------------------------------------


def task_stop_sequences(template_dir: str | None = None) -> tuple[str, ...]:
    """``generation_kwargs.until`` of the GSM8K task lm-eval evaluates: our task template
    (``workflow/tasks/gsm8k.yaml.template``, or the one in ``template_dir``) with the builtin
    lm-eval task file it includes. lm-eval also stops at EOS (learner states stop there anyway)."""
    path = Path(template_dir or benchmarks.TASKS_DIR) / "gsm8k.yaml.template"
    until = (benchmarks.load_task(path, benchmarks.lm_eval_tasks_dir()).get("generation_kwargs") or {}).get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    if not all(isinstance(u, str) for u in until):
        raise ValueError(f"{path}: generation_kwargs.until must be strings, got {until!r}")
    return tuple(u for u in until if u)  # lm-eval ignores empty stop strings


def cut_at_stop(text: str, stop) -> str:
    """The text before the first stop string, cut exactly as lm-eval cuts a generation."""
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text


# -- lm-eval's scores ----------------------------------------------------------------------------


def lm_eval_filter(text: str | None, mode: str) -> str:
    """The output of lm-eval's ``strict-match`` or ``flexible-extract`` filter (``"[invalid]"`` when none)."""
    regex, select = LM_EVAL_FILTERS[mode]
    text = text if isinstance(text, str) else ""
    if select == 0:
        m = regex.search(text)  # findall(...)[0]
    else:
        m = None
        for m in regex.finditer(text):  # findall(...)[-1]
            pass
    if m is None:
        return LM_EVAL_FALLBACK
    groups = m.groups()
    if len(groups) > 1:  # findall gives a tuple: its first non-empty group
        found = next((g for g in groups if g), None)
        return LM_EVAL_FALLBACK if found is None else found.strip()
    return ((groups[0] or "") if groups else m.group(0)).strip()


def lm_eval_normalise(s: str) -> str:
    """``exact_match``'s normalisation of the gsm8k task: its ``regexes_to_ignore`` in order
    (``,``, ``\\$``, ``(?s).*#### ``, ``\\.$``; written as linear string operations) and ``ignore_case``."""
    s = s.replace(",", "").replace("$", "")
    i = s.rfind("#### ")  # (?s).*#### : greedy, so up to the last one
    if i >= 0:
        s = s[i + 5 :]
    if s.endswith("."):  # \.$ : a final period, or one before a final newline
        s = s[:-1]
    elif s.endswith(".\n"):
        s = s[:-2] + "\n"
    return s.lower()


def _ascii_digits(s: str) -> str:
    if s.isascii():
        return s
    return "".join(
        c if c.isascii() else (str(unicodedata.decimal(c)) if c.isdecimal() else c) for c in s
    )


def canonical_number(digits: str, negative: bool = False) -> str | None:
    """Canonical decimal string of a matched number (``"1,234.50"`` -> ``"1234.5"``)."""
    s = _ascii_digits(digits).replace(",", "")
    if not s or not s[0].isdigit():
        return None
    intpart, _, frac = s.partition(".")
    if not intpart.isdigit() or (frac and not frac.isdigit()):
        return None
    intpart = intpart.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = intpart + ("." + frac if frac else "")
    if negative and out != "0":
        out = "-" + out
    return out


def _minus_before(text: str, start: int) -> bool:
    """Whether the number starting at ``start`` carries a minus sign.

    Looks back over at most: one blank, one currency sign, one blank, then a minus
    sign which must not be glued to a preceding word character or number.
    """
    i = start - 1
    if i >= 0 and text[i] in " \t":
        i -= 1
    if i >= 0 and text[i] in _CURRENCY:
        i -= 1
        if i >= 0 and text[i] in " \t":
            i -= 1
    if i >= 0 and text[i] in _MINUS:
        return i == 0 or not (text[i - 1].isalnum() or text[i - 1] in ".,")
    return False


def _last_number(text: str) -> str | None:
    offset = max(0, len(text) - FALLBACK_WINDOW)
    window = text[offset:]
    last = None
    for last in _NUM_RE.finditer(window):
        pass
    if last is None:
        return None
    start = offset + last.start()
    end = offset + last.end()
    if last.start() == 0 and offset > 0:
        # The window may have cut the number: extend it to the left (linear, C-level rstrip).
        head = text[:start]
        kept = head.rstrip("0123456789,")
        start = len(kept)
        if start < len(head) and not text[start].isdigit():
            # do not start a number at a comma
            start += len(head[start:]) - len(head[start:].lstrip(","))
    return canonical_number(text[start:end], _minus_before(text, start))


def extract_answer(text: str | None, mode: str = "strict") -> str | None:
    """The answer in ``text``, or ``None``: lm-eval's normalised prediction (strict, flexible) or a
    canonical decimal string (hash, hash_then_last); see the module doc."""
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {mode!r}; expected one of {ANSWER_MODES}")
    if mode in LM_EVAL_MODES:
        pred = lm_eval_filter(text, mode)
        return None if pred == LM_EVAL_FALLBACK else lm_eval_normalise(pred)
    if not text:
        return None
    m = _HASH_RE.search(text)
    if m is not None:
        return canonical_number(m.group(2), negative=m.group(1) in ("-", "\u2212"))
    if mode == "hash":
        return None
    return _last_number(text)


def gold_answer(answer_text: str) -> str:
    """The gold number of a GSM8K ``answer`` field: the number after its LAST ``####``."""
    idx = answer_text.rfind("####")
    if idx < 0:
        raise ValueError(f"gsm8k answer has no '####' line: {answer_text[-200:]!r}")
    value = extract_answer(answer_text[idx:], mode="hash")
    if value is None:
        raise ValueError(f"gsm8k answer has no number after '####': {answer_text[idx:idx + 200]!r}")
    return value


def _same_number(a: str, b: str) -> bool:
    try:
        return Decimal(a) == Decimal(b)  # exact: Decimal comparison never rounds
    except InvalidOperation:  # pragma: no cover - canonical strings always parse
        return False


def is_correct(completion: str, gold_answer_text: str, mode: str = "strict") -> bool:
    """Whether the completion is right: lm-eval's ``exact_match`` after its filter (strict,
    flexible), or numeric equality of the extracted answers (hash, hash_then_last).

    ``gold_answer_text`` is the dataset's ``answer`` field (with its ``#### n`` line; lm-eval's
    reference) or a bare number.
    """
    if mode in LM_EVAL_MODES:
        return lm_eval_normalise(lm_eval_filter(completion, mode)) == lm_eval_normalise(gold_answer_text)
    pred = extract_answer(completion, mode)
    if pred is None:
        return False
    if "####" in gold_answer_text:
        gold = gold_answer(gold_answer_text)
    else:
        gold = extract_answer(gold_answer_text, "hash_then_last")
        if gold is None:
            raise ValueError(f"gold answer has no number: {gold_answer_text[:200]!r}")
    return _same_number(pred, gold)


def has_answer_line(completion: str) -> bool:
    """Whether the completion contains a well-formed ``#### <number>`` line."""
    return bool(completion) and _FORMAT_RE.search(completion) is not None


def reward(completion: str, gold: str, mode: str = "strict", format_reward: float = 0.0) -> float:
    """1.0 if correct else 0.0, plus ``format_reward`` when a ``#### <number>`` line is present."""
    r = 1.0 if is_correct(completion, gold, mode) else 0.0
    if format_reward and has_answer_line(completion):
        r += float(format_reward)
    return r
