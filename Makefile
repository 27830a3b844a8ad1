# The two set-up commands of README.md: `make demo` (main job) and `make test` (whole suite).
# `make test-fast`: the same checks with the tests marked slow left out (minutes instead of ~10).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and alone: the pinned CPU build; anything else would pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# the browser edition's tests drive Debian's chromium (Playwright never downloads a browser)
browser:
	command -v chromium >/dev/null || { test "$$(id -u)" = 0 && (apt-get install -y -q chromium || \
		(apt-get update -q && apt-get install -y -q chromium)); } || \
		{ echo "the browser tests need chromium: sudo apt-get install chromium" >&2; exit 1; }

demo: $(STAMP)
	$(BIN)/uharmony demo --out out/demo

# Worker processes: most tests run one torch thread, and the Flower deployments mostly wait on polling, so two
# workers keep two cores busy; a whole file goes to one worker, so module fixtures are built once
TEST_WORKERS ?= 2

test: lint browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 Testing

test-fast: lint browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" Testing

# ruff, the type checker (mypy, configured in pyproject.toml: UHarmonyLib and UHarmonySlicerLib) and the
# Python 3.9 check (vermin) of what Slicer runs
lint: $(STAMP)
	$(BIN)/ruff check UHarmonyLib UHarmonySlicer UHarmonyWeb Testing benchmarks scripts
	$(BIN)/ruff format --check UHarmonyLib UHarmonySlicer UHarmonyWeb Testing benchmarks scripts
	$(BIN)/mypy
	# Slicer 5.8's Python is 3.9 (5.10's 3.12): the module and the engine it runs as PythonSlicer -m UHarmonyLib.
	# `long` is torch's Tensor.long(), not Python 2's builtin.
	$(BIN)/vermin -q -t=3.9- --no-tips --violations --exclude long UHarmonySlicer UHarmonyLib

bench: $(STAMP)
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python scripts/results_md.py

clean:
	rm -rf $(VENV) out
