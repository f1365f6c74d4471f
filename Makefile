# daemon.pyz — developer entry points. `make venv` once, then `make test`, `make demo`, `make bench`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv test lint pyz bench demo proto clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: venv pyz
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check .

proto: venv
	$(PY) -m daemon_app.proto.generate

pyz: venv
	PYTHON=$(PY) build/shiv.sh

bench: venv pyz
	$(PY) bench/run.py

demo: venv pyz
	$(PY) examples/demo.py

clean:
	rm -rf dist build/lib .pytest_cache .demo
