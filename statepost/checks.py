"""Checks across keys that a JSON schema cannot express: settings that would make a job fail or a run meaningless.

:func:`references` and :func:`check_all` run from :func:`statepost.config.validate` when Snakemake builds the DAG,
after the schema filled every default, so a mistake costs seconds instead of a failed (or, worse, a silently
meaningless) job.
Every error names the key path. What is checked, and why:

* every number is finite (YAML reads ``.nan`` and ``.inf``, and ``.inf`` passes ``exclusiveMinimum``);
  a learning rate is below 1 (AdamW moves each weight by about ``lr`` per step);
* the toy model's shapes are ones a Qwen3 can build (heads divide the hidden size, KV heads divide the
  heads, an even head size for the rotary embedding) and its positions hold every sequence it is given;
* the data can fill what is asked of it, where the row counts are known when the DAG is built (toy
  benchmarks, ``states.max_rows``): one optimiser step of ``batch_size * grad_accum * processes``
  items, the few-shot examples of an evaluation;
* a probe split (the diagnostics' off-task states) is a prepared split of a retention benchmark that the
  evaluation never reads;
* a trajectory step comes before a run's last step (where ``max_steps`` sets it);
* a learner's completions fit ``optim.max_length`` beside a prompt of at least :data:`MIN_PROMPT_TOKENS`;
  learner states mixed with gold solutions (``learner_frac`` < 1) have one state per prompt either way and a
  signal that needs no samples of the policy;
* a run does not train on the split every model is scored on, reads rows with text answers, and is
  not a fixed point of its signal (its own teacher) or a signal whose estimate is degenerate;
* claim roles name runs that play that part, and the thresholds do not contradict each other;
* a factorial's runs fill the cells they are named for and share one budget (init, optim, teacher), and its
  dose-response runs differ in lambda only;
* evaluation on ``cuda`` gets a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import benchmarks as bench_facts
from .io import ConfigError
from .toyworld import toy_rows

# Model names the DAG uses for things that are not runs, and rule names a run must not shadow.
RESERVED = {"base", "all", "base_model", "evaluate", "report", "data", "teacher", "init"}

# A learner prompt is "Question: {question}\nAnswer:" (statepost.gsm8k.format_prompt). Both tokenizers the
# workflow uses (Qwen3's and the toy's, which copies its pre-tokenizer) split text into pre-tokens by Qwen's
# regex before any BPE merge, and merges never cross a pre-token boundary. That regex keeps "Question", ":",
# the question (at least one pre-token, which may take the newline), "Answer" and ":" apart, so every prompt
# is at least 5 tokens, whatever the question (tests/test_config.py checks this with the toy's pre-tokenizer).
MIN_PROMPT_TOKENS = 5


def fail(key: str, msg: str):
    raise ConfigError(f"config key {key}: {msg}")


def check_all(config: dict, explicit_roles=()) -> None:
    """Every check below but :func:`references`, which :func:`statepost.config.validate` runs first (then the runs'
    order, which refuses a cycle); ``explicit_roles``: the claim roles the config sets itself (not schema defaults)."""
    finite_numbers(config, [])
    toy_model(config)
    benchmarks(config)
    for run, cfg in config.get("runs", {}).items():
        run_checks(config, run, cfg)
    claims(config, set(explicit_roles))
    factorial(config)
    if config["evaluation"]["device"] == "cuda" and config["resources"]["evaluate"]["gpu"] < 1:
        fail("evaluation.device", "cuda, but resources.evaluate.gpu is 0: the evaluation jobs get no GPU "
             "(give them one, or use device: cpu or auto)")  # fmt: skip


def references(config: dict) -> None:
    """Names that must name something: the splits every evaluation reads, a run's init, data, split and teacher;
    and run names not taken by the workflow (a run's own pairings: :func:`run_entry`)."""
    benchmarks = config["benchmarks"]
    for name, bench in benchmarks.items():
        test_split, shot_split = bench_facts.get(name).eval_split, bench_facts.get(name).fewshot_split
        needed = [test_split] + ([shot_split] if shot_split and bench["eval"]["num_fewshot"] > 0 else [])
        for split in needed:
            if split not in bench["splits"]:
                raise ConfigError(
                    f"config key benchmarks.{name}.splits: {name} is evaluated on '{test_split}'"
                    + (f" with few-shot examples from '{shot_split}'" if shot_split else "")
                    + f"; add '{split}' to the splits"
                )
    evaluation = config["evaluation"]
    if evaluation["backend"] == "vllm" and evaluation["device"] == "cpu":
        raise ConfigError("config key evaluation.backend: vllm runs on GPUs only, but evaluation.device is cpu")
    runs = config.get("runs", {})
    models = {"base", *runs}
    for run, cfg in runs.items():
        where = f"runs.{run}"
        if run in RESERVED:
            raise ConfigError(f"config key {where}: '{run}' is a reserved name; choose another run name")
        known_model(f"{where}.init", cfg["init"], models)
        states, signal = cfg["states"], cfg["signal"]
        if states["data"] not in benchmarks:
            raise ConfigError(f"config key {where}.states.data: benchmark '{states['data']}' is not configured")
        if states["split"] not in benchmarks[states["data"]]["splits"]:
            raise ConfigError(
                f"config key {where}.states.split: '{states['split']}' is not among "
                f"benchmarks.{states['data']}.splits"
            )
        if signal.get("teacher"):
            known_model(f"{where}.signal.teacher", signal["teacher"], models)


def known_model(key: str, name: str, models: set) -> None:
    if name not in models:
        fail(key, f"'{name}' names no model (known: {', '.join(sorted(models))})")


def on_policy(where: str, states: dict, signal: dict) -> None:
    """Learner-state settings under which a signal's estimate would be degenerate or biased.

    The reward signal's policy gradient and the sampled teacher-KL estimator take expectations
    over the policy's own samples: they are unbiased only for samples drawn at temperature 1 and
    top_p 1 from the current weights (a reward signal corrects reused rollouts with the recorded
    sampling-time log-probs; the sampled estimator cannot). Group-normalised advantages need two
    samples per prompt or every advantage is 0.
    """
    kind = signal["type"]
    uses_samples = kind == "reward" or (kind == "teacher_kl" and signal["estimator"] == "sampled")
    what = "the reward signal's policy gradient" if kind == "reward" else "the sampled teacher-KL estimator"
    if kind == "reward" and states["samples_per_prompt"] < 2:
        raise ConfigError(
            f"config key {where}.states.samples_per_prompt: advantages are rewards minus the mean of each "
            "prompt's group of samples; with 1 sample per prompt every advantage is 0 and nothing is learned "
            "(set 2 or more)"
        )
    for key in ("temperature", "top_p"):
        if uses_samples and states[key] != 1.0:
            raise ConfigError(
                f"config key {where}.states.{key}: {what} assumes samples of the policy itself "
                f"(temperature 1, top_p 1); {key} {states[key]} samples another distribution and biases it"
            )
    if kind == "teacher_kl" and signal["estimator"] == "sampled" and states["refresh_every"] != 1:
        raise ConfigError(
            f"config key {where}.states.refresh_every: the sampled teacher-KL estimator needs fresh samples "
            "of the current weights at every step (refresh_every 1), or use estimator: full"
        )


def finite_numbers(node, keys: list[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            finite_numbers(v, [*keys, str(k)])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            finite_numbers(v, [*keys, str(i)])
    elif isinstance(node, float) and not math.isfinite(node):
        fail(".".join(keys), f"{node} is not a finite number")


def _lr(key: str, lr: float) -> None:
    if lr >= 1:
        fail(key, f"{lr} is not a learning rate AdamW can train with (each step moves every weight by about lr, "
             "far more than the weights themselves); use a value below 1")  # fmt: skip


def toy_model(config: dict) -> None:
    base = config["base_model"]
    if base["source"] != "toy":
        return
    hidden, heads, kv = base["hidden_size"], base["num_heads"], base["num_kv_heads"]
    if hidden % heads:
        fail("base_model.num_heads", f"{heads} heads do not divide hidden_size {hidden} (each head is hidden_size / num_heads wide)")
    if kv > heads or heads % kv:
        fail("base_model.num_kv_heads", f"{kv} key/value heads do not divide num_heads {heads} "
             "(grouped-query attention shares each key/value head among num_heads / num_kv_heads query heads)")  # fmt: skip
    if (hidden // heads) % 2:
        fail("base_model.num_heads", f"head size hidden_size / num_heads = {hidden // heads} is odd; the rotary "
             "position embedding rotates pairs of dimensions, so it must be even")  # fmt: skip
    _lr("base_model.pretrain.lr", base["pretrain"]["lr"])
    positions = base["max_position_embeddings"]
    if base["pretrain"]["max_length"] > positions:
        fail("base_model.pretrain.max_length", f"{base['pretrain']['max_length']} tokens, but the toy model has "
             f"max_position_embeddings {positions}")  # fmt: skip
    for run, cfg in config.get("runs", {}).items():
        if cfg["optim"]["max_length"] > positions:
            fail(f"runs.{run}.optim.max_length", f"{cfg['optim']['max_length']} tokens, but the toy base model has "
                 f"base_model.max_position_embeddings {positions}")  # fmt: skip
    gen = config["benchmarks"].get("gsm8k", {}).get("eval", {}).get("max_gen_toks")
    if gen is not None and gen >= positions:
        fail("benchmarks.gsm8k.eval.max_gen_toks", f"{gen} generated tokens leave no room for the prompt in the toy "
             f"model's max_position_embeddings {positions} (lm-eval cuts the prompt to the rest)")  # fmt: skip


def known_rows(config: dict, benchmark: str, split: str) -> int | None:
    """Rows of a split when the DAG is built: a toy benchmark's configured or standard count (for mmlu, per
    subject); None for hub data (known only once downloaded)."""
    bench = config["benchmarks"][benchmark]
    return toy_rows(benchmark, bench).get(split) if bench["source"] == "toy" else None


def benchmarks(config: dict) -> None:
    for name, bench in config["benchmarks"].items():
        facts = bench_facts.get(name)
        for split in bench.get("rows") or {}:
            if split not in bench["splits"]:
                fail(f"benchmarks.{name}.rows.{split}", f"'{split}' is not among the splits {bench['splits']}, "
                     "so this count is never used")  # fmt: skip
        shots = bench["eval"]["num_fewshot"]
        probe_split(name, bench, facts, shots)
        if shots == 0:
            continue
        if not facts.fewshot_split:
            fail(f"benchmarks.{name}.eval.num_fewshot", f"{name} has no few-shot split (lm-eval would draw the "
                 f"{shots} examples from the rows it scores); use 0")  # fmt: skip
        have = known_rows(config, name, facts.fewshot_split)
        if have is not None and shots > have:
            per = " per subject" if name == "mmlu" else ""
            fail(f"benchmarks.{name}.eval.num_fewshot", f"{shots} examples, but the '{facts.fewshot_split}' split has "
                 f"{have} rows{per} (benchmarks.{name}.rows.{facts.fewshot_split})")  # fmt: skip


def probe_split(name: str, bench: dict, facts, shots: int) -> None:
    """The diagnostics' off-task states come from a split of a retention benchmark that no score reads."""
    split = bench["probe_split"]
    if split is None:
        return
    key = f"benchmarks.{name}.probe_split"
    if facts.role != "retention":
        fail(key, f"{name} is the {facts.role} benchmark; off-task states come from the retention benchmarks")
    if split not in bench["splits"]:
        fail(key, f"'{split}' is not among the splits {bench['splits']}; add it there so it is prepared")
    if split == facts.eval_split:
        fail(key, f"'{split}' is the split {name} is scored on; off-task drift must be measured on items no score "
             "reads (a split the evaluation never uses)")  # fmt: skip
    if shots > 0 and split == facts.fewshot_split:
        fail(key, f"'{split}' gives {name}'s {shots} few-shot examples, which every scored prompt contains; use a "
             "split the evaluation never reads")  # fmt: skip


def processes(config: dict, run: str) -> int:
    gpus = config["runs"][run].get("resources", {}).get("gpu", config["resources"]["train"]["gpu"])
    return max(1, gpus)


def accelerate_config(config: dict, run: str) -> None:
    """A run's accelerate config file exists (relative to the workflow's folder), so a typo stops the DAG, not the job."""
    own = config["runs"][run].get("resources", {})
    path = own.get("accelerate_config", config["resources"]["train"].get("accelerate_config"))
    if path and not Path(path).is_file():
        key = f"runs.{run}.resources" if "accelerate_config" in own else "resources.train"
        fail(f"{key}.accelerate_config", f"{path}: no such file (an accelerate config, e.g. profiles/accelerate/fsdp.yaml)")


def run_checks(config: dict, run: str, cfg: dict) -> None:
    """A run's checks against the rest of the config (names, row counts, processes), then :func:`run_entry`."""
    where, states, optim = f"runs.{run}", cfg["states"], cfg["optim"]
    if run.startswith("data_") and run[len("data_"):] in bench_facts.NAMES:
        fail(where, f"'{run}' is the name of the rule that prepares benchmark {run[len('data_'):]}; choose another run name")
    accelerate_config(config, run)
    data, split = states["data"], states["split"]
    if split == bench_facts.get(data).eval_split:
        fail(f"{where}.states.split", f"'{split}' is the split every model is scored on; training on it makes "
             "the scores meaningless")  # fmt: skip
    rows, max_rows = known_rows(config, data, split), states["max_rows"]
    if rows is not None and max_rows is not None and max_rows > rows:
        fail(f"{where}.states.max_rows", f"{max_rows}, but benchmarks.{data}.rows.{split} is {rows}")
    usable = min(r for r in (rows, max_rows) if r is not None) if (rows, max_rows) != (None, None) else None
    n_proc = processes(config, run)
    step = optim["batch_size"] * optim["grad_accum"] * n_proc
    if usable is not None and step > usable:
        what = "prompts" if states["source"] == "learner" else "examples"
        fail(f"{where}.optim.batch_size", f"one optimiser step takes batch_size {optim['batch_size']} x grad_accum "
             f"{optim['grad_accum']} x {n_proc} process(es) = {step} {what}, but the run has {usable} "
             f"({data}/{split}{', states.max_rows' if usable == max_rows else ''})")  # fmt: skip
    late = [s for s in cfg["trajectory"] if optim["max_steps"] and s >= optim["max_steps"]]
    if late:  # with epochs the step count is known in the job, which checks it before training
        fail(f"{where}.trajectory", f"steps {sorted(late)} are not below optim.max_steps {optim['max_steps']}: the "
             "last step is the run's own model, and a trajectory step must come before it")  # fmt: skip
    run_entry(where, cfg)
    signal, base = cfg["signal"], config["base_model"]
    if (signal["type"] == "reward" and cfg["init"] == "base" and base["source"] == "toy"
            and base["pretrain"]["answer_line_frac"] == 0 and base["pretrain"]["answer_line_names"] == 0
            and signal["answer_mode"] in ("strict", "hash")
            and signal["format_reward"] == 0):  # fmt: skip
        fail(f"{where}.signal.answer_mode", f"'{signal['answer_mode']}' rewards only answers on a '#### N' line, "
             "which the toy base never writes at base_model.pretrain.answer_line_frac 0 and answer_line_names 0: "
             "every reward is 0 and "
             "nothing is learned")  # fmt: skip


def run_entry(where: str, cfg: dict) -> None:
    """The checks of one run entry that read nothing else of the config (``where``: its key, ``runs.NAME``). The DAG
    runs them for every run (:func:`run_checks`); the training entry point (:func:`statepost.train.loop.run_config`)
    for the run it is handed, so a run started by hand is refused as the DAG would refuse it."""
    states, signal, optim = cfg["states"], cfg["signal"], cfg["optim"]
    _lr(f"{where}.optim.lr", optim["lr"])
    if signal["type"] == "reward" and states["source"] != "learner":
        fail(f"{where}.signal", "a reward signal needs states.source: learner")
    if states["source"] == "learner":
        if optim["max_steps"] is None:
            fail(f"{where}.optim.max_steps", "learner states have no epochs; set max_steps")
        room = optim["max_length"] - MIN_PROMPT_TOKENS
        if states["max_new_tokens"] > room:
            fail(f"{where}.states.max_new_tokens", f"{states['max_new_tokens']} new tokens and a prompt of at least "
                 f"{MIN_PROMPT_TOKENS} tokens do not fit optim.max_length {optim['max_length']} (at most {room})")  # fmt: skip
        on_policy(where, states, signal)
        mixed_rule = mixed_states(cfg)
        if mixed_rule:
            lam = learner_frac(cfg)
            fail(f"{where}.states.learner_frac", f"{lam:g} puts a prompt's gold solution in place of the learner's "
                 f"sample with probability {1 - lam:g}, so {mixed_rule}")  # fmt: skip
        flt = states["filter"]
        if flt is not None and not 0 < flt["min"] <= 1:
            fail(f"{where}.states.filter.min", f"the gsm8k reward of a sample is 0 or 1, so min {flt['min']} keeps "
                 f"{'every' if flt['min'] <= 0 else 'no'} sample (use a value in (0, 1])")  # fmt: skip
    if signal["type"] == "teacher_kl":
        if signal["teacher"] == cfg["init"]:
            fail(f"{where}.signal.teacher", f"'{signal['teacher']}' is also the run's init: the policy starts equal to "
                 "its teacher, where the divergence and its gradient are 0, so the weights never move")  # fmt: skip
        if "beta" in signal and signal["direction"] != "jsd":
            fail(f"{where}.signal.beta", f"beta is the jsd interpolation weight; with direction '{signal['direction']}' "
                 "it would be ignored (remove it, or set direction: jsd)")  # fmt: skip
        if signal["estimator"] == "sampled" and signal["direction"] != "reverse":
            fail(f"{where}.signal.estimator", f"the sampled estimator estimates the reverse KL only; direction "
                 f"'{signal['direction']}' needs estimator: full")  # fmt: skip
        if signal["estimator"] == "sampled" and states["source"] != "learner":
            fail(f"{where}.signal.estimator", "the sampled estimator needs the policy's own samples "
                 "(states.source: learner); dataset states are not samples of the policy")  # fmt: skip


def mixed_states(cfg: dict) -> str | None:
    """Why learner states mixed with gold solutions (``learner_frac`` < 1) cannot serve this run, or None."""
    states, signal = cfg["states"], cfg["signal"]
    if learner_frac(cfg) == 1:
        return None
    if signal["type"] == "reward" or signal.get("estimator") == "sampled":
        return (f"signal {signal['type']}{' (estimator sampled)' if signal['type'] != 'reward' else ''} needs every "
                "state to be a sample of the policy: set learner_frac 1")  # fmt: skip
    if states["samples_per_prompt"] != 1:
        return (f"each prompt has one state either way: set samples_per_prompt 1 (not {states['samples_per_prompt']}), "
                "or learner_frac 1")  # fmt: skip
    if states["filter"] is not None:
        return "a filter would judge gold solutions too: remove states.filter, or set learner_frac 1"
    return None


def factorial_runs(factorial: dict) -> list[str]:
    """The runs a factorial names (``config["factorial"]``): the grid's, the dose-response's, those beside, in order."""
    grid = [run for row in factorial["grid"].values() for run in row.values()]
    return list(dict.fromkeys([*grid, *factorial["dose"], *factorial["beside"]]))


def learner_frac(cfg: dict) -> float:
    """How on-policy a run's states are, lambda: 0 for dataset states, else ``states.learner_frac``, which a learner run
    that does not mix leaves out (1: the schema fills no default, so such a run's settings carry no new key)."""
    states = cfg["states"]
    return 0.0 if states["source"] == "dataset" else float(states.get("learner_frac", 1.0))


def factorial(config: dict) -> None:
    """The factorial's runs exist and fill their cells; the grid's and the dose's runs share one budget."""
    fact = config["factorial"]
    if fact is None:
        return
    runs = config.get("runs", {})
    named = {f"factorial.grid.{state}.{signal}": run for state, row in fact["grid"].items() for signal, run in row.items()}
    named |= {f"factorial.dose[{i}]": run for i, run in enumerate(fact["dose"])}
    named |= {f"factorial.beside[{i}]": run for i, run in enumerate(fact["beside"])}
    for key, run in named.items():
        if run not in runs:
            fail(key, f"'{run}' names no run (runs: {', '.join(runs) or 'none'})")
    for state, row in fact["grid"].items():
        for signal, run in row.items():
            cfg, key = runs[run], f"factorial.grid.{state}.{signal}"
            if cfg["signal"]["type"] != signal:
                fail(key, f"'{run}' has signal {cfg['signal']['type']}, not {signal}")
            if cfg["states"]["source"] != state or learner_frac(cfg) not in (0.0, 1.0):
                fail(key, f"'{run}' takes its states from {cfg['states']['source']} (learner_frac "
                     f"{learner_frac(cfg):g}), not all from the {state}")  # fmt: skip
    dose = fact["dose"]
    lambdas = [learner_frac(runs[r]) for r in dose]
    if len(set(lambdas)) < len(lambdas):
        fail("factorial.dose", f"the runs' lambdas {lambdas} repeat; each run is one dose")
    first = runs[dose[0]]["signal"]
    for i, run in enumerate(dose[1:], 1):
        if runs[run]["signal"] != first:
            fail(f"factorial.dose[{i}]", f"'{run}' has signal {runs[run]['signal']}, but '{dose[0]}' has {first}: "
                 "the dose-response varies lambda only")  # fmt: skip
    grid = [run for row in fact["grid"].values() for run in row.values()]
    matched = list(dict.fromkeys(grid + dose))  # not those beside: they are shown, not compared
    ref, why = matched[0], "the factorial compares methods at one budget (the same init and optimiser settings)"
    for run in matched[1:]:
        if runs[run]["init"] != runs[ref]["init"]:
            fail(f"runs.{run}.init", f"'{runs[run]['init']}', but '{runs[ref]['init']}' in '{ref}': {why}")
        mine, theirs = runs[run]["optim"], runs[ref]["optim"]
        for k in sorted(set(mine) | set(theirs)):
            if mine.get(k) != theirs.get(k):
                fail(f"runs.{run}.optim.{k}", f"{mine.get(k)!r}, but {theirs.get(k)!r} in '{ref}': {why}")
    teachers = {r: runs[r]["signal"]["teacher"] for r in matched if runs[r]["signal"].get("teacher")}
    if len(set(teachers.values())) > 1:
        fail("factorial", f"the runs' teachers differ ({teachers}): every cell that needs a teacher uses the same one")


# The kind of run each claim role stands for: the claims are about these methods.
ROLE_KINDS = {"opd": ("teacher_kl", "on-policy distillation"), "rl": ("reward", "on-policy RL")}


def claims(config: dict, explicit: set) -> None:
    runs, roles = config.get("runs", {}), config["claims"]["roles"]
    for role, run in roles.items():
        if run not in runs:
            if role in explicit:
                fail(f"claims.roles.{role}", f"'{run}' names no run (runs: {', '.join(runs) or 'none'})")
            continue  # a default role whose run is absent: its claims read "not run"
        kind = ROLE_KINDS.get(role)
        cfg = runs[run]
        if kind and (cfg["signal"]["type"] != kind[0] or cfg["states"]["source"] != "learner"):
            fail(f"claims.roles.{role}", f"'{run}' is not {kind[1]} (learner states and a {kind[0]} signal), "
                 f"which the claims about role {role} are about")  # fmt: skip
    th = config["claims"]["thresholds"]
    if th["substantial_loss"] < th["little_forgetting"]:
        fail("claims.thresholds.substantial_loss", f"{th['substantial_loss']} is below little_forgetting "
             f"{th['little_forgetting']}: a retention drop between them would be both little and substantial")  # fmt: skip
