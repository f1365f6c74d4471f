# daemon.pyz — developer entry points. `make venv` once, then `make test`, `make demo`, `make bench`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv test lint pyz compat bench demo proto clean

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

# One file per architecture (each runs on CPython 3.9-3.13); dist/daemon.pyz is this machine's.
pyz: venv
	PYTHON=$(PY) ARCH=x86_64 build/shiv.sh
	PYTHON=$(PY) ARCH=aarch64 build/shiv.sh
	cp -f dist/daemon-$$(uname -m).pyz dist/daemon.pyz

# The pyz inside Debian 11 (python3 3.9) and 13 (3.13) root filesystems, cached in
# ~/.cache/daemon-compat (root; debootstrap; deb.debian.org). See tests/compat.
compat: venv pyz
	$(PY) -m tests.compat.rootfs ensure bullseye trixie
	DAEMON_COMPAT=1 $(PY) -m pytest -q tests/compat -p no:cacheprovider

bench: venv pyz
	$(PY) bench/run.py

demo: venv pyz
	$(PY) examples/demo.py

clean:
	rm -rf dist build/lib .pytest_cache .demo
