# The README's two commands: `make toy` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Rules run `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
CORES ?= 2

.PHONY: install toy toy-seeds toy-heldout toy-factorial test lint clean-toy

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Each toy target ends by writing its snapshot (docs/toy/{experiment}.md) and the blocks of README.md and
# config/README.md that quote it: the docs' numbers are the run's (tests/test_snapshot.py checks).
SNAPSHOT = $(BIN)/python scripts/snapshot.py --quote README.md config/README.md

toy: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/toy.yaml
	$(SNAPSHOT) --make "make toy" --configfile config/toy.yaml -- results/toy docs/toy/toy.md
	@echo; cat results/toy/tables/scores.md; echo; cat results/toy/tables/claims.md

# The toy with three training seeds (config/toy-seeds.yaml over config/toy.yaml, in results/toy-seeds/): the
# README's claims table and figure.
toy-seeds: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/toy.yaml config/toy-seeds.yaml
	$(SNAPSHOT) --make "make toy-seeds" --configfile config/toy.yaml config/toy-seeds.yaml -- results/toy-seeds docs/toy/toy-seeds.md
	cp results/toy-seeds/figures/retention_vs_gain.png docs/toy/retention_vs_gain.png
	@echo; cat results/toy-seeds/tables/scores.md; echo; cat results/toy-seeds/tables/claims.md

# Held-out seeds 4-6 (config/toy-heldout.yaml, in results/toy-heldout/), run once after every choice was made on
# seeds 0-3: the README reports them beside seeds 1-3.
toy-heldout: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/toy.yaml config/toy-heldout.yaml
	$(SNAPSHOT) --make "make toy-heldout" --configfile config/toy.yaml config/toy-heldout.yaml -- results/toy-heldout docs/toy/toy-heldout.md
	@echo; cat results/toy-heldout/tables/scores.md; echo; cat results/toy-heldout/tables/claims.md

# The states x signals factorial (config/factorial.yaml over config/toy.yaml, in results/toy-factorial/): the 2 x 2 grid,
# the dose-response over lambda and RL beside them, on seeds 1-3.
toy-factorial: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/toy.yaml config/factorial.yaml
	$(SNAPSHOT) --make "make toy-factorial" --configfile config/toy.yaml config/factorial.yaml -- results/toy-factorial docs/toy/toy-factorial.md
	cp results/toy-factorial/figures/grid.png results/toy-factorial/figures/dose_response.png docs/toy/
	@echo; cat results/toy-factorial/tables/effects.md

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/
