"""The benchmarks the workflow knows: one home for their names, splits, metrics and labels.

The facts are data (``workflow/tasks/benchmarks.yaml``, beside the lm-eval task templates they
describe); this module reads them once. Every other module asks here instead of keeping its own list.
"""

from __future__ import annotations

import importlib.util
import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parent.parent / "workflow" / "tasks"  # our lm-eval task templates
PATH = TASKS_DIR / "benchmarks.yaml"


def lm_eval_tasks_dir() -> Path:
    """lm-eval's builtin task folder, found without importing lm-eval (a training job only reads it)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lm_eval is not installed: its task files define how benchmarks are scored")
    return Path(spec.submodule_search_locations[0]).resolve() / "tasks"


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML; a ``!function`` tag becomes its text (only ``until`` is needed here)."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def load_task(path: Path, tasks_dir: Path, depth: int = 0) -> dict:
    """A task file with its ``include:`` chain resolved as lm-eval does (the including file's keys win)."""
    if depth > 10:
        raise ValueError(f"{path}: include chain too deep")
    text = path.read_text()
    if path.name.endswith(".template"):
        text = string.Template(text).safe_substitute(lm_eval_tasks=json.dumps(str(tasks_dir))[1:-1])
    cfg = yaml.load(text, Loader=_TaskLoader) or {}
    include = cfg.pop("include", None)
    if include:
        inc = Path(include)
        base = load_task(inc if inc.is_absolute() else path.parent / inc, tasks_dir, depth + 1)
        cfg = {**base, **cfg}
    return cfg


@dataclass(frozen=True)
class Benchmark:
    name: str
    label: str
    role: str  # "target" or "retention"
    task: str
    eval_split: str
    fewshot_split: str | None
    num_fewshot: int
    primary_metric: str
    metrics: tuple[str, ...]
    toy_rows: dict

    def metric_key(self, name: str) -> str | None:
        """The metric key named ``name`` (a key, or its part after the comma: ``flexible-extract``), else None."""
        for key in (self.primary_metric, *self.metrics):
            if name in (key, key.split(",", 1)[-1]):
                return key
        return None

    @property
    def splits(self) -> list[str]:
        """The splits scoring needs, few-shot split first (the standard split order of the data rule)."""
        return ([self.fewshot_split] if self.fewshot_split else []) + [self.eval_split]


def _load() -> dict[str, Benchmark]:
    raw = yaml.safe_load(PATH.read_text())
    out = {}
    for name, entry in raw.items():
        entry = dict(entry)
        entry["metrics"] = tuple(entry.get("metrics") or ())
        out[name] = Benchmark(name=name, **entry)
    return out


BENCHMARKS: dict[str, Benchmark] = _load()
NAMES: tuple[str, ...] = tuple(BENCHMARKS)
TARGET: str = next(b.name for b in BENCHMARKS.values() if b.role == "target")
RETENTION: tuple[str, ...] = tuple(b.name for b in BENCHMARKS.values() if b.role == "retention")


def get(name: str) -> Benchmark:
    """The benchmark called ``name``; a ValueError lists the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r} (expected one of {', '.join(NAMES)})") from None
