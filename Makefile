# Two commands set everything up on a fresh machine with Python 3 and make:
#   make run    - virtual environment, install, serve on 127.0.0.1:5000
#   make test   - virtual environment with the dev extra, lint, type check, tests
PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
HOST    ?= 127.0.0.1
PORT    ?= 5000
BACKEND ?=
PYTEST_ARGS ?=

.PHONY: run test test-fast test-unit lint typecheck bench bench-quick robust reload install install-systemd clean

# The build's own warnings (setuptools, pip) go to $(VENV)/install.log and are shown
# only if it fails: `make run` should show echod's output, not the build's.
QUIET_LOG = > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip $(QUIET_LOG)

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	@echo "installing echod into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/pip install --quiet -e '.[loadtest]' $(QUIET_LOG)
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	@echo "installing echod and its dev tools into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/pip install --quiet -e '.[dev]' $(QUIET_LOG)
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	@exec $(BIN)/echod --host $(HOST) --port $(PORT) $(if $(BACKEND),--backend $(BACKEND))

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check echod loadtest tests bench docs/examples
	$(BIN)/ruff format --check echod loadtest tests bench docs/examples

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# Wall-clock bounds (the `timing` marker) run after the rest, on a quieter machine, and
# once more if one fails: a stall of the machine, not of echod, gets a second chance.
test: lint typecheck
	$(BIN)/pytest --durations=25 -m 'not timing' $(PYTEST_ARGS)
	$(BIN)/pytest -m timing $(PYTEST_ARGS) || $(BIN)/pytest -m timing --last-failed $(PYTEST_ARGS)

test-fast: $(VENV)/.dev-installed
	$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

# The developer's loop, under a minute: the pure parts and the generated docs, no
# backend matrix.
UNIT_TESTS = tests/unit tests/metrics/test_exposition.py tests/metrics/test_units.py \
	tests/metrics/test_freshness.py tests/udp/test_guard.py tests/loadtest/test_loadtest_units.py \
	tests/loadtest/test_bench_report.py tests/service/test_channel.py \
	tests/packaging/test_manpages.py::test_committed_pages_match_the_option_tables
test-unit: $(VENV)/.dev-installed
	$(BIN)/pytest --durations=10 $(UNIT_TESTS) $(PYTEST_ARGS)

# Unit files, a venv under /opt/echod and the man pages (PREFIX=, UNITDIR=, MANDIR=,
# DESTDIR=: systemd/README.md); `make install` is the same, the name packagers try first.
install-systemd:
	systemd/install.sh

install: install-systemd

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (bench/): every echod backend and the C reference through the fixed
# matrix; results in bench/results/, `python -m bench --publish-only` copies the
# latest report and charts to docs/bench/.
bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

bench-quick: $(VENV)/.dev-installed
	$(BIN)/python -m bench --quick

# Robustness (tests/robust/): every backend and a deliberately naive server through the
# cases of issue 5 at full scale (a few minutes, loopback only); writes docs/robustness.md.
# `pytest -m robust` runs the same cases at a short scale.
robust: $(VENV)/.dev-installed
	$(BIN)/python -m tests.robust

# Reloads and upgrades under load (tests/control/): 20 SIGHUPs and 3 SIGUSR2s under
# persistent and churning echod-bench load, on epoll, uvloop and threads in both listen
# modes (about 3 minutes, loopback only); writes the table in docs/control.md.
reload: $(VENV)/.dev-installed
	$(BIN)/python -m tests.control
