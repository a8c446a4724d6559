# The two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: run test setup lint format bench messages

run:
	scripts/setup.sh run
	scripts/env.sh
	scripts/services.sh
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap
	$(PY) manage.py collectstatic --noinput -v0
	.venv/bin/honcho start -f Procfile

test:
	scripts/setup.sh test
	.venv/bin/ruff check .
	$(PY) -m pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench:
	scripts/setup.sh test
	$(PY) -m bench $(BENCH_ARGS)

messages:
	$(PY) manage.py makemessages -l it -l en --ignore=.venv --ignore=var --ignore=tests --ignore=bench
	$(PY) manage.py compilemessages --ignore=.venv
