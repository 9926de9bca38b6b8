# ferroflow developer tasks. Needs only python3 (3.10+), pip and cargo; everything else is
# installed into .venv by `make venv` (every target that needs it depends on it).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
PY_DIRS := python tests benches examples

# maturin installs into the virtualenv named by VIRTUAL_ENV; CONDA_PREFIX would confuse it.
MATURIN_DEVELOP := env -u CONDA_PREFIX VIRTUAL_ENV="$(CURDIR)/$(VENV)" "$(BIN)/maturin" develop

.PHONY: venv build build-release wheel check-wheel stubtest doctest release-check test demo \
	bench lint typecheck fmt proptest sysdeps

# Where `make wheel` puts the wheel, and the wheel it built for this version.
DIST := dist

venv: $(STAMP)

# (Re)create .venv when it is missing or its interpreter no longer runs, then install the
# pinned dev requirements; re-run whenever requirements-dev.txt is newer than the stamp.
$(STAMP): requirements-dev.txt
	@if ! "$(BIN)/python" -c '' 2>/dev/null; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		$(PYTHON) -m venv --clear $(VENV); \
	fi
	"$(BIN)/python" -m pip install --disable-pip-version-check --progress-bar off \
		-r requirements-dev.txt
	touch $(STAMP)

build: venv
	$(MATURIN_DEVELOP)

build-release: venv
	$(MATURIN_DEVELOP) --release

# The release wheel (abi3: one wheel for every CPython >= 3.10), as users install it.
wheel: venv
	rm -f $(DIST)/ferroflow-*.whl
	env -u CONDA_PREFIX "$(BIN)/maturin" build --release --out $(DIST)

# Install the wheel into a fresh virtualenv (not editable, not the source tree) and run
# the demo with it, as a script and through the installed `ferroflow` command.
check-wheel: wheel
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
		-q $(DIST)/ferroflow-*.whl; \
	cd "$$tmp"; export FERROFLOW_HOME="$$tmp/home"; \
	"$$tmp/venv/bin/python" -c 'import ferroflow, sys; \
		assert ferroflow.__file__.startswith(sys.prefix), ferroflow.__file__; \
		print("installed:", ferroflow.__file__, ferroflow.__version__)'; \
	"$$tmp/venv/bin/python" -c 'from importlib.resources import files; \
		ui = files("ferroflow.server") / "ui"; \
		assert (ui / "templates" / "run.html").is_file() and (ui / "static" / "ui.css").is_file(), \
		"the UI templates and static files are missing from the wheel"'; \
	"$$tmp/venv/bin/python" "$(CURDIR)/examples/demo.py"; \
	"$$tmp/venv/bin/ferroflow" run "$(CURDIR)/examples/demo.py" --param n=100; \
	"$$tmp/venv/bin/ferroflow" runs ls

# The hand-written stub of the native module matches what the module exports.
stubtest: build
	"$(BIN)/python" -m mypy.stubtest ferroflow._native

# The examples of the docstrings and of README.md (also part of `make test`).
doctest: build
	"$(BIN)/python" -m pytest tests/test_docs.py -q

# What a release needs beyond the tests: the wheel works installed, the stub is true.
release-check: check-wheel stubtest

# System packages the tests need: PostgreSQL (Debian's `postgresql`; the test fixture starts
# a private server from its binaries) and Chromium (Debian's `chromium`, which Playwright
# drives for the UI's browser tests; never `playwright install`). Installed with apt-get when root, else the command
# is printed and make stops.
# $(call system_package,PACKAGE,CHECK,WHO): nothing when CHECK succeeds; else apt-get
# installs PACKAGE when root (updating the lists once if the first try fails), or the
# command is printed and make stops.
define system_package
	@if $(2); then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(1) (for $(3))"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null \
			|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; }; \
	else \
		echo "$(3) need $(1): run  sudo apt-get install -y $(1)" >&2; \
		exit 1; \
	fi
endef

sysdeps:
	$(call system_package,postgresql,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null,the server tests)
	$(call system_package,chromium,[ -x /usr/bin/chromium ],the UI's browser tests)

test: venv sysdeps
	cargo test -p ferroflow-core
	$(MATURIN_DEVELOP)
	"$(BIN)/python" -m pytest tests

# The core's property tests at 100,000 cases each (CI runs 2,000 with `make test`).
proptest:
	PROPTEST_CASES=100000 cargo test --release -p ferroflow-core --test inflight --test prop

demo: build-release
	"$(BIN)/python" examples/demo.py

bench: build-release
	"$(BIN)/python" -m pytest benches --benchmark-only
	"$(BIN)/python" benches/compare.py
	"$(BIN)/python" benches/dask_compare.py

lint: venv typecheck
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	"$(BIN)/ruff" check $(PY_DIRS)
	"$(BIN)/ruff" format --check $(PY_DIRS)

typecheck: venv
	"$(BIN)/mypy" python/ferroflow

fmt: venv
	cargo fmt --all
	"$(BIN)/ruff" format $(PY_DIRS)
