# Two commands do everything on a fresh machine: `make test` and
# `make preprocess INPUT=... OUTPUT=...`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,dwpose,fan,ray,learn,app

.PHONY: setup test lint format preprocess clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, exactly pinned (the CPU wheel); then the project, which pins the same version.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	# face-alignment pulls opencv-python (needs libGL); put the headless build's files back.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "opencv-python-headless==$$($(BIN)/python -m pip show opencv-python-headless | sed -n 's/^Version: //p')"
	touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

preprocess: setup
	@test -n "$(INPUT)" || { echo "usage: make preprocess INPUT=<video file|dir|list> OUTPUT=<dir>"; exit 2; }
	@test -n "$(OUTPUT)" || { echo "usage: make preprocess INPUT=<video file|dir|list> OUTPUT=<dir>"; exit 2; }
	$(BIN)/python preprocess/run.py input="$(INPUT)" output="$(OUTPUT)" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
