"""GSM8K: prompt format, answer extraction, correctness and reward.

Prompt and target follow lm-eval's ``gsm8k`` task exactly: ``doc_to_text`` is
``"Question: {question}\\nAnswer:"`` and the target is ``" " + answer``.

Answer extraction
-----------------
``extract_answer(text, mode)`` returns the answer as a *canonical decimal
string* (``"-1234.5"``, ``"7"``) or ``None``:

* ``"hash"``: the number that follows ``####``. Convention of lm-eval's
  ``strict-match`` filter (regex ``#### (\\-?[0-9\\.\\,]+)``, first match): the
  FIRST ``####`` that is followed by a number wins; a ``####`` followed by no
  number is skipped. We are slightly more lenient than lm-eval: any run of
  spaces/tabs (also none) may separate ``####`` from the number, and a sign
  and/or a currency sign may precede it (``#### -$5``, ``#### $ 1,000``).
* ``"hash_then_last"`` (default): as ``"hash"``; if no ``####`` is followed by a
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

Correctness is exact decimal equality (``decimal.Decimal`` comparison, which
never rounds), never float equality.

All regexes are linear (no nested or adjacent overlapping quantifiers);
extraction is O(len(text)) and fast on megabyte-long adversarial strings.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

ANSWER_MODES = ("hash", "hash_then_last")
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


def extract_answer(text: str | None, mode: str = "hash_then_last") -> str | None:
    """The answer in ``text`` as a canonical decimal string, or ``None`` (see module doc)."""
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {mode!r}; expected one of {ANSWER_MODES}")
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


def is_correct(completion: str, gold_answer_text: str, mode: str = "hash_then_last") -> bool:
    """Whether the completion's extracted answer equals the gold answer numerically.

    ``gold_answer_text`` is the dataset's ``answer`` field (with its ``#### n`` line) or a
    bare number.
    """
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


def reward(
    completion: str, gold: str, mode: str = "hash_then_last", format_reward: float = 0.0
) -> float:
    """1.0 if correct else 0.0, plus ``format_reward`` when a ``#### <number>`` line is present."""
    r = 1.0 if is_correct(completion, gold, mode) else 0.0
    if format_reward and has_answer_line(completion):
        r += float(format_reward)
    return r
