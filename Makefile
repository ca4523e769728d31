# Two entry points for a newcomer: `make demo` and `make test`.
# The venv gets the CPU build of torch first (local wheel), then winnow with its dev extra,
# pinned by constraints.txt so CI installs the versions we test with; it is brought up to date
# whenever pyproject.toml or constraints.txt change. `make test` also needs headless Chromium
# for the report's browser test: .ci/setup-chromium installs it (as root) or says how.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv chromium demo test clean

venv: $(VENV)/.installed

# pip runs as `python -m pip`: the venv's pip script keeps the path of wherever the venv was made.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $@

chromium:
	.ci/setup-chromium

demo: venv
	$(BIN)/winnow demo

test: chromium venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) winnow-store winnow-bench
