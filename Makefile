# mailstead: `make run` starts a demo server, `make test` runs the whole test suite.
VENV ?= .venv
DATA ?= var
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Creates ./var on first use (SQLite store, self-signed TLS, domain example.test, account
# demo@example.test with a random password), then serves in the foreground. Ctrl-C stops it.
run: $(BIN)/.installed
	@test -f $(DATA)/mailstead.toml || $(BIN)/mailstead init --data $(DATA)
	@echo "demo account (address password): $$(cat $(DATA)/demo-password.txt 2>/dev/null)"
	$(BIN)/mailstead serve --data $(DATA)

test: $(BIN)/.installed
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV) $(DATA)
