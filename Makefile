VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench bench-deps clean browser

venv: $(STAMP)

# torch first, pinned: the local CPU wheel satisfies the pin, while an unpinned torch would
# be resolved from an index and pull CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev,demo]'
	$(PYTHON) -m fxquant.numerics.native  # native CPU kernels, once (never fails: pure torch then)
	# torchvision model definitions for tests (ViT, detection backbones); --no-deps: its own
	# torch pin would replace the CPU torch (tests import it through tests/_tv.py)
	$(PIP) install -c constraints.txt --no-deps torchvision
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fxquant demo

test: $(STAMP) browser
	$(PYTHON) -m fxquant.numerics.native  # (re)builds the native kernels if their source changed
	$(PYTHON) -m pytest -n 2 -q

# headless Chromium renders the HTML report in tests/debug (Debian package; best effort: the test
# skips with a reason where it cannot be installed)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null 2>&1 || echo "chromium could not be installed: the report render test will skip"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports --no-logo

# benchmark-only packages (timm / transformers model definitions, torchvision's pure-Python
# parts without its deps) and the peers we compare with; bench/install_peers.py tries each peer
# on its own and records why one could not install (bench/results/peers.json) instead of failing
BENCH_STAMP := $(VENV)/.bench-installed

bench-deps: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP) bench/requirements.txt bench/install_peers.py
	$(PIP) install -c constraints.txt -r bench/requirements.txt
	$(PIP) install -c constraints.txt --no-deps torchvision
	$(PYTHON) bench/install_peers.py
	touch $@

bench: $(BENCH_STAMP)
	$(PYTHON) bench/run.py

clean:
	rm -rf build dist src/*.egg-info .hypothesis .pytest_cache .ruff_cache .import_linter_cache .grimp_cache
	rm -f bench/results/*.tmp
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
