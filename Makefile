# Test infrastructure for suprsync.

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# Run apt-get through sudo only when not already root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: all deps venv lint test demo

all: test

deps:
	@if ! command -v rsync >/dev/null 2>&1 || [ ! -x /usr/sbin/sshd ] \
	    || ! command -v ssh >/dev/null 2>&1; then \
	  echo "Installing rsync and OpenSSH with apt-get"; \
	  $(APT) update -q && \
	  $(APT) install -y -q --no-install-recommends rsync openssh-server openssh-client; \
	fi

venv:
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'

lint: venv
	$(VENV)/bin/ruff check src tests

test: deps venv
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: deps venv
	$(PY) scripts/demo.py
