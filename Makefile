# Two commands on a fresh machine (Python 3.11 + pip, nothing else):
#   make demo   - virtualenv, install, run the quickstart on synthetic data
#   make test   - virtualenv with test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip -q --disable-pip-version-check
# The CPU build of torch (on local disk here); the project itself asks for torch>=2.4.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test install install-test test-cpu test-cudasim

$(VPY):
	$(PYTHON) -m venv $(VENV)

install: $(VPY)
	$(PIP) install -e .

install-test: $(VPY)
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[test,torch,cuda]"

demo: install
	$(VPY) examples/quickstart.py

test-cpu: install-test
	$(VPY) -m pytest

test: test-cpu
