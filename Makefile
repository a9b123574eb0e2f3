# The two commands of the README: `make run` (the service, embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint install clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e clients/python
	touch $@

install: $(VENV)/.installed

## run: migrate, seed the demo, serve on http://127.0.0.1:8000 with a Celery worker and beat
run: install
	$(PY) scripts/run_local.py

## test: lint, migration check, then the whole suite on a throw-away PostgreSQL server
test: install
	$(PY) -m ruff check .
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) scripts/with_postgres.py -- $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
