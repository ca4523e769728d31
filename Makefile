# Two entry points for a newcomer: `make demo` and `make test`.
# The venv gets the CPU build of torch first (local wheel), then winnow with its dev extra,
# pinned by constraints.txt so CI installs the versions we test with.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/winnow demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) winnow-store
