# Two entry points: `make demo` ranks the built-in zoo on the built-in demo dataset; `make test` runs the tests.
# Each creates .venv and installs the project into it the first time (torch and torchvision come from the
# releases pinned in pyproject.toml).

PYTHON ?= python3
VENV   ?= .venv
# `make test` runs the tests on this many pytest-xdist worker processes (TEST_WORKERS=0: in pytest's own process).
# Each test file stays on one worker (--dist loadfile), so its module fixtures are built once; tests/conftest.py
# hands out the longest files first (and turns off xdist's reorder by number of tests).
TEST_WORKERS ?= 2
# More pytest arguments for `make test`, e.g. PYTEST_ARGS='--durations=30' or PYTEST_ARGS='tests/lead'.
PYTEST_ARGS  ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lead-installed

FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: install demo test clean-store bench-data

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,test]'
	# animal-mnist declares tensorflow as a dependency it does not use: install its data without it.
	$(BIN)/python -m pip install --quiet --no-deps 'animal-mnist==0.4'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lead rank --dataset animal-mnist-fewshot --zoo efficientnet-lite

# Fashion-MNIST (Debian package) is the pre-training source of `lead bench build`; its tests build a tiny suite.
bench-data:
	test -f $(FMNIST) || $(SUDO) apt-get install -y dataset-fashion-mnist || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }

test: $(STAMP) bench-data
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean-store:
	rm -rf lead-store
