"""The experiment configuration: schema validation, defaults, and the checks a schema cannot express.

Everything here runs when Snakemake builds the DAG, before any job starts, so a
mistake in the config costs seconds, not GPU hours. Every error names the key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from . import benchmarks as bench_facts
from . import checks
from .configfile import read_config_file, read_config_files  # noqa: F401  (the one strict reader of config files)
from .io import ConfigError

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
CLAIMS_SCHEMA_PATH = REPO / "workflow" / "schemas" / "claims.schema.yaml"
CLAIM_BENCHMARKS = ("each", "target", "retention")  # a claim's `benchmark:` keywords besides a benchmark name

FLOAT_WITHOUT_POINT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")  # 1e-4: a string to YAML 1.1, which PyYAML reads


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error) -> str:
    """The dotted key path an error is about; a missing or unexpected key is named too."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator in ("required", "additionalProperties", "unevaluatedProperties"):
        # "'teacher' is a required property" / "... ('clip_eps' was unexpected)": name the key itself
        names = re.findall(r"'([^']+)'", error.message)
        if len(names) == 1:
            parts.append(names[0])
    return ".".join(parts) if parts else "(top level)"


def _number_hint(error) -> str:
    """PyYAML follows YAML 1.1, where ``1e-4`` (no decimal point) is a string, not a number."""
    if error.validator == "type" and isinstance(error.instance, str) and FLOAT_WITHOUT_POINT.fullmatch(error.instance):
        return f" (YAML reads {error.instance} as text: write the number with a decimal point, e.g. 1.0e-4)"
    return ""


def _validator_with_defaults():
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
    schema = load_schema()
    # `--config seeds=[0,1]` reaches us as ["0", "1"]: Snakemake reads list items as strings.
    seeds = config.get("seeds")
    if isinstance(seeds, list) and all(isinstance(s, str) and s.strip().isdigit() for s in seeds):
        config["seeds"] = [int(s) for s in seeds]
    runs = config.get("runs")
    if isinstance(runs, dict):  # an overlay leaves a run out by setting it to null (config/factorial.yaml)
        # (a copy of each: YAML aliases, as config/factorial.yaml's, would share one dict between runs)
        config["runs"] = {name: copy.deepcopy(run) for name, run in runs.items() if run is not None}
    for run in (config.get("runs") or {}).values():
        expand_shorthand(run)
    claims = config.get("claims")
    roles = claims.get("roles") if isinstance(claims, dict) else None
    explicit_roles = set(roles) if isinstance(roles, dict) else set()  # before the schema fills the defaults
    plain = Draft202012Validator(schema)
    errors = sorted(plain.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            # oneOf/if-then errors wrap the useful one; best_match digs it out.
            inner = best_match([err]) if err.context else err
            lines.append(f"  config key {_key_path(inner)}: {inner.message}{_number_hint(inner)}")
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ConfigError("invalid configuration:\n" + "\n".join(lines) + more)
    _validator_with_defaults()(schema).validate(config)
    # The paper's shots depend on the benchmark, so they live in workflow/tasks/benchmarks.yaml.
    for name, bench in config["benchmarks"].items():
        bench["eval"].setdefault("num_fewshot", bench_facts.get(name).num_fewshot)
    checks.references(config)
    run_order(config)  # raises on cycles
    checks.check_all(config, explicit_roles)
    return config


def expand_shorthand(run) -> None:
    """``states: dataset`` and ``signal: nll`` (a bare name) mean ``{source: dataset}`` / ``{type: nll}``."""
    if isinstance(run, dict):
        if isinstance(run.get("states"), str):
            run["states"] = {"source": run["states"]}
        if isinstance(run.get("signal"), str):
            run["signal"] = {"type": run["signal"]}


def with_defaults(obj: dict, name: str) -> dict:
    """A validated copy of ``obj`` with the schema's defaults filled in, for one part of the config.

    ``name`` is a ``$defs`` entry of the schema (``run``, ``states``, ``signal``, ``eval``, ...) or a
    top-level key (``claims``, ``evaluation``, ``resources``): code that takes a part of the config
    directly (tests, notebooks) gets the same defaults as the DAG, from the one place they live.
    """
    root = load_schema()
    defs = {**root["$defs"], "_top": {"type": "object", "properties": root["properties"]}}
    if name in root["$defs"]:
        ref = f"#/$defs/{name}"
    elif name in root["properties"]:
        ref = f"#/$defs/_top/properties/{name}"
    else:
        raise KeyError(f"the config schema has no part {name!r}")
    schema = {"$defs": defs, "$ref": ref}
    obj = copy.deepcopy(obj)
    if name == "run":
        expand_shorthand(obj)
    err = best_match(Draft202012Validator(schema).iter_errors(obj))
    if err is not None:
        raise ConfigError(f"config key {name}.{_key_path(err)}: {err.message}")
    _validator_with_defaults()(schema).validate(obj)
    return obj


def model_names(config: dict) -> list[str]:
    """Every model the DAG compares: the base, then each (run, seed) as ``{run}/seed{seed}`` (the models along
    training, evaluated too, are :func:`trajectory_models`)."""
    return ["base"] + [f"{run}/seed{seed}" for run in run_order(config) for seed in config["seeds"]]


def trajectory_models(config: dict) -> list[dict]:
    """The models saved along runs' training (``runs.<run>.trajectory``), each as ``{name, run, seed, step}`` with
    the name ``{run}/step{step}/seed{seed}``, in run order, then seed, then step."""
    return [{"name": f"{run}/step{step}/seed{seed}", "run": run, "seed": seed, "step": step}
            for run in run_order(config) for seed in config["seeds"]
            for step in sorted(config["runs"][run]["trajectory"])]  # fmt: skip


def run_model(config: dict, name: str, seed: int) -> str:
    """The model name a run refers to (``base`` or another run) for a given seed."""
    return "base" if name == "base" else f"{name}/seed{seed}"


def run_deps(run_cfg: dict) -> dict[str, str]:
    """The models a run reads: its init and its signal's teacher, if it has one."""
    deps = {"init": run_cfg["init"]}
    if run_cfg["signal"].get("teacher"):  # teacher_kl always; nll when the teacher gives the target
        deps["teacher"] = run_cfg["signal"]["teacher"]
    return deps


def method_order_key(config: dict):
    """Sort key for run names: by state source, then signal type (in the schema's order), then name."""
    schema = load_schema()["$defs"]
    sources = schema["states"]["properties"]["source"]["enum"]
    signals = schema["signal"]["properties"]["type"]["enum"]

    def key(run: str):
        cfg = config["runs"][run]
        return sources.index(cfg["states"]["source"]), signals.index(cfg["signal"]["type"]), run

    return key


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


# A run's settings that change no weight: when it saves resumable states and logs (run_runtime), and
# its resources. They reach the job as Snakemake resources, which never trigger a rerun.
RUNTIME_KEYS = ("checkpoint", "log_every", "resources", "trajectory")


def resolve_run(config: dict, run: str, seed: int) -> dict:
    """The settings of one (run, seed) that change its weights, as handed to the training script."""
    cfg = {k: copy.deepcopy(v) for k, v in config["runs"][run].items() if k not in RUNTIME_KEYS}
    cfg.update(name=run, seed=int(seed))
    return cfg


def run_runtime(config: dict, run: str) -> dict:
    """A run's checkpoint interval, checkpoints kept and log interval, as Snakemake resources."""
    cfg = config["runs"][run]
    return {
        "checkpoint_every": cfg["checkpoint"]["every"],
        "checkpoint_keep": cfg["checkpoint"]["keep"],
        "log_every": cfg["log_every"],
    }


def state_nll_every(config: dict) -> int:
    """Steps between the training runs' ``state_nll`` measurements (0: off): a runtime setting, passed as a resource."""
    switch = config["diagnostics"]["state_nll"]
    return switch["every"] if switch["enabled"] else 0


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_resources(config: dict, group: str, run: str | None = None) -> dict:
    """Resources of a rule group, with a run's own overrides for training."""
    res = dict(config["resources"][group])
    if run is not None:
        res.update(config["runs"][run].get("resources", {}))
    return res


def load(path: str | Path) -> dict:
    """Read (strictly, :func:`read_config_file`) and validate a config file outside Snakemake (scripts, tests)."""
    config = read_config_file(path)
    try:
        return validate(config)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def main(argv=None) -> int:
    """``python -m statepost.config FILE...``: check config files (those given to --configfile) without Snakemake."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m statepost.config", description=main.__doc__)
    p.add_argument("files", nargs="+", type=Path, help="config files, merged in order as --configfile merges them")
    args = p.parse_args(argv)
    try:
        validate(read_config_files(args.files))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{', '.join(map(str, args.files))}: valid")
    return 0


# --------------------------------------------------------------------------------------------- the claims file


@lru_cache(maxsize=1)
def _claims_schema() -> dict:
    return yaml.safe_load(CLAIMS_SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _claim_defaults() -> dict:
    return with_defaults({}, "claims")


def claim_defaults() -> dict:
    """The config schema's ``claims`` defaults: ``{"definitions", "roles", "thresholds"}`` (a copy)."""
    return copy.deepcopy(_claim_defaults())


def default_claims_path() -> Path:
    return REPO / claim_defaults()["definitions"]


def load_claims(path=None) -> dict:
    """Read and validate a claims file (default: the schema's ``claims.definitions``); a dict is taken as read.
    Returns ``{"path", "derived_roles", "claims"}``; a ConfigError names the file and the key path."""
    if isinstance(path, Mapping):
        return path if "path" in path else _validate_claims(dict(path), "<claims>")
    path = Path(path) if path is not None else default_claims_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the claims file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return _validate_claims(raw, str(path))


def _validate_claims(raw, where: str) -> dict:
    def fail(key, msg):
        parts = key.split(".")
        claims = raw.get("claims") if isinstance(raw, dict) else None
        if len(parts) > 1 and parts[0] == "claims" and parts[1].isdigit() and isinstance(claims, list):
            claim = claims[int(parts[1])] if int(parts[1]) < len(claims) else None
            if isinstance(claim, dict) and isinstance(claim.get("id"), str):
                key += f" (claim {claim['id']})"
        raise ConfigError(f"{where}: {key}: {msg}")

    schema = _claims_schema()
    err = best_match(Draft202012Validator(schema).iter_errors(raw))
    if err is not None:
        fail(_key_path(err), err.message)
    spec = {"path": where, "derived_roles": dict(raw.get("derived_roles") or {}), "claims": []}

    config_roles = list(claim_defaults()["roles"])
    thresholds = [k for k in claim_defaults()["thresholds"] if k != "alpha"]
    for name, how in spec["derived_roles"].items():
        if name in config_roles or name == "base":
            fail(f"derived_roles.{name}", f"{name!r} is already a role of the config")
        if how["teacher_of"] not in config_roles:
            fail(
                f"derived_roles.{name}.teacher_of",
                f"unknown role {how['teacher_of']!r} (known: {', '.join(config_roles)})",
            )
    known_roles = config_roles + list(spec["derived_roles"])
    ids = set()
    for i, claim in enumerate(raw["claims"]):
        key = f"claims.{i}"
        if claim["id"] in ids:
            fail(f"{key}.id", f"duplicate claim id {claim['id']!r}")
        ids.add(claim["id"])
        for j, role in enumerate(claim["roles"]):
            if role not in known_roles:
                fail(f"{key}.roles.{j}", f"unknown role {role!r} (known: {', '.join(known_roles)}; a new role needs "
                     "an entry in claims.roles of workflow/schemas/config.schema.yaml)")  # fmt: skip
        for part in ("checks", "reports"):
            for j, q in enumerate(claim.get(part) or []):
                for role in [q["role"]] if "role" in q else q["roles"]:
                    if role != "base" and role not in claim["roles"]:
                        fail(f"{key}.{part}.{j}", f"role {role!r} is not among the claim's roles {claim['roles']}")
                on = q.get("benchmark")
                if on is not None and on not in CLAIM_BENCHMARKS and on not in bench_facts.NAMES:
                    fail(f"{key}.{part}.{j}.benchmark", f"{on!r} is neither a benchmark ({', '.join(bench_facts.NAMES)}) "
                         f"nor one of {', '.join(CLAIM_BENCHMARKS)}")  # fmt: skip
                if "metric" in q:
                    covered = [on] if on in bench_facts.NAMES else {
                        "each": list(bench_facts.NAMES), "retention": list(bench_facts.RETENTION)
                    }.get(on, [bench_facts.TARGET])  # fmt: skip
                    lacking = [b for b in covered if bench_facts.get(b).metric_key(q["metric"]) is None]
                    if lacking:
                        fail(f"{key}.{part}.{j}.metric", f"{q['metric']!r} is not a metric of {', '.join(lacking)} "
                             "(workflow/tasks/benchmarks.yaml: primary_metric and metrics)")  # fmt: skip
                if part == "checks" and q["threshold"] not in thresholds:
                    fail(f"{key}.{part}.{j}.threshold", f"unknown threshold {q['threshold']!r} (claims.thresholds "
                         f"has {', '.join(thresholds)})")  # fmt: skip
        spec["claims"].append({"reports": [], **claim})
    return spec


if __name__ == "__main__":
    raise SystemExit(main())
