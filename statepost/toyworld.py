"""The toy world: seeded generators for the three benchmarks and the toy base model's corpus.

The rows have the columns of the standard Hugging Face datasets, so everything downstream (the
data validators, lm-eval's builtin tasks, training) treats them like the real ones:
arithmetic word problems (gsm8k), multiple-choice facts and arithmetic over real MMLU subject
names (mmlu), common misconceptions and facts (truthfulqa_mc2). :func:`toy_corpus` draws
pretraining text for the toy base model from the same world (its own random stream, never the
evaluation rows). Everything is pure Python ``random.Random``: the same seed gives the same rows
on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

from . import benchmarks
from .io import read_jsonl

BENCHMARKS = benchmarks.NAMES
NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Emma", "Leo", "Zoe")
ITEMS = ("apples", "books", "pens", "cards", "eggs", "toys", "shells", "stamps", "coins", "cookies")


def _gsm8k_problem(rng: random.Random) -> tuple[str, list[tuple[int, str, int, int]]]:
    """One word problem and its steps ``(x, op, y, result)``; all numbers small and non-negative."""
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(("add", "add2", "sub", "mul", "add_sub", "mul_add", "sub_add", "three"))
    if kind == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"{n} has {a} {it} and buys {b} more. How many {it} does {n} have now?", [(a, "+", b, a + b)]
    if kind == "add2":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        q = f"{n} found {a} {it} on Monday and {b} {it} on Tuesday. How many {it} did {n} find in total?"
        return q, [(a, "+", b, a + b)]
    if kind == "sub":
        a = rng.randint(5, 18)
        b = rng.randint(1, min(9, a - 1))
        return f"{n} has {a} {it} and gives {b} to a friend. How many {it} does {n} have left?", [(a, "-", b, a - b)]
    if kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        q = f"{n} has {a} boxes with {b} {it} in each box. How many {it} does {n} have?"
        return q, [(a, "*", b, a * b)]
    if kind == "add_sub":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, min(9, a + b - 1))
        q = f"{n} has {a} {it}, buys {b} more and then gives away {c}. How many {it} does {n} have now?"
        return q, [(a, "+", b, a + b), (a + b, "-", c, a + b - c)]
    if kind == "mul_add":
        a, b, c = rng.randint(2, 5), rng.randint(2, 5), rng.randint(1, 9)
        q = f"{n} buys {a} packs of {b} {it} and then gets {c} more. How many {it} does {n} have?"
        return q, [(a, "*", b, a * b), (a * b, "+", c, a * b + c)]
    if kind == "sub_add":
        a = rng.randint(5, 18)
        b = rng.randint(1, min(9, a - 1))
        c = rng.randint(1, 9)
        q = f"{n} had {a} {it}, lost {b} and then found {c}. How many {it} does {n} have now?"
        return q, [(a, "-", b, a - b), (a - b, "+", c, a - b + c)]
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    d = rng.randint(1, min(9, a + b + c - 1))
    q = (
        f"{n} has {a} {it}. {n} buys {b} more, gets {c} from a friend and then loses {d}. "
        f"How many {it} does {n} have now?"
    )
    return q, [(a, "+", b, a + b), (a + b, "+", c, a + b + c), (a + b + c, "-", d, a + b + c - d)]


def _working(steps) -> str:
    return "\n".join(f"{x} {op} {y} = {r}." for x, op, y, r in steps)


def _gsm8k_row(rng: random.Random) -> dict:
    q, steps = _gsm8k_problem(rng)
    return {"question": q, "answer": f"{_working(steps)}\n#### {steps[-1][3]}"}


# ---- the fact world behind mmlu, truthfulqa and the corpus ----
# Invented entities with one arbitrary attribute each, so that the toy base knows exactly the facts
# its corpus states (a fraction ``fact_coverage`` of them, see toy_corpus) and must guess the rest:
# what it knows is measurable, and training that overwrites the model can lose it.
SYLLABLES = ("ka", "lo", "mi", "ra", "ve", "zu", "to", "ne", "sa", "pi", "do", "fe", "gu", "ri", "bo", "xa",
             "te", "lu", "no", "ji", "mar", "kel", "dor", "vin", "tul", "bra", "sel", "gor")
# Each mmlu family has exactly four values, always listed in this order as the choices A-D: the
# letter is a fixed function of the answer, so answering needs the fact (entity -> value) and the
# value's letter, which mc practice on other entities teaches. (With shuffled choices the 2-layer
# toy would have to find the recalled value among the options in context; within its pretraining
# budget it does not learn that, and scored 0.26 on 300 items at coverage 0.5.)
CONTINENTS = ("Europe", "Asia", "Africa", "Oceania")
COLORS = ("red", "blue", "white", "yellow")
LANGUAGES = ("Python", "Java", "Rust", "Lisp")
SIDES = ("3", "4", "5", "6")
FOODS = ("seeds", "fish", "leaves", "insects", "fruit", "grass", "honey", "roots")
FAMILY_SIZE = {"country": 100, "star": 100, "program": 100, "shape": 100, "creature": 300}


def _names(kind: str, n: int, taken: set[str]) -> list[str]:
    """``n`` distinct invented names (two or three syllables), fixed for all seeds and configs."""
    rng = random.Random(f"toyworld-names:{kind}")
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _world() -> dict[str, list[tuple[str, str]]]:
    """Every fact family as ``[(entity, value)]``; the same world for every seed and config."""
    taken: set[str] = set()
    rng = random.Random("toyworld-values")
    return {
        "country": [(e, rng.choice(CONTINENTS)) for e in _names("country", FAMILY_SIZE["country"], taken)],
        "star": [(e, rng.choice(COLORS)) for e in _names("star", FAMILY_SIZE["star"], taken)],
        "program": [(e, rng.choice(LANGUAGES)) for e in _names("program", FAMILY_SIZE["program"], taken)],
        "shape": [(e.lower(), rng.choice(SIDES)) for e in _names("shape", FAMILY_SIZE["shape"], taken)],
        "creature": [(e.lower(), rng.choice(FOODS)) for e in _names("creature", FAMILY_SIZE["creature"], taken)],
    }


WORLD = _world()
# mmlu subject -> (fact family, question, statement), each template over {e} (entity) and {v} (value)
MMLU_FAMILIES = {
    "high_school_geography": ("country", "On which continent is {e}?", "{e} is in {v}."),
    "astronomy": ("star", "What color is the star {e}?", "The star {e} is {v}."),
    "high_school_computer_science": ("program", "In which language is the program {e} written?",
                                     "The program {e} is written in {v}."),
    "elementary_mathematics": ("shape", "How many sides does a {e} have?", "A {e} has {v} sides."),
}
TOY_MMLU_SUBJECTS = tuple(MMLU_FAMILIES)
# The corpus's multiple-choice practice asks about a covered fact in other words than mmlu does, so no
# evaluation row (question + choices) is ever in the corpus, while every covered fact is practised.
MC_PRACTICE = {"country": "Which continent is {e} in?", "star": "Which color does the star {e} have?",
               "program": "Which language was the program {e} written in?", "shape": "How many sides has a {e}?"}
TQA_QUESTION, TQA_STATEMENT = "What does the {e} eat?", "The {e} eats {v}."
TQA_FALSE_ANSWERS = 2  # each truthfulqa item: 1 true answer, 2 false: a uniform guess scores mc2 = 1/3


CHOICES = {"country": CONTINENTS, "star": COLORS, "program": LANGUAGES, "shape": SIDES}


def _mc_item(question: str, answer: str, choices) -> tuple[str, list[str], int]:
    """A 4-choice item: the family's four values in their fixed order."""
    return question, list(choices), list(choices).index(answer)


def _mmlu_item_specs(subject: str) -> list[tuple[str, str, object]]:
    """All (question, answer, distractor pool) facts of a toy subject."""
    if subject not in MMLU_FAMILIES:
        raise ValueError(f"no toy generator for MMLU subject {subject!r} (toy subjects: {TOY_MMLU_SUBJECTS})")
    family, question, _ = MMLU_FAMILIES[subject]
    return [(question.format(e=e), v, CHOICES[family]) for e, v in WORLD[family]]


def _mmlu_split_rows(subjects, rows: Mapping[str, int], seed: int, splits) -> dict[str, list[dict]]:
    """Per subject, test questions first, then dev questions from the remaining facts where possible."""
    out: dict[str, list[dict]] = {s: [] for s in splits}
    order = sorted(splits, key=lambda s: (s != "test", s))
    for subject in subjects:
        specs = _mmlu_item_specs(subject)
        rng = random.Random(f"mmlu:{seed}:{subject}")
        idx = list(range(len(specs)))
        rng.shuffle(idx)
        pos = 0
        for split in order:
            n = int(rows.get(split, benchmarks.get("mmlu").toy_rows.get(split, 5)))
            for _ in range(n):
                q, a, pool = specs[idx[pos % len(idx)]]
                pos += 1
                q, choices, ans = _mc_item(q, a, pool)
                out[split].append({"question": q, "subject": subject, "choices": choices, "answer": ans})
    return out


def _truthfulqa_specs() -> list[tuple[str, list[str], list[str]]]:
    """(question, true answers, false answers) per creature: its food, and two foods it does not eat."""
    rng = random.Random("toyworld-truthfulqa")
    specs = []
    for e, v in WORLD["creature"]:
        wrong = rng.sample([f for f in FOODS if f != v], TQA_FALSE_ANSWERS)
        specs.append((TQA_QUESTION.format(e=e), [TQA_STATEMENT.format(e=e, v=v)],
                      [TQA_STATEMENT.format(e=e, v=w) for w in wrong]))
    return specs


def _truthfulqa_row(rng: random.Random, spec) -> dict:
    q, trues, falses = spec
    trues = list(trues)
    falses = list(falses)
    rng.shuffle(trues)
    rng.shuffle(falses)
    # mc1: one correct answer first, then the false ones (lm-eval's mc1 treats index 0 as gold)
    mc1 = [trues[0]] + falses
    # mc2: all true answers first, then all false ones (lm-eval's mc2 splits at the first 0 label)
    mc2 = trues + falses
    return {
        "question": q,
        "mc1_targets": {"choices": mc1, "labels": [1] + [0] * len(falses)},
        "mc2_targets": {"choices": mc2, "labels": [1] * len(trues) + [0] * len(falses)},
    }


def toy_rows(benchmark: str, cfg: Mapping) -> dict[str, int]:
    rows = dict(benchmarks.get(benchmark).toy_rows)
    rows.update({k: int(v) for k, v in (cfg.get("rows") or {}).items()})
    return rows


def generate_toy(benchmark: str, cfg: Mapping) -> dict[str, list[dict]]:
    """Deterministic toy rows ``{split: rows}`` for one benchmark.

    cfg keys: ``seed`` (int, default 0), ``rows`` ({split: n}; for mmlu n is per subject),
    ``splits`` (default: the benchmark's standard splits), ``subjects`` (mmlu only; default
    :data:`TOY_MMLU_SUBJECTS`). gsm8k test questions never appear in train; mmlu's and truthfulqa_mc2's other
    splits (few-shot, probe) ask about facts their scored split does not, while the world has enough of them
    (100 per mmlu subject, 300 creatures).
    """
    seed = int(cfg.get("seed", 0))
    splits = list(cfg.get("splits") or benchmarks.get(benchmark).splits)
    rows = toy_rows(benchmark, cfg)
    if benchmark == "gsm8k":
        out: dict[str, list[dict]] = {}
        seen: set[str] = set()
        # test first, so that train excludes every test question
        for split in sorted(splits, key=lambda s: (s != "test", s)):
            rng = random.Random(f"gsm8k:{seed}:{split}")
            n = rows.get(split, 50)
            out[split] = []
            tries = 0
            while len(out[split]) < n:
                row = _gsm8k_row(rng)
                tries += 1
                if row["question"] in seen and tries < 100 * n:
                    continue
                seen.add(row["question"])
                out[split].append(row)
        return {s: out[s] for s in splits}
    if benchmark == "mmlu":
        subjects = list(cfg.get("subjects") or TOY_MMLU_SUBJECTS)
        return _mmlu_split_rows(subjects, rows, seed, splits)
    if benchmark == "truthfulqa_mc2":
        specs = _truthfulqa_specs()
        out, used = {}, set()
        # the scored split first; every other split (a probe split) asks about creatures no earlier split asks
        # about, while enough are left (then it cycles over the rest, or over all when none is left)
        for split in sorted(splits, key=lambda s: (s != benchmarks.get(benchmark).eval_split, s)):
            rng = random.Random(f"truthfulqa:{seed}:{split}")
            order = list(range(len(specs)))
            rng.shuffle(order)
            if split != benchmarks.get(benchmark).eval_split:
                order = [i for i in order if i not in used] or order
            n = rows.get(split, 40)
            out[split] = [_truthfulqa_row(rng, specs[order[i % len(order)]]) for i in range(n)]
            used.update(order[:n])
        return {s: out[s] for s in splits}
    raise ValueError(f"unknown benchmark {benchmark!r} (expected one of {BENCHMARKS})")


def _mmlu_prompt(subject: str, items) -> str:
    """The text lm-eval's mmlu task shows: a description line, then items ending in 'Answer: X'."""
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    blocks = []
    for q, choices, ans in items:
        opts = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices))
        blocks.append(f"{q}\n{opts}\nAnswer: {'ABCD'[ans]}")
    return head + "\n\n".join(blocks)


def _benchmarks_section(cfg_all: Mapping | None) -> dict:
    if not cfg_all:
        return {}
    return dict(cfg_all.get("benchmarks", cfg_all))


def _eval_rows(cfg_all: Mapping | None, data_dir) -> dict[str, list[dict]]:
    """Rows the corpus must leave out: every split but gsm8k train, from ``data_dir`` files and/or toy configs."""
    bench = _benchmarks_section(cfg_all)
    out: dict[str, list[dict]] = {b: [] for b in BENCHMARKS}
    for b in BENCHMARKS:
        c = bench.get(b) or {}
        splits = list(c.get("splits") or benchmarks.get(b).splits)
        held_out = [s for s in splits if not (b == "gsm8k" and s == "train")]
        if data_dir is not None:
            for s in held_out:
                path = Path(data_dir) / b / f"{s}.jsonl"
                if path.is_file():
                    out[b] += list(read_jsonl(path))
        if c.get("source", "toy") == "toy":
            gen = generate_toy(b, c)
            out[b] += [r for s in held_out for r in gen.get(s, [])]
    return out


def covered_facts(coverage: float, seed: int) -> dict[str, set[str]]:
    """Per fact family, the entities whose fact the corpus states: each with probability ``coverage``.

    One uniform draw per fact from the stream ``coverage:{seed}``, so a larger coverage keeps every
    fact a smaller one covers and adds others.
    """
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"fact_coverage must be in [0, 1], got {coverage}")
    rng = random.Random(f"coverage:{seed}")
    return {f: {e for e, _ in facts if rng.random() < coverage} for f, facts in WORLD.items()}


def toy_corpus(cfg_all: Mapping | None = None, seed: int = 0, n_docs: int = 3000, data_dir=None,
               answer_line_frac: float = 0.0, fact_coverage: float = 1.0, answer_line_names: int = 0) -> list[str]:
    """Pretraining text for the toy base model, from the toy world with its own random stream.

    ``cfg_all`` is the whole config or its ``benchmarks`` section. The evaluation rows (gsm8k
    test questions, mmlu dev/test rows as question + choices, truthfulqa questions in Q/A form)
    never enter the corpus: they are read from ``data_dir/{benchmark}/{split}.jsonl`` when given
    and regenerated from the toy benchmark configs otherwise (both, when both exist). The random
    stream is keyed ``corpus:{seed}``, distinct from every benchmark generator's stream.

    The mix (by document count):
    * 35% worked gsm8k-style problems ``"Question: ...\nAnswer: 3 + 4 = 7.\nThe answer is 7."``:
      the language and the arithmetic of the problems. Some end with GSM8K's own answer line
      instead, ``"...\n#### 7"``: every problem about one of the first ``answer_line_names`` of
      :data:`NAMES` (a habit tied to the context, which a greedy base reproduces on those
      problems), and a fraction ``answer_line_frac`` of the others (a minority habit a greedy base
      does not show but its samples do, so a strict reward has variance). Both default to 0: none.
      Which documents get the random line is drawn from a separate stream
      (``corpus-answer-line:{seed}``), so every other document, and the problems themselves, are
      the same for every setting.
    * 10% arithmetic facts (``"7 + 5 = 12."``, small sums, differences and products).
    * 25% statements of covered facts (three per document), 15% mmlu-style multiple-choice
      practice on covered facts (lm-eval's prompt shape, the question in other words than the
      mmlu row's, :data:`MC_PRACTICE`, so never an evaluation row),
      15% ``Q: ...\nA: ...`` practice on covered facts whose question is not a truthfulqa
      question. A fact is covered with probability ``fact_coverage`` (:func:`covered_facts`): the
      base model knows those and guesses the rest, on mmlu and truthfulqa alike.
    """
    if not 0.0 <= answer_line_frac <= 1.0:
        raise ValueError(f"answer_line_frac must be in [0, 1], got {answer_line_frac}")
    if not 0 <= answer_line_names <= len(NAMES):
        raise ValueError(f"answer_line_names must be in [0, {len(NAMES)}], got {answer_line_names}")
    keyed_names = set(NAMES[:answer_line_names])
    rng = random.Random(f"corpus:{seed}")
    line_rng = random.Random(f"corpus-answer-line:{seed}")
    covered = covered_facts(fact_coverage, seed)
    held = _eval_rows(cfg_all, data_dir)
    gsm_excluded = {r["question"] for r in held["gsm8k"]}
    mmlu_excluded = {(r["question"], tuple(r["choices"])) for r in held["mmlu"]}
    tqa_questions = {r["question"] for r in held["truthfulqa_mc2"]}

    templates = {fam: (q, st) for fam, q, st in MMLU_FAMILIES.values()}
    templates["creature"] = (TQA_QUESTION, TQA_STATEMENT)
    known = [(fam, e, v) for fam, facts in WORLD.items() for e, v in facts if e in covered[fam]]
    statements = [templates[fam][1].format(e=e, v=v) for fam, e, v in known]
    qa_practice = [(templates[fam][0].format(e=e), templates[fam][1].format(e=e, v=v)) for fam, e, v in known]
    qa_practice = [(q, a) for q, a in qa_practice if q not in tqa_questions]
    mc_specs = {s: [(MC_PRACTICE[fam].format(e=e), v, CHOICES[fam]) for f, e, v in known if f == fam]
                for s, (fam, _, _) in MMLU_FAMILIES.items()}
    mc_subjects = [s for s in TOY_MMLU_SUBJECTS if mc_specs[s]]

    docs: list[str] = []
    for _ in range(n_docs):
        u = rng.random()
        if u < 0.35:
            q, steps = _gsm8k_problem(rng)
            if q in gsm_excluded:
                continue
            keyed = q.split(" ", 1)[0] in keyed_names
            if keyed or (answer_line_frac > 0 and line_rng.random() < answer_line_frac):
                last = f"#### {steps[-1][3]}"  # the gsm8k answer line (_gsm8k_row)
            else:
                last = f"The answer is {steps[-1][3]}."
            docs.append(f"Question: {q}\nAnswer: {_working(steps)}\n{last}")
        elif u < 0.45:
            a, b = rng.randint(0, 18), rng.randint(0, 9)
            op = rng.choice("+-*")
            if op == "-" and b > a:
                a, b = b, a
            if op == "*":
                a, b = rng.randint(0, 9), rng.randint(0, 9)
            docs.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}.")  # noqa: S307 (digits and one operator)
        elif u < 0.70:
            if len(statements) >= 3:
                docs.append(" ".join(rng.sample(statements, 3)))
        elif u < 0.85:
            if mc_subjects:
                subject = rng.choice(mc_subjects)
                items = []
                for _ in range(rng.randint(1, 3)):
                    q, a, pool = rng.choice(mc_specs[subject])
                    item = _mc_item(q, a, pool)
                    if (item[0], tuple(item[1])) not in mmlu_excluded:
                        items.append(item)
                if items:
                    docs.append(_mmlu_prompt(subject, items))
        elif len(qa_practice) >= 3:
            k = rng.randint(1, 3)
            docs.append("\n\n".join(f"Q: {q}\nA: {a}" for q, a in rng.sample(qa_practice, k)))
    return docs
