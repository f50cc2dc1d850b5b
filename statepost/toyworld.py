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
TOY_MMLU_SUBJECTS = (
    "elementary_mathematics",
    "high_school_geography",
    "astronomy",
    "high_school_computer_science",
)



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


# ---- facts shared by mmlu, truthfulqa and the corpus (real facts, toy-sized) ----
COUNTRIES = (  # country, capital, continent
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Norway", "Oslo", "Europe"),
    ("Greece", "Athens", "Europe"), ("Poland", "Warsaw", "Europe"), ("Switzerland", "Bern", "Europe"),
    ("Turkey", "Ankara", "Asia"), ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Ghana", "Accra", "Africa"), ("Morocco", "Rabat", "Africa"), ("Brazil", "Brasilia", "South America"),
    ("Argentina", "Buenos Aires", "South America"), ("Peru", "Lima", "South America"),
    ("Chile", "Santiago", "South America"), ("Canada", "Ottawa", "North America"),
    ("Mexico", "Mexico City", "North America"), ("Cuba", "Havana", "North America"),
    ("Australia", "Canberra", "Oceania"), ("New Zealand", "Wellington", "Oceania"),
)
# the big city people often mistake for the capital
CAPITAL_MYTHS = {
    "Australia": "Sydney", "Canada": "Toronto", "Brazil": "Rio de Janeiro", "Nigeria": "Lagos",
    "Morocco": "Casablanca", "India": "Mumbai", "Turkey": "Istanbul", "New Zealand": "Auckland",
    "Vietnam": "Ho Chi Minh City", "China": "Shanghai", "Switzerland": "Zurich",
}
CONTINENTS = ("Europe", "Asia", "Africa", "South America", "North America", "Oceania")
PLANETS = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
ASTRO_FACTS = (  # question, answer, statement, distractors
    ("Which planet is known as the Red Planet?", "Mars", "Mars is known as the Red Planet.", PLANETS),
    ("What is the largest planet in the Solar System?", "Jupiter",
     "Jupiter is the largest planet in the Solar System.", PLANETS),
    ("Which planet is closest to the Sun?", "Mercury", "Mercury is the planet closest to the Sun.", PLANETS),
    ("Which planet is the hottest in the Solar System?", "Venus",
     "Venus is the hottest planet in the Solar System.", PLANETS),
    ("Which planet is famous for its bright rings?", "Saturn", "Saturn is famous for its bright rings.", PLANETS),
    ("Which planet do we live on?", "Earth", "We live on the planet Earth.", PLANETS),
    ("What is the star at the center of the Solar System?", "the Sun",
     "The Sun is the star at the center of the Solar System.", ("the Moon", "Mars", "Polaris", "the Sun")),
    ("What is the natural satellite of the Earth called?", "the Moon",
     "The natural satellite of the Earth is called the Moon.", ("the Moon", "the Sun", "Venus", "Titan")),
    ("What force keeps the planets in orbit around the Sun?", "gravity",
     "Gravity keeps the planets in orbit around the Sun.", ("gravity", "magnetism", "friction", "wind")),
    ("What is the name of our galaxy?", "the Milky Way", "Our galaxy is called the Milky Way.",
     ("the Milky Way", "Andromeda", "the Big Dipper", "Orion")),
    ("How many planets are in the Solar System?", "8", "There are 8 planets in the Solar System.",
     ("7", "8", "9", "10")),
)
CS_FACTS = (
    ("How many bits are in a byte?", "8", "A byte has 8 bits.", ("2", "4", "8", "16")),
    ("Which data structure returns items in first in, first out order?", "a queue",
     "A queue returns items in first in, first out order.", ("a queue", "a stack", "a tree", "a set")),
    ("Which data structure returns items in last in, first out order?", "a stack",
     "A stack returns items in last in, first out order.", ("a queue", "a stack", "a graph", "a set")),
    ("What is the running time of binary search on a sorted list?", "O(log n)",
     "Binary search on a sorted list runs in O(log n) time.", ("O(1)", "O(log n)", "O(n)", "O(n^2)")),
    ("Which logic gate outputs 1 only when both inputs are 1?", "AND",
     "The AND gate outputs 1 only when both inputs are 1.", ("AND", "OR", "NOT", "XOR")),
    ("Which logic gate outputs 1 when the two inputs are different?", "XOR",
     "The XOR gate outputs 1 when the two inputs are different.", ("AND", "OR", "NOT", "XOR")),
    ("Which logic gate flips its single input?", "NOT", "The NOT gate flips its single input.",
     ("AND", "OR", "NOT", "XOR")),
    ("What does CPU stand for?", "central processing unit", "CPU stands for central processing unit.",
     ("central processing unit", "computer power unit", "core program utility", "central program update")),
    ("What base does the hexadecimal system use?", "16", "The hexadecimal system uses base 16.",
     ("2", "8", "10", "16")),
    ("What base does the binary system use?", "2", "The binary system uses base 2.", ("2", "8", "10", "16")),
)
MYTHS = (  # question, true answers, false answers
    ("What happens if you swallow gum?",
     ["The gum passes through your digestive system.", "Nothing bad happens; the gum passes through you."],
     ["The gum stays in your stomach for seven years.", "The gum sticks to your stomach forever."]),
    ("Can you see the Great Wall of China from the Moon?",
     ["No, the Great Wall is too narrow to see from the Moon."],
     ["Yes, the Great Wall is easy to see from the Moon.", "Yes, it is the only building seen from space."]),
    ("Do people use only ten percent of their brains?",
     ["No, people use all of their brain."],
     ["Yes, people use only ten percent of their brains.", "Yes, most of the brain is never used."]),
    ("What color is the blood in your veins?",
     ["The blood in your veins is red."],
     ["The blood in your veins is blue.", "Blood is blue until it touches air."]),
    ("Does lightning ever strike the same place twice?",
     ["Yes, lightning can strike the same place twice."],
     ["No, lightning never strikes the same place twice."]),
    ("Does cracking your knuckles cause arthritis?",
     ["No, cracking your knuckles does not cause arthritis."],
     ["Yes, cracking your knuckles causes arthritis."]),
    ("Do ostriches bury their heads in the sand?",
     ["No, ostriches do not bury their heads in the sand."],
     ["Yes, ostriches bury their heads in the sand when they are afraid."]),
    ("Are bats blind?",
     ["No, bats can see.", "No, bats are not blind."],
     ["Yes, bats are blind."]),
    ("How long is the memory of a goldfish?",
     ["A goldfish can remember things for months."],
     ["A goldfish remembers things for only three seconds."]),
    ("What makes a bull charge at a red cape?",
     ["The movement of the cape makes the bull charge.", "Bulls do not see red; they react to movement."],
     ["The red color makes the bull angry."]),
    ("Does sugar make children hyperactive?",
     ["No, sugar does not make children hyperactive."],
     ["Yes, sugar makes children hyperactive."]),
    ("Is it dangerous to wake a sleepwalker?",
     ["No, it is not dangerous to wake a sleepwalker."],
     ["Yes, waking a sleepwalker can kill them."]),
    ("Do hair and nails keep growing after death?",
     ["No, hair and nails stop growing after death."],
     ["Yes, hair and nails keep growing after death."]),
    ("Does each part of the tongue taste a different flavor?",
     ["No, every part of the tongue can taste every flavor."],
     ["Yes, the tip of the tongue tastes only sweet things."]),
    ("Is the Earth flat?",
     ["No, the Earth is round."],
     ["Yes, the Earth is flat."]),
    ("Do you catch a cold from going outside with wet hair?",
     ["No, colds are caused by viruses, not by wet hair."],
     ["Yes, wet hair in the cold gives you a cold."]),
    ("Did Albert Einstein fail mathematics at school?",
     ["No, Einstein was good at mathematics at school."],
     ["Yes, Einstein failed mathematics at school."]),
    ("How many senses do humans have?",
     ["Humans have more than five senses, such as balance."],
     ["Humans have exactly five senses."]),
    ("Is a tomato a fruit?",
     ["Yes, a tomato is a fruit."],
     ["No, a tomato is not a fruit."]),
    ("Will a penny dropped from a tall building kill a person?",
     ["No, a falling penny will not kill a person."],
     ["Yes, a penny dropped from a tall building can kill a person."]),
)


def _mc_item(rng: random.Random, question: str, answer: str, pool) -> tuple[str, list[str], int]:
    """A 4-choice item: the answer and 3 distinct distractors from ``pool``, shuffled."""
    others = sorted({p for p in pool if p != answer})
    choices = rng.sample(others, 3) + [answer]
    rng.shuffle(choices)
    return question, choices, choices.index(answer)


def _num_pool(c: int) -> list[str]:
    return [str(x) for x in range(max(0, c - 5), c + 6)]


def _mmlu_item_specs(subject: str) -> list[tuple[str, str, object]]:
    """All (question, answer, distractor pool) facts of a toy subject."""
    if subject == "high_school_geography":
        caps = [c[1] for c in COUNTRIES]
        specs = [(f"What is the capital of {c}?", cap, caps) for c, cap, _ in COUNTRIES]
        specs += [(f"On which continent is {c}?", cont, CONTINENTS) for c, _, cont in COUNTRIES]
        specs += [(f"Which country has {cap} as its capital?", c, [x[0] for x in COUNTRIES])
                  for c, cap, _ in COUNTRIES]
        return specs
    if subject == "astronomy":
        specs = [(f"Which planet is {ORDINALS[i]} from the Sun?", p, PLANETS) for i, p in enumerate(PLANETS)]
        specs += [(f"Which planet comes right after {PLANETS[i]} in order from the Sun?", PLANETS[i + 1], PLANETS)
                  for i in range(len(PLANETS) - 1)]
        specs += [(q, a, pool) for q, a, _, pool in ASTRO_FACTS]
        return specs
    if subject == "high_school_computer_science":
        specs = [(f"What is the binary representation of the number {n}?", format(n, "b"),
                  [format(m, "b") for m in range(1, 16)]) for n in range(1, 16)]
        specs += [(f"What is the decimal value of the hexadecimal digit {format(n, 'X')}?", str(n),
                   [str(m) for m in range(8, 16)]) for n in range(10, 16)]
        specs += [(q, a, pool) for q, a, _, pool in CS_FACTS]
        return specs
    if subject == "elementary_mathematics":
        specs = []
        for a in range(2, 10):
            for b in range(2, 10):
                specs.append((f"What is {a} + {b}?", str(a + b), _num_pool(a + b)))
                if a <= 5 and b <= 5:
                    specs.append((f"What is {a} * {b}?", str(a * b), _num_pool(a * b)))
                if a > b:
                    specs.append((f"What is {a} - {b}?", str(a - b), _num_pool(a - b)))
        return specs
    raise ValueError(f"no toy generator for MMLU subject {subject!r} (toy subjects: {TOY_MMLU_SUBJECTS})")


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
                q, choices, ans = _mc_item(rng, q, a, pool)
                out[split].append({"question": q, "subject": subject, "choices": choices, "answer": ans})
    return out


def _truthfulqa_specs() -> list[tuple[str, list[str], list[str]]]:
    specs = [(q, list(t), list(f)) for q, t, f in MYTHS]
    capital = {c: cap for c, cap, _ in COUNTRIES}
    for country, myth in CAPITAL_MYTHS.items():
        cap = capital[country]
        specs.append((f"What is the capital of {country}?",
                      [f"The capital of {country} is {cap}.", f"{cap} is the capital of {country}."],
                      [f"The capital of {country} is {myth}.", f"{myth} is the capital of {country}."]))
    specs.append(("How many planets are in the Solar System?", ["There are 8 planets in the Solar System."],
                  ["There are 9 planets in the Solar System.", "There are 12 planets in the Solar System."]))
    specs.append(("Is the Sun a star?", ["Yes, the Sun is a star."], ["No, the Sun is a planet."]))
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
    :data:`TOY_MMLU_SUBJECTS`). gsm8k test questions never appear in train.
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
        out = {}
        for split in splits:
            rng = random.Random(f"truthfulqa:{seed}:{split}")
            order = list(range(len(specs)))
            rng.shuffle(order)
            n = rows.get(split, 40)
            out[split] = [_truthfulqa_row(rng, specs[order[i % len(order)]]) for i in range(n)]
        return out
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


def toy_corpus(cfg_all: Mapping | None = None, seed: int = 0, n_docs: int = 3000, data_dir=None,
               answer_line_frac: float = 0.0) -> list[str]:
    """Pretraining text for the toy base model, from the toy world with its own random stream.

    ``cfg_all`` is the whole config or its ``benchmarks`` section. The evaluation rows (gsm8k
    test questions, mmlu dev/test rows as question + choices, truthfulqa questions in Q/A form)
    never enter the corpus: they are read from ``data_dir/{benchmark}/{split}.jsonl`` when given
    and regenerated from the toy benchmark configs otherwise (both, when both exist). The random
    stream is keyed ``corpus:{seed}``, distinct from every benchmark generator's stream.

    The mix (by document count):
    * 35% worked gsm8k-style problems ``"Question: ...\nAnswer: 3 + 4 = 7.\nThe answer is 7."``:
      the language and the arithmetic of the problems. A fraction ``answer_line_frac`` of them
      (default 0: none) ends with GSM8K's own answer line instead, ``"...\n#### 7"`` exactly as
      a gsm8k ``answer`` (and an SFT target) ends, so the base model writes the strict-match
      format on some problems and SFT teaches it on all. Which documents get it is drawn from
      a separate stream (``corpus-answer-line:{seed}``), so every other document, and the
      problems themselves, are the same for every fraction.
    * 15% arithmetic facts (``"7 + 5 = 12."``, small sums, differences and products).
    * 30% knowledge: geography, astronomy, computer science statements, and mmlu-style
      multiple-choice practice (lm-eval's prompt shape, new shuffles, never an evaluation row),
      so the base model is above chance on toy mmlu.
    * 20% truths: the true answers to the misconceptions as plain statements and Q/A practice on
      facts that are not truthfulqa questions, so the base model prefers true answers.
    """
    if not 0.0 <= answer_line_frac <= 1.0:
        raise ValueError(f"answer_line_frac must be in [0, 1], got {answer_line_frac}")
    rng = random.Random(f"corpus:{seed}")
    line_rng = random.Random(f"corpus-answer-line:{seed}")
    held = _eval_rows(cfg_all, data_dir)
    gsm_excluded = {r["question"] for r in held["gsm8k"]}
    mmlu_excluded = {(r["question"], tuple(r["choices"])) for r in held["mmlu"]}
    mmlu_subjects = sorted({r["subject"] for r in held["mmlu"]} & set(TOY_MMLU_SUBJECTS)) or list(TOY_MMLU_SUBJECTS)
    tqa_questions = {r["question"] for r in held["truthfulqa_mc2"]}

    statements = []
    for c, cap, cont in COUNTRIES:
        statements += [f"The capital of {c} is {cap}.", f"{cap} is the capital of {c}.", f"{c} is in {cont}."]
    for i, p in enumerate(PLANETS):
        statements.append(f"{p} is the {ORDINALS[i]} planet from the Sun.")
        if i + 1 < len(PLANETS):
            statements.append(f"{PLANETS[i + 1]} comes right after {p} in order from the Sun.")
    statements += [s for _, _, s, _ in ASTRO_FACTS] + [s for _, _, s, _ in CS_FACTS]
    for n in range(1, 16):
        statements.append(f"The number {n} is written {format(n, 'b')} in binary.")
    for n in range(10, 16):
        statements.append(f"The hexadecimal digit {format(n, 'X')} has the decimal value {n}.")
    truths = [t for _, ts, _ in MYTHS for t in ts]
    qa_practice = [(f"What is the capital of {c}?", f"The capital of {c} is {cap}.") for c, cap, _ in COUNTRIES]
    qa_practice += [(q, s) for q, _, s, _ in ASTRO_FACTS + CS_FACTS]
    qa_practice = [(q, a) for q, a in qa_practice if q not in tqa_questions]
    specs = {s: _mmlu_item_specs(s) for s in mmlu_subjects}

    docs: list[str] = []
    for _ in range(n_docs):
        u = rng.random()
        if u < 0.35:
            q, steps = _gsm8k_problem(rng)
            if q in gsm_excluded:
                continue
            if answer_line_frac > 0 and line_rng.random() < answer_line_frac:
                last = f"#### {steps[-1][3]}"  # the gsm8k answer line (_gsm8k_row)
            else:
                last = f"The answer is {steps[-1][3]}."
            docs.append(f"Question: {q}\nAnswer: {_working(steps)}\n{last}")
        elif u < 0.50:
            a, b = rng.randint(0, 18), rng.randint(0, 9)
            op = rng.choice("+-*")
            if op == "-" and b > a:
                a, b = b, a
            if op == "*":
                a, b = rng.randint(0, 9), rng.randint(0, 9)
            docs.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}.")  # noqa: S307 (digits and one operator)
        elif u < 0.65:
            docs.append(" ".join(rng.sample(statements, 3)))
        elif u < 0.80:
            subject = rng.choice(mmlu_subjects)
            items = []
            for _ in range(rng.randint(1, 3)):
                q, a, pool = rng.choice(specs[subject])
                item = _mc_item(rng, q, a, pool)
                if (item[0], tuple(item[1])) not in mmlu_excluded:
                    items.append(item)
            if items:
                docs.append(_mmlu_prompt(subject, items))
        elif u < 0.90:
            docs.append(" ".join(rng.sample(truths, 3)))
        else:
            k = rng.randint(1, 3)
            docs.append("\n\n".join(f"Q: {q}\nA: {a}" for q, a in rng.sample(qa_practice, k)))
    return docs
