"""Conda environments (envs/*.yaml) against requirements.txt and the workflow's rules.

- every env file is valid YAML with conda-forge as channel, python 3.11, every package pinned;
- each pip pin is exactly the version requirements.txt pins;
- every rule (workflow/rules/*.smk, Snakefile) that runs something (shell/script/run/notebook)
  has a `conda:` directive naming one of these files;
- the Python a rule runs (scripts/X.py and everything of statepost it imports) imports no
  third-party module that the rule's env does not pin.
Rule files are parsed as text, so this runs without Snakemake evaluating the workflow.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
ENV_FILES = sorted(ENVS.glob("*.yaml"))
EXPECTED_ENVS = {"train", "evaluate", "report"}
# What each rule group needs at the least (distribution names, canonical form).
NEEDS = {
    "train": {"torch", "transformers", "tokenizers", "safetensors", "accelerate", "datasets", "huggingface-hub"},
    "evaluate": {"lm-eval", "torch", "transformers", "accelerate", "datasets"},
    "report": {"pandas", "matplotlib", "tabulate", "jinja2"},
}
RUN_DIRECTIVES = ("shell", "script", "run", "notebook")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str]:
    pins = {}
    for raw in (REPO / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+!\-]+)", line)
        assert m, f"requirements.txt: unpinned or odd line {raw!r}"
        pins[canon(m.group(1))] = m.group(2)
    return pins


def load_env(path: Path) -> dict:
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict), f"{path}: not a mapping"
    return env


def split_deps(path: Path) -> tuple[list[str], dict[str, str]]:
    """(conda dependency strings, {canonical pip name: version}) of one env file."""
    env = load_env(path)
    conda, pip = [], {}
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path}: unexpected mapping in dependencies: {dep}"
            for spec in dep["pip"]:
                m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)", str(spec).strip())
                assert m, f"{path}: pip dependency {spec!r} is not pinned with =="
                assert canon(m.group(1)) not in pip, f"{path}: {spec!r} listed twice"
                pip[canon(m.group(1))] = m.group(2)
        else:
            conda.append(str(dep).strip())
    return conda, pip


def test_expected_env_files_exist():
    assert {p.stem for p in ENV_FILES} >= EXPECTED_ENVS, [p.name for p in ENV_FILES]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_is_valid_and_pinned(path):
    env = load_env(path)
    assert set(env) <= {"name", "channels", "dependencies"}, f"{path}: unknown keys {set(env)}"
    assert env.get("channels", [None])[0] == "conda-forge", f"{path}: conda-forge must be the first channel"
    assert "defaults" not in env["channels"], f"{path}: the defaults channel must not be used"
    conda, pip = split_deps(path)
    for dep in conda:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==?[0-9][A-Za-z0-9_.+\-]*", dep), f"{path}: conda dependency {dep!r} is not pinned (name=version)"
    names = {re.split(r"=", d, maxsplit=1)[0] for d in conda}
    assert "python=3.11" in conda, f"{path}: needs python=3.11, has {conda}"
    assert "pip" in names, f"{path}: pip must be a (pinned) conda dependency when there is a pip section"
    assert pip, f"{path}: empty pip section"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_versions_match_requirements(path):
    req = requirements()
    _, pip = split_deps(path)
    for name, version in pip.items():
        assert name in req, f"{path}: {name} is not pinned in requirements.txt"
        assert version == req[name], f"{path}: {name}=={version} but requirements.txt pins {req[name]}"


@pytest.mark.parametrize("group", sorted(EXPECTED_ENVS))
def test_env_has_what_its_rules_need(group):
    _, pip = split_deps(ENVS / f"{group}.yaml")
    missing = NEEDS[group] - set(pip)
    assert not missing, f"envs/{group}.yaml lacks {sorted(missing)}"
    if group == "report":
        assert "torch" not in pip, "the report env should stay light (no torch)"


def test_requirements_parse_and_cover_the_envs():
    req = requirements()
    assert "torch" in req and "lm-eval" in req
    every = set().union(*(split_deps(p)[1] for p in ENV_FILES))
    # every runtime pin is used by some env, except the workflow engine itself
    assert set(req) - every <= {"snakemake", "snakemake-executor-plugin-slurm"}, set(req) - every


# ----------------------------------------------------------------------------- rules


def rule_files() -> list[Path]:
    files = sorted((REPO / "workflow" / "rules").glob("*.smk"))
    if (REPO / "Snakefile").exists():
        files.append(REPO / "Snakefile")
    return files


def parse_rules(path: Path) -> list[dict]:
    """Rule/checkpoint blocks of a Snakemake file: name, directives, conda value, block text."""
    lines = path.read_text().splitlines()
    header = re.compile(r"^(\s*)(rule|checkpoint)(\s+\w+)?\s*:\s*(#.*)?$")
    rules = []
    i = 0
    while i < len(lines):
        m = header.match(lines[i])
        if not m:
            i += 1
            continue
        indent = len(m.group(1).expandtabs())
        start = i
        i += 1
        while i < len(lines):
            s = lines[i]
            if s.strip() and not s.lstrip().startswith("#") and len(s) - len(s.lstrip()) <= indent:
                break
            i += 1
        body = lines[start + 1 : i]
        directives, conda = set(), None
        name = (m.group(3) or "").strip()
        for j, s in enumerate(body):
            d = re.match(r"^\s+(\w+)\s*:(.*)$", s)
            if not d or len(s) - len(s.lstrip()) <= indent:
                continue
            key, rest = d.group(1), d.group(2).strip()
            directives.add(key)
            value = rest or (body[j + 1].strip() if j + 1 < len(body) else "")
            if key == "conda":
                conda = value.strip().rstrip(",")
            if key == "name" and not name:
                name = value.strip().rstrip(",")
        rules.append(
            {"file": path, "line": start + 1, "name": name or f"<line {start + 1}>",
             "directives": directives, "conda": conda, "text": "\n".join(body)}
        )  # fmt: skip
    return rules


def all_rules() -> list[dict]:
    return [r for f in rule_files() for r in parse_rules(f)]


def test_rule_parser_on_a_sample(tmp_path):
    smk = tmp_path / "x.smk"
    smk.write_text(
        "rule all:\n    input: 'a'\n\n"
        "rule a:\n    output: 'a'\n    conda:\n        '../envs/train.yaml'\n    shell: 'python scripts/train.py'\n\n"
        "for b in B:\n    rule:\n        name:\n            f'data_{b}'\n        output: 'b'\n        run:\n            pass\n"
    )
    rules = parse_rules(smk)
    assert [r["name"] for r in rules] == ["all", "a", "f'data_{b}'"]
    assert rules[0]["directives"] == {"input"}
    assert rules[1]["conda"] == "'../envs/train.yaml'" and "shell" in rules[1]["directives"]
    assert rules[2]["conda"] is None and "run" in rules[2]["directives"]


def _env_path(rule: dict) -> Path | None:
    value = rule["conda"]
    m = re.fullmatch(r"""['"]([^'"]+)['"]""", value or "")
    if not m:
        return None  # an expression: cannot be resolved textually
    return (rule["file"].parent / m.group(1)).resolve()


def test_every_rule_that_runs_code_has_a_conda_env():
    rules = all_rules()
    if not rules:
        pytest.skip("no workflow rules yet (workflow/rules/*.smk, Snakefile)")
    problems = []
    for r in rules:
        if not (r["directives"] & set(RUN_DIRECTIVES)):
            continue
        where = f"{r['file'].relative_to(REPO)}:{r['line']} rule {r['name']}"
        if r["conda"] is None:
            problems.append(f"{where}: no conda: directive")
            continue
        env = _env_path(r)
        if env is not None and (env.parent != ENVS.resolve() or not env.is_file()):
            problems.append(f"{where}: conda: {r['conda']} is not a file in envs/")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- imports


def _stdlib() -> set[str]:
    return set(sys.stdlib_module_names) | {"__future__"}


def _optional(node: ast.AST, parents: dict) -> bool:
    """Inside `try: ... except ImportError` or `if TYPE_CHECKING:`."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            names = set()
            for h in parent.handlers:
                t = h.type
                for e in t.elts if isinstance(t, ast.Tuple) else [t]:
                    names.add(getattr(e, "id", None) or getattr(e, "attr", None))
            if names & {"ImportError", "ModuleNotFoundError", "Exception", None}:
                return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        node = parent
    return False


def _local_module_file(dotted: str) -> Path | None:
    p = REPO.joinpath(*dotted.split("."))
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return None


def third_party_imports(entry: Path) -> dict[str, str]:
    """Top-level third-party modules imported (not optionally) by `entry` and the statepost
    modules it reaches, transitively -> where the first such import is."""
    seen: set[Path] = set()
    found: dict[str, str] = {}
    todo = [entry]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        tree = ast.parse(f.read_text(), filename=str(f))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        pkg = ".".join(f.relative_to(REPO).with_suffix("").parts)
        if f.name == "__init__.py":
            pkg = pkg.rsplit(".", 1)[0]
        else:
            pkg = pkg.rsplit(".", 1)[0] if "." in pkg else ""
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    root = ".".join([*base, node.module] if node.module else base)
                else:
                    root = node.module or ""
                mods = [root] + [f"{root}.{a.name}" for a in node.names]
            else:
                continue
            if _optional(node, parents):
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top == "statepost":
                    # the package __init__ files on the way run too
                    parts = mod.split(".")
                    for k in range(1, len(parts) + 1):
                        lf = _local_module_file(".".join(parts[:k]))
                        if lf:
                            todo.append(lf)
                elif top and top not in _stdlib() and top != "scripts":
                    found.setdefault(top, f"{f.relative_to(REPO)}:{node.lineno}")
    return found


@functools.lru_cache(maxsize=None)
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def module_distribution(top: str) -> str | None:
    dists = _packages_distributions().get(top)
    return canon(dists[0]) if dists else None


def test_import_closure_sees_statepost_and_third_party():
    found = third_party_imports(REPO / "tests" / "test_envs.py")
    assert "yaml" in found and "pytest" in found and "ast" not in found


def test_each_rule_env_pins_what_its_python_imports():
    rules = [r for r in all_rules() if r["conda"] and r["directives"] & set(RUN_DIRECTIVES)]
    if not rules:
        pytest.skip("no workflow rules with conda envs yet")
    problems, checked = [], 0
    for r in rules:
        env = _env_path(r)
        if env is None or not env.is_file():
            continue
        _, pip = split_deps(env)
        entries = {REPO / s for s in re.findall(r"scripts/\w+\.py", r["text"])}
        entries |= {f for m in re.findall(r"-m\s+(statepost[\w.]*)", r["text"]) if (f := _local_module_file(m))}
        for entry in sorted(entries):
            if not entry.is_file():
                problems.append(f"rule {r['name']}: runs {entry.relative_to(REPO)}, which does not exist")
                continue
            checked += 1
            for top, where in third_party_imports(entry).items():
                dist = module_distribution(top)
                if dist is None:
                    problems.append(f"rule {r['name']}: {where} imports {top}, not installed in the dev venv")
                elif dist not in pip:
                    problems.append(
                        f"rule {r['name']} (env {env.name}): {where} imports {top} ({dist}), not pinned in the env"
                    )
    assert not problems, "\n".join(sorted(set(problems)))
    assert checked, "no rule runs a scripts/*.py that could be checked"
