# The two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
SCRIPTS := $(wildcard scripts/*.sh deploy/*.sh)

.PHONY: run test setup lint typecheck format bench messages

# Everything in the foreground until Ctrl-C, which stops what it started and exits 0 (scripts/run.sh says how).
run:
	@scripts/run.sh

test:
	scripts/setup.sh test
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest

# The static part of `make test`; .pre-commit-config.yaml runs the same checks on every commit.
lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	shellcheck $(SCRIPTS)
	$(MAKE) --no-print-directory typecheck

# mypy with django-stubs ([tool.mypy] in pyproject.toml). Its Django plugin loads the settings, which need a
# SECRET_KEY (unset in a fresh clone) and must not read a developer's .env: a dummy key, no .env file.
typecheck:
	SECRET_KEY=typecheck FABOMATIC_ENV_FILE=/nonexistent $(PY) -m mypy .

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench:
	scripts/setup.sh test
	$(PY) -m bench $(BENCH_ARGS)

messages:
	$(PY) manage.py makemessages -l it -l en --ignore=.venv --ignore=var --ignore=tests --ignore=bench
	$(PY) manage.py compilemessages --ignore=.venv
