# The two commands a new user runs: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint format bench clean

setup: $(STAMP)

# The constraint keeps the local CPU torch 2.13.0: anything that admits a newer torch pulls a CUDA build.
# musicnn (--no-deps) only supplies the eval taggers' TF1 checkpoints, read without tensorflow: its wheel declares tensorflow.
# torchvggish (--no-deps: an sdist declaring an unpinned torch) supplies VGGish for FAD_vgg; its package imports resampy,
# whose one dependency, numba, librosa already brings.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'tinysoundfont>=0.3.6'
	$(BIN)/python -m pip install --quiet --no-deps 'musicnn==0.1.0'
	$(BIN)/python -m pip install --quiet --no-deps 'torchvggish==0.2'
	$(BIN)/python -m pip install --quiet -c constraints.txt 'resampy==0.4.3'
	touch $(STAMP)

# Offline: the shipped demo model, the embedded codec and the embedded MiniLM text encoder.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/ssmttm generate "An upbeat funk groove with slap bass, clavinet and a brass lead" \
		--duration 10 --seed 0 -o demo.wav

# ruff, then the import contracts in pyproject.toml ([tool.importlinter]).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

# test: what to run while working (minutes-long tests, marked slow, left out); test-all: everything, as CI does.
test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

test-all: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/synth_speed.py --n 200
	$(BIN)/python benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
