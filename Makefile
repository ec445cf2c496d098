# PlugIt: `make demo` runs the demo, `make test` runs every test. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.plugit-installed

.PHONY: demo test lint docs system-deps bench clean

$(STAMP): setup.py pyproject.toml build-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --build-constraint build-constraints.txt -e '.[all,legacy,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/plugit demo

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)  # style, the layers and the absence of import cycles, the types (pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-logo
	$(PY) -m mypy

docs: $(STAMP)  # serves the documentation site on http://127.0.0.1:8001/, rebuilt on each edit
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

test: $(STAMP) system-deps lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/isolation.py
	$(PY) benchmarks/scaleout.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .grimp_cache build \
		*.egg-info
