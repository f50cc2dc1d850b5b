"""Numbers in the docs come from runs: README.md and config/README.md quote the snapshots
docs/toy/{toy,toy-seeds,toy-heldout,toy-factorial}.md that `make toy`, `make toy-seeds`, `make toy-heldout` and
`make toy-factorial` write, and each snapshot but the factorial's is what a fresh run of its experiment gives.

The factorial's fresh run is not repeated here: its DAG (27 trainings, 84 evaluations) takes about 25 minutes on
two cores, more than the suite can spend beside the toy runs it already repeats. Its snapshot is checked against
its own run by `make toy-factorial`, which rewrites it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import snakemake

from statepost import config as cfglib
from statepost.report import snapshot

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "config" / "README.md"]
SNAPSHOTS = {"toy": ["config/toy.yaml"], "toy-seeds": ["config/toy.yaml", "config/toy-seeds.yaml"],
             "toy-heldout": ["config/toy.yaml", "config/toy-heldout.yaml"]}  # fmt: skip
QUOTED = [*SNAPSHOTS, "toy-factorial"]  # the snapshots the docs may quote


def signals(configfiles) -> dict[str, str]:
    cfg = cfglib.validate(cfglib.read_config_files([ROOT / f for f in configfiles]))
    return {run: cfg["runs"][run]["signal"]["type"] for run in cfglib.run_order(cfg)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_quote_the_snapshots_exactly(doc, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = doc.read_text(encoding="utf-8")
    blocks = list(snapshot.BLOCK.finditer(text))
    assert blocks, f"{doc.name} quotes no snapshot"
    assert {m["path"] for m in blocks} <= {f"docs/toy/{name}.md" for name in QUOTED}
    assert snapshot.quote(text, {}) == text, f"{doc.name} differs from its snapshots: run make toy / toy-seeds / toy-heldout"


def test_the_readme_quotes_the_seed_verdicts():
    names = {(m["path"], m["section"]) for m in snapshot.BLOCK.finditer((ROOT / "README.md").read_text())}
    assert {("docs/toy/toy-seeds.md", "claims"), ("docs/toy/toy-seeds.md", "scores")} <= names
    assert {("docs/toy/toy-heldout.md", "claims"), ("docs/toy/toy-heldout.md", "scores")} <= names  # beside them


def test_quote_replaces_a_stale_block_and_names_a_missing_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snap = "<!-- header -->\n\n# Snapshot\n\n## base\n\nBase: 0.233.\n\n## claims\n\n| a |\n|---|\n| 1 |\n"
    doc = "Intro.\n<!-- snapshot docs/s.md#base -->\nBase: 0.200.\n<!-- end snapshot -->\nMore.\n"
    assert snapshot.quote(doc, {"docs/s.md": snap}) == doc.replace("0.200", "0.233")
    with pytest.raises(KeyError, match="docs/s.md has no section 'scores'"):
        snapshot.quote(doc.replace("#base", "#scores"), {"docs/s.md": snap})


@pytest.fixture(scope="module")
def seeds_run(toy_run):
    """The toy-seeds (seeds 1-3) and toy-heldout (seeds 4-6) experiments, run in the toy run's copy of the
    repository."""
    work, _ = toy_run
    for name in ("toy-seeds", "toy-heldout"):
        snakemake(work, "--configfile", *SNAPSHOTS[name])
    return work


@pytest.mark.parametrize("name", list(SNAPSHOTS))
def test_each_snapshot_is_a_fresh_run(name, toy_run, seeds_run, monkeypatch):
    """The committed snapshot equals the one rendered from a fresh run of its experiment (the toy is deterministic
    on CPU); when a change moves the toy's results, `make toy` / `make toy-seeds` rewrite it and the docs."""
    work, _ = toy_run
    monkeypatch.chdir(work)
    make = f"make {name}"
    fresh = snapshot.render(Path("results") / name, signals(SNAPSHOTS[name]), make)
    committed = (ROOT / "docs" / "toy" / f"{name}.md").read_text(encoding="utf-8")
    assert fresh == committed, f"docs/toy/{name}.md is stale: run `{make}`"
