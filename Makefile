# Set-up, tests and demo for suprsync.
#
#   make demo         install what is missing, then run the demo
#   make test         install what is missing, then lint and run the whole test suite
#                     in parallel (PYTEST_XDIST= for a serial run; PYTEST_ARGS= adds arguments)
#   make bench        run the benchmarks (several minutes); table on stdout and in
#                     benchmarks/results.json (see docs/benchmarks.md)
#   make bench-quick  the small variants of the benchmarks (a smoke test, ~30 s)
#
# Environments:
#   .venv           suprsync with its test and ocs extras
#   .venv-peer      socs 0.6.4, the original agent, used by tests as a peer program
#   .venv-crossbar  the crossbar router the OCS integration test starts

VENV := .venv
PY := $(VENV)/bin/python
PEER := .venv-peer
CROSSBAR := .venv-crossbar
PYTEST_ARGS ?=
# The suite runs in parallel (pytest-xdist); each test file stays on one worker, which
# keeps its module fixtures (and the 1M-row catalog of test_query_plans) built once.
# Most tests wait on subprocesses, so more workers than cores pay. PYTEST_XDIST= runs
# it serially.
PYTEST_XDIST ?= -n 4 --dist loadfile
BENCH_ARGS ?=
PIP_QUIET := -q --disable-pip-version-check

# Run apt-get through sudo only when not already root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: all deps pgdeps venv peer crossbar lint test demo bench bench-quick clean

all: test

deps:
	@if ! command -v rsync >/dev/null 2>&1 || [ ! -x /usr/sbin/sshd ] \
	    || ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1 \
	    || ! command -v chromium >/dev/null 2>&1; then \
	  echo "Installing rsync, OpenSSH and chromium (headless, for the status-page test) with apt-get"; \
	  $(APT) update -q && \
	  $(APT) install -y -q --no-install-recommends rsync openssh-server openssh-client chromium; \
	fi

pgdeps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "Installing PostgreSQL with apt-get"; \
	  $(APT) update -q && \
	  $(APT) install -y -q --no-install-recommends postgresql postgresql-client; \
	fi

venv:
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[test,ocs,postgresql,metrics]'

peer:
	@test -x $(PEER)/bin/python || python3 -m venv $(PEER)
	@$(PEER)/bin/python -c 'import socs.db.suprsync' 2>/dev/null \
	  || $(PEER)/bin/pip install $(PIP_QUIET) 'socs==0.6.4'

crossbar:
	@test -x $(CROSSBAR)/bin/python || python3 -m venv $(CROSSBAR)
	@test -x $(CROSSBAR)/bin/crossbar || $(CROSSBAR)/bin/pip install $(PIP_QUIET) crossbar

lint: venv
	$(VENV)/bin/ruff check src tests scripts benchmarks

test: deps pgdeps venv peer crossbar
	$(VENV)/bin/ruff check src tests scripts benchmarks
	SUPRSYNC_PEER_PYTHON=$(CURDIR)/$(PEER)/bin/python \
	SUPRSYNC_CROSSBAR=$(CURDIR)/$(CROSSBAR)/bin/crossbar \
	  $(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS)

demo: deps venv
	$(PY) scripts/demo.py

bench: deps venv peer
	$(PY) -m benchmarks.run $(BENCH_ARGS)

bench-quick: deps venv peer
	$(PY) -m benchmarks.run --quick --reps 1 --out benchmarks/results-quick.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEER) $(CROSSBAR) demo .pytest_cache
