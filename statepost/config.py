"""The experiment configuration: schema validation, defaults, and the checks a schema cannot express.

Everything here runs when Snakemake builds the DAG, before any job starts, so a
mistake in the config costs seconds, not GPU hours. Every error names the key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import yaml

from .io import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"

# Model names the DAG uses for things that are not runs, and rule names a run must not shadow.
RESERVED = {"base", "all", "base_model", "evaluate", "report", "data", "teacher", "init"}

# Splits each benchmark needs: (evaluated split, few-shot split or None).
EVAL_SPLITS = {"gsm8k": ("test", "train"), "mmlu": ("test", "dev"), "truthfulqa_mc2": ("validation", None)}
# The paper's shots (the lm-eval defaults of the Qwen3 report, except GSM8K: see config/README.md).
DEFAULT_FEWSHOT = {"gsm8k": 5, "mmlu": 5, "truthfulqa_mc2": 0}
# Sampling settings a learner-state run must give (a schema default would hide a forgotten key).
LEARNER_REQUIRED = ("temperature", "max_new_tokens", "samples_per_prompt")


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _validator_with_defaults():
    from jsonschema import Draft202012Validator, validators

    base_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})


def validate(config: dict) -> dict:
    """Validate ``config`` against the schema, filling defaults in place; raise ConfigError naming the key path."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = load_schema()
    # `--config seeds=[0,1]` reaches us as ["0", "1"]: Snakemake reads list items as strings.
    seeds = config.get("seeds")
    if isinstance(seeds, list) and all(isinstance(s, str) and s.strip().isdigit() for s in seeds):
        config["seeds"] = [int(s) for s in seeds]
    plain = Draft202012Validator(schema)
    errors = sorted(plain.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            # oneOf/if-then errors wrap the useful one; best_match digs it out.
            inner = best_match([err]) if err.context else err
            lines.append(f"  config key {_key_path(inner)}: {inner.message}")
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ConfigError("invalid configuration:\n" + "\n".join(lines) + more)
    _validator_with_defaults()(schema).validate(config)
    for name, bench in config["benchmarks"].items():
        bench["eval"].setdefault("num_fewshot", DEFAULT_FEWSHOT[name])
    check(config)
    return config


def model_names(config: dict) -> list[str]:
    """Every model the DAG evaluates: the base, then each (run, seed) as ``{run}/seed{seed}``."""
    return ["base"] + [f"{run}/seed{seed}" for run in run_order(config) for seed in config["seeds"]]


def model_dir(name: str) -> str:
    return f"results/models/{name}"


def run_model(config: dict, name: str, seed: int) -> str:
    """The model name a run refers to (``base`` or another run) for a given seed."""
    return "base" if name == "base" else f"{name}/seed{seed}"


def run_deps(run_cfg: dict) -> dict[str, str]:
    """The models a run reads: its init and, for teacher_kl, its teacher."""
    deps = {"init": run_cfg["init"]}
    if run_cfg["signal"]["type"] == "teacher_kl":
        deps["teacher"] = run_cfg["signal"]["teacher"]
    return deps


def run_order(config: dict) -> list[str]:
    """Runs in an order where every run comes after the runs it depends on (config order otherwise)."""
    runs = config.get("runs", {})
    order, state = [], {}

    def visit(name, stack):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(stack[stack.index(name) :] + [name])
            raise ConfigError(f"config key runs.{name}: runs depend on each other in a cycle: {cycle}")
        state[name] = "visiting"
        for dep in run_deps(runs[name]).values():
            if dep != "base":
                visit(dep, stack + [name])
        state[name] = "done"
        order.append(name)

    for name in runs:
        visit(name, [])
    return order


def check(config: dict) -> None:
    """Checks across keys that JSON schema cannot express. Raises ConfigError naming the key path."""
    benchmarks = config["benchmarks"]
    for name, bench in benchmarks.items():
        test_split, shot_split = EVAL_SPLITS[name]
        needed = [test_split] + ([shot_split] if shot_split and bench["eval"]["num_fewshot"] > 0 else [])
        for split in needed:
            if split not in bench["splits"]:
                raise ConfigError(
                    f"config key benchmarks.{name}.splits: {name} is evaluated on '{test_split}'"
                    + (f" with few-shot examples from '{shot_split}'" if shot_split else "")
                    + f"; add '{split}' to the splits"
                )
    runs = config.get("runs", {})
    models = {"base", *runs}
    for run, cfg in runs.items():
        where = f"runs.{run}"
        if run in RESERVED:
            raise ConfigError(f"config key {where}: '{run}' is a reserved name; choose another run name")
        if cfg["init"] not in models:
            raise ConfigError(
                f"config key {where}.init: '{cfg['init']}' names no model (known: {', '.join(sorted(models))})"
            )
        states, signal = cfg["states"], cfg["signal"]
        if states["data"] not in benchmarks:
            raise ConfigError(f"config key {where}.states.data: benchmark '{states['data']}' is not configured")
        if states["split"] not in benchmarks[states["data"]]["splits"]:
            raise ConfigError(
                f"config key {where}.states.split: '{states['split']}' is not among "
                f"benchmarks.{states['data']}.splits"
            )
        if states["source"] == "learner":
            for key in LEARNER_REQUIRED:
                if key not in states:
                    raise ConfigError(
                        f"config key {where}.states.{key}: learner states need sampling settings "
                        f"({', '.join(LEARNER_REQUIRED)}); '{key}' is missing"
                    )
            states.setdefault("top_p", 1.0)
            if cfg["optim"]["max_steps"] is None:
                raise ConfigError(
                    f"config key {where}.optim.max_steps: learner states have no epochs; set max_steps"
                )
            if states["data"] != "gsm8k":
                raise ConfigError(
                    f"config key {where}.states.data: learner states sample GSM8K prompts; got '{states['data']}'"
                )
        elif states.get("filter"):
            raise ConfigError(f"config key {where}.states.filter: a reward filter needs states.source: learner")
        if signal["type"] == "teacher_kl":
            if "teacher" not in signal:
                raise ConfigError(f"config key {where}.signal.teacher: signal teacher_kl needs a teacher model")
            if signal["teacher"] not in models:
                raise ConfigError(
                    f"config key {where}.signal.teacher: '{signal['teacher']}' names no model "
                    f"(known: {', '.join(sorted(models))})"
                )
        elif "teacher" in signal:
            raise ConfigError(f"config key {where}.signal.teacher: only signal type teacher_kl takes a teacher")
        if signal["type"] == "reward" and states["source"] != "learner":
            raise ConfigError(f"config key {where}.signal: a reward signal needs states.source: learner")
    run_order(config)  # raises on cycles


def resolve_run(config: dict, run: str, seed: int) -> dict:
    """The complete settings of one (run, seed), as handed to the training script."""
    cfg = copy.deepcopy(config["runs"][run])
    cfg.pop("resources", None)
    cfg.update(name=run, seed=int(seed))
    return cfg


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_resources(config: dict, group: str, run: str | None = None) -> dict:
    """Resources of a rule group, with a run's own overrides for training."""
    res = dict(config["resources"][group])
    if run is not None:
        res.update(config["runs"][run].get("resources", {}))
    return res


def load(path: str | Path) -> dict:
    """Read and validate a config file outside Snakemake (scripts, tests)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return validate(config)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
