# Two commands matter: `make demo` (the quickstart) and `make test` (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test lint typecheck unit e2e crds bench chaos clean control-plane cluster-up cluster-down

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e '.[test]' -e ./testing

demo: install
	$(VENV)/bin/makima demo

lint: install
	$(VENV)/bin/ruff check operator testing tests benchmarks
	$(VENV)/bin/ruff format --check operator testing tests benchmarks
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

# The upstream control plane (kube-apiserver, kube-controller-manager, etcd) built from the Go
# module proxy into ~/.cache/makima/control-plane/<release>/, once per machine.
control-plane: install
	$(PY) -m tests.realcluster build

cluster-up: control-plane
	$(PY) -m tests.realcluster up

cluster-down: install
	$(PY) -m tests.realcluster down

# The whole default suite; pytest's exit code 5 (nothing collected) is a failure here.
# Builds (or reuses) the control plane first; without Go its tests skip with the reason.
test: install lint typecheck
	$(PY) -m tests.realcluster build --if-possible
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not e2e"

unit: install
	$(VENV)/bin/python -m pytest -q tests/unit

e2e: install
	$(VENV)/bin/python -m pytest -v -m e2e tests/e2e

crds: install
	$(VENV)/bin/makima crds --out crds/
	cp crds/*.yaml charts/makima/crds/
	$(VENV)/bin/makima crds --reference > docs/crd-reference.md

# The long chaos run (tests/reliability/harness.py): a 30-step directive while the operator is
# SIGKILLed 200 times and the runner-operator path is cut; prints its figures. Sizes:
# CHAOS_STEPS, CHAOS_KILLS, CHAOS_CUTS (`make chaos CHAOS_KILLS=20`).
CHAOS_STEPS ?= 30
CHAOS_KILLS ?= 200
CHAOS_CUTS ?= 10
chaos: install
	MAKIMA_CHAOS=1 MAKIMA_CHAOS_STEPS=$(CHAOS_STEPS) MAKIMA_CHAOS_KILLS=$(CHAOS_KILLS) MAKIMA_CHAOS_CUTS=$(CHAOS_CUTS) \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/reliability/test_chaos.py -k chaos_long

# Every benchmark side by side: one table, benchmarks/results/latest.{json,png} (and a dated
# copy). `make bench ARGS=--full` runs the scale benchmark at 2,000 directives x 25 steps.
bench: install
	$(PIP) install -q -e '.[test,bench]' -e ./testing
	$(PY) benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
