# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint demo bench reliability install clean

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

# Run by hand, not part of `make test`: throughput, latency, CPU and memory against the floor.
bench: $(STAMP)
	$(VENV)/bin/otel-patter bench --scale --plot docs/scale.png --out docs/bench.json --json

# The long reliability and security suite (tests/reliability/; `make test` runs its short version): 20 kill -9
# rounds under load, 105k fuzz inputs, bigger floods. About eleven minutes on 2 cores.
reliability: $(STAMP)
	OTEL_PATTER_LONG=1 $(PY) -m pytest -q -p no:cacheprovider -s tests/reliability

clean:
	rm -rf $(VENV) build *.egg-info
