# Two entry points: `make demo` ranks the built-in zoo on the built-in demo dataset; `make test` runs the tests.
# Each creates .venv and installs the project into it the first time (torch and torchvision come from the
# releases pinned in pyproject.toml).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lead-installed

.PHONY: install demo test clean-store

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

test: $(STAMP)
	$(BIN)/python -m pytest

clean-store:
	rm -rf lead-store
