# Two commands on a fresh machine (Python 3.11 + pip, nothing else):
#   make demo   - virtualenv, install, run the quickstart on synthetic data
#   make test   - virtualenv with test extras, run the whole check: lint and types, the CPU test suite
#                 and docstring examples, the CUDA kernels under the simulator, the docs
#                 build (warnings as errors) and its doctests, an asv smoke run and a
#                 smoke run of the model-quality study, and the kernels as plain Python
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
VBIN := $(abspath $(VENV))/bin
PIP := $(VPY) -m pip -q --disable-pip-version-check
# The CPU build of torch: from where pip is configured to look first (a local wheel of that
# version, if any), else from PyTorch's CPU index; plain `pip install torch` on Linux pulls a
# multi-GB CUDA build. The project itself asks for torch>=2.4.
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
SPHINX := $(VPY) -m sphinx -W --keep-going
# The tests that exercise the CPU kernels (run again with NUMBA_DISABLE_JIT=1)
PUREPYTHON_TESTS := tests/test_topk.py tests/test_lookup.py tests/test_hamming.py tests/test_simhash.py \
	tests/test_sdim.py tests/test_table.py tests/test_threads.py tests/test_validation.py tests/test_inputs.py \
	tests/test_ragged.py

.PHONY: demo test install install-test lint test-cpu test-cudasim docs asv-smoke study-smoke test-purepython bench gpu-check

$(VPY):
	$(PYTHON) -m venv $(VENV)

install: $(VPY)
	$(PIP) install -e .

install-test: $(VPY)
	$(PIP) install "$(TORCH_SPEC)" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" --extra-index-url $(TORCH_INDEX)
	$(PIP) install -e ".[test,lint,torch,cuda,docs,bench,data,dask]"

demo: install
	$(VPY) examples/quickstart.py

# CPU tests, property tests and the docstring examples of src/ (testpaths in pyproject.toml)
test-cpu: install-test
	@echo; echo "== [1/6] CPU tests, property tests and docstring examples (about 5 min on 2 cores; the cudasim-marked tests are skipped here and run in step 2) =="
	$(VPY) -m pytest --durations=10

# The CUDA kernels under numba-cuda's simulator, in their own process
test-cudasim: install-test
	@echo; echo "== [2/6] CUDA kernels under numba-cuda's simulator, in their own process (about 3 min) =="
	NUMBA_ENABLE_CUDASIM=1 $(VPY) -m pytest tests/test_cuda_sim.py tests/test_cuda_sim_sdim.py tests/test_cuda_sim_ragged.py tests/test_persistence.py tests/test_pack_offset.py tests/test_inputs.py tests/test_sdim_buckets_ragged.py -m cudasim -p no:cacheprovider --durations=5

# The documentation site (gallery examples executed) and its doctests, offline, warnings as errors
docs: install-test
	@echo; echo "== [3/6] documentation: html with the gallery examples executed (about 3 min), then its doctests =="
	$(SPHINX) -b html docs docs/_build/html
	$(SPHINX) -q -b doctest -D plot_gallery=0 docs docs/_build/doctest
	@echo "docs: built in docs/_build/html (warnings as errors) and every doctest passed"

# asv: the suite imports and every benchmark runs once (no timings are compared)
asv-smoke: install-test
	@echo; echo "== [4/6] asv smoke run: the benchmark suite imports and each benchmark runs once (no timings compared) =="
	cd asv_benchmarks && $(VBIN)/asv check --python=same
	cd asv_benchmarks && $(VBIN)/asv machine --yes >/dev/null && \
		$(VBIN)/asv run --python=same --quick --dry-run --show-stderr
	@echo "asv smoke: every benchmark ran once without error"

# The model-quality study, every row once on small synthetic data (a smoke run, not the published table)
study-smoke: install-test
	@echo; echo "== [5/6] python -m etaretrieval.study --quick: every row of the study once, small (about 1-2 min) =="
	$(VPY) -m etaretrieval.study --quick --out study_out/quick
	$(VPY) -m etaretrieval.study --quick --frontier --out study_out/quick_frontier

# What a reviewer checks first: ruff (the rule set in pyproject.toml) and mypy over src/ as a
# ratchet (errors and "# type: ignore" comments may only go down: .ci/typecheck_ceiling)
lint: install-test
	@echo; echo "== [0/6] lint: ruff over the tree, mypy over src/ (under a minute) =="
	$(VBIN)/ruff check src tests examples asv_benchmarks docs
	PYTHON=$(VPY) bash scripts/typecheck.sh

# The kernels' pure-Python fallbacks (NUMBA_DISABLE_JIT=1) against the same tests, with line coverage
test-purepython: install-test
	@echo; echo "== [6/6] the kernels as plain Python (NUMBA_DISABLE_JIT=1) with coverage (about 2 min) =="
	NUMBA_DISABLE_JIT=1 HYPOTHESIS_PROFILE=dev $(VPY) -m coverage run --source=src/etaretrieval -m pytest -q \
		-p no:cacheprovider $(PUREPYTHON_TESTS)
	$(VPY) -m coverage report --include='src/etaretrieval/cpu/*,src/etaretrieval/_bits.py' --skip-empty

test: lint test-cpu test-cudasim docs asv-smoke study-smoke test-purepython

# The side-by-side benchmark table (paper and long configurations)
bench: install-test
	$(VPY) -m etaretrieval.bench

# On a machine with a CUDA GPU: gpu-marked tests + the GPU benchmark, logs in gpu_check_out/
gpu-check:
	bash scripts/gpu_check.sh
