# The two commands of the README: `make run` (the service, embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test lint install install-dev test-tools clean

# What running needs: the service and the agent client its demo fleet is built on.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e . -e clients/python
	touch $@

# What testing adds: the dev extras (pytest, Playwright, ruff, ...).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## run: migrate, seed the demo, serve on http://127.0.0.1:$(PORT) with a Celery worker and beat
run: install
	@$(PY) scripts/run_local.py --port $(PORT)

## test-tools: refuse (with the command that installs them) without PostgreSQL, Redis, Chromium
test-tools:
	@$(PYTHON) scripts/with_postgres.py --check
	@$(PYTHON) -m tests.tools

# The tests that also run on SQLite, the embedded default of `make run`: ingestion and rollups,
# the close, reconcile, budgets, the usage API, Stripe usage reports, the portal's pages, the
# billing cycle (`close_periods`) and the plan and meter triggers.
# Tests marked `postgres` (partitions, row and advisory locks, server-side binding) are
# deselected there.
SQLITE_TESTS := tests/metering tests/invoicing/test_closing.py \
	tests/invoicing/test_closing_batches.py tests/invoicing/test_api.py \
	tests/invoicing/stripe/test_stripe_reconcile.py tests/invoicing/stripe/test_stripe_usage.py \
	tests/budgets tests/portal/test_pages.py \
	tests/billing_cycle tests/invoicing/test_plan_immutability.py tests/invoicing/test_rate_cards.py \
	tests/invoicing/test_rate_card_reads.py tests/invoicing/test_rate_card_admin.py \
	tests/invoicing/test_same_lines.py

## test: lint, type check, migration check, the whole suite on a throw-away PostgreSQL server,
## then the SQLite pass (SQLITE_TESTS on a SQLite file in a temporary directory)
test: test-tools install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) scripts/with_postgres.py -- $(PY) -m pytest $(PYTEST_ARGS)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		DATABASE_URL="sqlite:///$$tmp/billing.sqlite3" \
		$(PY) -m pytest -m "not postgres" $(PYTEST_ARGS) $(SQLITE_TESTS)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis .mypy_cache
