"""The diagnostics' three fixed state sets, and one model measured against the base model on them.

* ``dataset``: GSM8K test prompts with their gold solutions (+ EOS), encoded exactly as SFT encodes a training
  example (:func:`statepost.train.states.encode_sft_example`): the states SFT trains on, on held-out problems.
* ``own``: the model's own completions of the same prompts, sampled at ``temperature`` with a fixed seed and ended
  where training's learner states end them (:class:`statepost.train.states.LearnerStates`: at EOS or the GSM8K task's
  stop strings, the stop token kept): the states on-policy methods train on.
* ``off_task``: probe items of each retention benchmark that has a ``probe_split`` (a split the evaluation never
  reads: no score is computed on these states), each as its prompt and a correct answer in lm-eval's zero-shot
  format, the prompt rendered from the task file lm-eval runs: TruthfulQA mc2's question after its six-question
  preamble, then ``" "`` + the first true answer of ``mc2_targets``; MMLU's subject description, question and
  lettered choices, then ``" "`` + the correct letter (the continuation lm-eval scores). No EOS. Held together and
  per benchmark. A probe row whose question is also in a split the evaluation reads (scored or few-shot) is left
  out before the draw and counted (``overlap_dropped``), so probe and scored items never share a question.

The rows are drawn once with ``seed`` (``prompts`` of them, in file order): GSM8K's from its evaluation split, the
off-task ones from the probe split. So every model sees the same states in ``dataset`` and ``off_task``, and its
own samples of the same prompts in ``own``. A sequence longer than ``max_length`` (prompt + ``max_new_tokens`` for
``own``) is left out and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from statepost import benchmarks as bench_facts
from statepost import gsm8k
from statepost.data import load_split
from statepost.diagnostics.measures import STATS, Totals, state_stats
from statepost.train.batch import StateBatch, collate_states
from statepost.train.states import LearnerStates, encode_sft_example

log = logging.getLogger(__name__)

OWN_METRICS = ("accuracy", "completion_len", "finished_frac", "stop_frac")  # LearnerStates' batch metrics kept


def pick_rows(rows: list, n: int, seed: int) -> list:
    """``n`` rows drawn with ``seed`` (all when there are fewer), in file order."""
    if n >= len(rows):
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return [rows[i] for i in keep]


def probe_rows(data_dir, benchmark: str, split: str) -> tuple[list[dict], int]:
    """The rows of ``benchmark``'s probe ``split`` whose question no split the evaluation reads (its scored split,
    its few-shot split) holds, and how many were left out for that."""
    read = [s for s in bench_facts.get(benchmark).splits if s != split]
    scored = {r["question"] for s in read for r in load_split(Path(data_dir) / benchmark, benchmark, s)}
    rows = load_split(Path(data_dir) / benchmark, benchmark, split)
    kept = [r for r in rows if r["question"] not in scored]
    return kept, len(rows) - len(kept)


def _task(benchmark: str, subject: str | None = None) -> dict:
    """The task config lm-eval runs for ``benchmark`` (its include chain resolved)."""
    tasks = bench_facts.lm_eval_tasks_dir()
    if benchmark == "mmlu":
        return bench_facts.load_task(tasks / "mmlu" / "default" / f"mmlu_{subject}.yaml", tasks)
    return bench_facts.load_task(bench_facts.TASKS_DIR / f"{benchmark}.yaml.template", tasks)


def off_task_pair(benchmark: str, row: dict, cache: dict) -> tuple[str, str]:
    """``(context, continuation)`` of a retention row: lm-eval's zero-shot context and a correct answer."""
    from lm_eval.utils import apply_template  # jinja2 rendering as lm-eval renders doc_to_text

    key = (benchmark, row.get("subject"))
    if key not in cache:
        cache[key] = _task(benchmark, row.get("subject"))
    task = cache[key]
    context = apply_template(task["doc_to_text"], row)
    if benchmark == "truthfulqa_mc2":
        targets = row["mc2_targets"]
        answer = next(c for c, label in zip(targets["choices"], targets["labels"]) if label == 1)
    elif benchmark == "mmlu":
        context = task.get("description", "") + context
        answer = task["doc_to_choice"][row["answer"]]
    else:
        raise ValueError(f"off-task states: no format for benchmark {benchmark!r}")
    return context, task.get("target_delimiter", " ") + answer


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of context + continuation, each encoded on its own without special tokens, and the context length."""
    ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    return ctx + cont, len(ctx)


def in_batches(seqs: list[tuple[list[int], int]], batch_size: int, pad_id: int) -> Iterator[StateBatch]:
    for i in range(0, len(seqs), batch_size):
        yield collate_states(seqs[i : i + batch_size], pad_id)


def measure(model, base, batches, device, desc: str, extra: tuple[str, ...] = ()) -> dict:
    """Token means of the diagnostics over ``batches`` (each batch's ``metrics`` named in ``extra`` are averaged
    over sequences), with ``sequences`` and ``time_s``."""
    t0, totals, seqs, sums = time.perf_counter(), Totals(), 0, dict.fromkeys(extra, 0.0)
    for batch in tqdm(batches, desc=desc, leave=False):
        totals.add(state_stats(model, base, batch.to(device)))
        n = int(batch.input_ids.shape[0])
        seqs += n
        for k in extra:
            sums[k] += batch.metrics[k] * n
    out = {**totals.means(), "sequences": seqs, **{k: (v / seqs if seqs else None) for k, v in sums.items()}}
    return {**out, "time_s": round(time.perf_counter() - t0, 3)}


def own_batches(model, tokenizer, rows: list[dict], settings: dict) -> tuple[list[StateBatch], int]:
    """The model's own completions of ``rows``' prompts in batches, as training's learner states draw them."""
    source = LearnerStates(
        tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows],
        temperature=settings["temperature"], top_p=1.0, max_new_tokens=settings["max_new_tokens"],
        samples_per_prompt=1, refresh_every=1, batch_size=min(settings["batch_size"], len(rows)), grad_accum=1,
        max_length=settings["max_length"], seed=settings["seed"], stop=None,
    )  # fmt: skip
    return [source.generate(model) for _ in range(source.order.steps_per_epoch)], source.n_skipped


def diagnose(model_dir, base_dir, data_dir, settings: dict, benchmarks: list[str], model_name: str,
             probe_splits: dict[str, str]) -> dict:
    """Measure the model in ``model_dir`` against the base in ``base_dir`` on every state set the configured
    ``benchmarks`` give (``dataset`` and ``own`` need gsm8k, ``off_task`` a retention benchmark with a probe split,
    ``probe_splits``: ``{benchmark: split}``; a set without its data is None). Returns the record
    ``results/{experiment}/diagnostics/{model}.json`` holds (results/README.md)."""
    from statepost.models import load_frozen, load_tokenizer

    t_start = time.perf_counter()
    device = settings["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    same = Path(model_dir).resolve() == Path(base_dir).resolve()
    model = load_frozen(model_dir, torch.float32, device)
    base = model if same else load_frozen(base_dir, torch.float32, device)
    tokenizer = load_tokenizer(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n, seed, bs, max_len = settings["prompts"], settings["seed"], settings["batch_size"], settings["max_length"]


    def fitting(seqs):
        kept = [s for s in seqs if len(s[0]) <= max_len]
        return kept, len(seqs) - len(kept)

    sets: dict[str, dict | None] = {"dataset": None, "own": None, "off_task": None}
    if bench_facts.TARGET in benchmarks:
        target = bench_facts.get(bench_facts.TARGET)
        rows = pick_rows(load_split(Path(data_dir) / target.name, target.name, target.eval_split), n, seed)
        seqs, skipped = fitting([encode_sft_example(tokenizer, r["question"], r["answer"]) for r in rows])
        sets["dataset"] = {**measure(model, base, in_batches(seqs, bs, pad), device, "dataset"), "skipped": skipped}
        t0 = time.perf_counter()
        batches, skipped = own_batches(model, tokenizer, rows, {**settings, "device": device})
        gen_time = time.perf_counter() - t0
        sets["own"] = {**measure(model, base, batches, device, "own", OWN_METRICS), "skipped": skipped,
                       "generation_time_s": round(gen_time, 3)}  # fmt: skip
    probed = [b for b in benchmarks if bench_facts.get(b).role == "retention" and probe_splits.get(b)]
    if probed:
        cache, per, skipped = {}, {}, 0
        for bench in probed:
            rows, dropped = probe_rows(data_dir, bench, probe_splits[bench])
            pairs = [off_task_pair(bench, r, cache) for r in pick_rows(rows, n, seed)]
            seqs, left = fitting([encode_pair(tokenizer, *pair) for pair in pairs])
            per[bench] = {**measure(model, base, in_batches(seqs, bs, pad), device, bench), "skipped": left,
                          "split": probe_splits[bench], "overlap_dropped": dropped}  # fmt: skip
            skipped += left
        sets["off_task"] = {**_pooled(per), "skipped": skipped, "benchmarks": per}
    for name, s in sets.items():
        if s is not None:
            log.info("%s %s: KL(model||base) %s, KL(base||model) %s, NLL model %s / base %s, entropy %s, %d tokens",
                     model_name, name, *(_fmt(s[k]) for k in STATS), s["tokens"])
    return {
        "model": model_name,
        "model_dir": str(model_dir),
        "base_dir": str(base_dir),
        "settings": {**settings, "device": device},
        "stop": list(gsm8k.task_stop_sequences()),
        "sets": sets,
        "time_s": round(time.perf_counter() - t_start, 3),
    }


def _pooled(per: dict[str, dict]) -> dict:
    """Token means over several benchmarks' states (each benchmark's means weighted by its tokens)."""
    tokens = sum(p["tokens"] for p in per.values())
    out = {k: sum(p[k] * p["tokens"] for p in per.values() if p["tokens"]) / tokens if tokens else None
           for k in STATS}  # fmt: skip
    return {**out, "tokens": tokens, "sequences": sum(p["sequences"] for p in per.values()),
            "time_s": round(sum(p["time_s"] for p in per.values()), 3)}  # fmt: skip


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
