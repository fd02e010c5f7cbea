PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo demo-sim lint bench-analysis bench-router clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Tests that run in-process (simulations, the API in-process, fuzzing) run on two workers; tests
# that start real controllers, routers, HAProxy, Prometheus or a browser run one at a time, so
# that their processes and traffic do not compete with each other on a small machine.
SERIAL_TESTS := tests/live tests/kubernetes tests/browser tests/faults

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(foreach d,$(SERIAL_TESTS),--ignore=$(d))
	$(BIN)/python -m pytest -q $(wildcard $(SERIAL_TESTS))

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/python -m safeship.demo

demo-sim: $(STAMP)
	$(BIN)/python -m safeship.demo_sim

bench-analysis: $(STAMP)
	$(BIN)/python bench/analysis.py --generate 2000 --gen-seed 1

bench-router: $(STAMP)
	$(BIN)/python bench/router.py

clean:
	rm -rf $(VENV) .safeship
