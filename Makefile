# Two commands for a fresh machine (see README):
#   make demo   set up, then run the daemon on SQLite with a bundled traffic player
#   make test   set up, then run the whole test suite (SQLite and PostgreSQL)
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-deps setup bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/callbackd demo --dir demo

test: $(STAMP) test-deps
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# What the tests need on a fresh machine (CI runs as root): Debian's chromium and a CJK font for the
# browser tests, systemd-analyze and the unit's user and group for the unit-file check, and the pinned
# Prism from tools/prism/package-lock.json.
test-deps:
	@if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" \
		|| ! command -v systemd-analyze >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei systemd >/dev/null; fi
	@getent group asterisk >/dev/null || groupadd --system asterisk
	@getent passwd callbackd >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin callbackd
	@[ -x tools/prism/node_modules/.bin/prism ] || (cd tools/prism && npm ci --no-audit --no-fund --silent)

bench: $(STAMP)
	$(VENV)/bin/python bench/ingest.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo build *.egg-info .pytest_cache .hypothesis
