# gridbot: `make run` sets up and serves the demo; `make test` sets up and runs every test.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean vendor browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python main.py db upgrade
	$(BIN)/python main.py seed-demo --if-empty
	$(BIN)/python main.py user demo-logins
	$(BIN)/python main.py serve

# Debian's Chromium and CJK fonts for the console's browser tests (skipped when present).
browser:
	bash scripts/install-browser.sh

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Refresh the vendored browser libraries from package-lock.json (npm registry, exact pins).
ECHARTS_DIR := bot/console/static/vendor/echarts
vendor:
	npm ci --ignore-scripts --no-audit --no-fund
	mkdir -p $(ECHARTS_DIR)
	cp node_modules/echarts/dist/echarts.min.js node_modules/echarts/LICENSE \
	   node_modules/echarts/NOTICE $(ECHARTS_DIR)/
	cp node_modules/echarts/licenses/LICENSE-d3 $(ECHARTS_DIR)/

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	for script in bench/*_bench.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) data/*.db data/*.db-wal data/*.db-shm
