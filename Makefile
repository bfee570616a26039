# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint demo install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/otel-patter serve

lint: $(STAMP)
	$(VENV)/bin/ruff check otel_patter tests examples

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m otel_patter.demo

clean:
	rm -rf $(VENV) build *.egg-info
