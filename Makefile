# The README's commands. The first run makes a virtual environment in .venv and installs
# creditgate into it; later runs reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench profile lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "creditgate needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,fast]'
	@touch $@

run: install
	$(BIN)/creditgate serve

test: install
	$(BIN)/python -m pytest

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

# creditgate beside a bare aiohttp pass-through; numbers and plot in tests/bench/results/.
bench: $(VENV)/.bench-installed
	$(BIN)/python -m tests.bench.run

# A py-spy profile of creditgate's hot path under the bench's streaming load.
profile: $(VENV)/.bench-installed
	$(BIN)/python -m tests.bench.profile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
