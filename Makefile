# daemon.pyz — developer entry points. `make venv` once, then `make test`, `make demo`, `make bench`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv test lint pyz compat bench demo proto clean coverage

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# `make test COVERAGE=1` (= `make coverage`, what CI runs) runs the same suite with every Python process
# it starts measured: coverage's .pth hook in the venv starts coverage in any process that has
# COVERAGE_PROCESS_START. build/coverage_areas.py combines, reports per area and enforces the floors
# (docs/testing.md). PYTEST_ARGS narrows a coverage run (the floors then fail, the table still helps).
COVERAGE_DIR := build/coverage
test: venv pyz
ifeq ($(COVERAGE),1)
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)
	COVERAGE_PROCESS_START=$(abspath pyproject.toml) COVERAGE_FILE=$(abspath $(COVERAGE_DIR))/.coverage \
	    $(PY) -m pytest -q $(PYTEST_ARGS); tests=$$?; \
	    $(PY) build/coverage_areas.py $(COVERAGE_DIR); areas=$$?; \
	    [ $$tests -eq 0 ] && [ $$areas -eq 0 ]
else
	$(PY) -m pytest -q
endif

coverage:
	$(MAKE) test COVERAGE=1

lint: venv
	$(PY) -m ruff check .

proto: venv
	$(PY) -m daemon_app.proto.generate

# One file per architecture (each runs on CPython 3.9-3.13); dist/daemon.pyz is this machine's.
pyz: venv
	PYTHON=$(PY) ARCH=x86_64 build/shiv.sh
	PYTHON=$(PY) ARCH=aarch64 build/shiv.sh
	cp -f dist/daemon-$$(uname -m).pyz dist/daemon.pyz

# The pyz inside Debian 11 (python3 3.9) and 13 (3.13) root filesystems, and the aarch64 pyz in a
# Debian 13 arm64 one under qemu-user; cached in ~/.cache/daemon-compat (root; debootstrap,
# qemu-user-static; deb.debian.org). See tests/compat.
compat: venv pyz
	$(PY) -m tests.compat.rootfs ensure bullseye trixie trixie:aarch64
	DAEMON_COMPAT=1 $(PY) -m pytest -q tests/compat -p no:cacheprovider

bench: venv pyz
	$(PY) bench/run.py

demo: venv pyz
	$(PY) examples/demo.py

clean:
	rm -rf dist build/lib .pytest_cache .demo build/coverage
