# make train : create .venv on first use, install mrl with the tested versions, train the default
# make test  : the same set-up, then the fast test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install train test test-slow bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

train: install
	$(PY) scripts/train.py $(ARGS)

# Tests never touch the network: W&B offline, no hub downloads.
TEST_ENV := WANDB_MODE=offline HF_HUB_OFFLINE=1

test: install
	$(TEST_ENV) $(PY) -m pytest -q $(ARGS)

test-slow: install
	$(TEST_ENV) $(PY) -m pytest -q -m slow $(ARGS)

bench: install
	$(PY) benchmarks/head_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) logs
