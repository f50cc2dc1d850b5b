"""The package's shape, checked: no import cycle, modules of a readable size, one home for defaults
and for the benchmark list (docs/architecture.md describes the layout these tests hold)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "statepost"
MAX_LINES = 500


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (at any depth in the file: a cycle through a
    function-level import is still a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known}
    found.discard(name)
    return found


def test_no_import_cycle_inside_the_package():
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    state: dict[str, str] = {}

    def visit(node, stack):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(stack[stack.index(node):] + [node])
        state[node] = "open"
        for dep in sorted(graph[node]):
            # a package's __init__ importing its own submodules is not a cycle
            if not dep.startswith(node + "."):
                visit(dep, stack + [node])
        state[node] = "done"

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_a_readable_size(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it: at most {MAX_LINES})"


def test_defaults_live_in_the_schema_only():
    """No module keeps its own table of config defaults (a name with ``DEFAULT``): the schema fills them.
    (``statepost.gpus`` is the GPU-slot launcher: its defaults are for its own flags and environment
    variables, not for config keys.)"""
    offenders = []
    for name, path in modules().items():
        if name == "statepost.gpus":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            offenders += [f"{name}.{t.id}" for t in targets if isinstance(t, ast.Name) and "DEFAULT" in t.id]
    assert not offenders, offenders


def test_the_benchmark_list_is_written_once():
    """Only workflow/tasks/benchmarks.yaml names the benchmarks together; code asks statepost.benchmarks."""
    names = {"gsm8k", "mmlu", "truthfulqa_mc2"}
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            elif isinstance(node, ast.Dict):
                values = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            else:
                continue
            if names <= values:
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


# What each cross-key rule says when it refuses a config: every one is written once, in statepost/checks.py (the
# DAG and the training entry point call the same function), never re-checked by a class or a second module.
CROSS_KEY_RULES = [
    "is a reserved name",
    "names no model",
    "learner states have no epochs",
    "a reward signal needs states.source: learner",
    "advantages are rewards minus the mean",
    "assumes samples of the policy itself",
    "needs fresh samples",
    "puts a prompt's gold solution in place",
    "is also the run's init",
    "beta is the jsd interpolation weight",
    "the sampled estimator estimates the reverse KL",
    "the sampled estimator needs the policy's own samples",
    "is the split every model is scored on",
    "do not fit optim.max_length",
    "is not a learning rate",
]


@pytest.mark.parametrize("message", CROSS_KEY_RULES)
def test_each_cross_key_rule_is_written_once(message):
    sources = {name: path.read_text() for name, path in modules().items()}
    homes = [f"{name} ({text.count(message)}x)" for name, text in sources.items() if message in text]
    assert homes == ["statepost.checks (1x)"], f"{message!r} is written in {homes}"
