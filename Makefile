# Every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A real series shipped in the repository (samples/README.md): no data folder needed.
CSV    ?= samples/office_temperature.csv
COLUMN ?= value
HORIZON ?= 96

.PHONY: install install-demo install-dev demo forecast test lint default-bundle clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the CPU wheel here; any other spec pulls gigabytes of CUDA.
$(VENV)/.installed-train: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train]'
	touch $@

# The edge install plus matplotlib for the demo's plot: no torch.
$(VENV)/.installed-demo: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-train
	$(BIN)/pip install -q -e '.[train,export,bench,metrics,dev]'
	touch $@

install: $(VENV)/.installed-train
install-demo: $(VENV)/.installed-demo
install-dev: $(VENV)/.installed-dev

## See it work: a simulated site, a broker and the agent; writes demo-report.json and .png.
demo: install-demo
	$(BIN)/moecast demo $(DEMO_ARGS)

## The main job: forecast the last HORIZON points of a CSV column with the shipped model and score it.
forecast: install
	$(BIN)/moecast forecast --csv $(CSV) --column $(COLUMN) --horizon $(HORIZON) --holdout $(HORIZON)

## The whole test suite. The broker tests need mosquitto (as root, it is installed from Debian's
## packages when missing; otherwise they skip and say so, or fail under CI=true).
test: install-dev
	@command -v mosquitto >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -q >/dev/null 2>&1; apt-get install -y -q mosquitto mosquitto-clients >/dev/null 2>&1; } || true
	$(BIN)/python -m pytest -q

## Rebuild agent/default_bundle from model/weights/edge (int8, signed with the development key).
default-bundle: install-dev
	rm -rf build/default_bundle
	$(BIN)/moecast export --checkpoint model/weights/edge --out build/default_bundle \
		--quantize int8 --dev-key --model-version 9
	cp build/default_bundle/* agent/default_bundle/

## ruff (lint and format) and the import-linter layering contracts.
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests/test_layering.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
