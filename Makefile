# make train : create .venv on first use, install mrl with the tested versions, train the default
# make test  : the same set-up, then the fast test suite (README and CI spell it out:
#              make install && .venv/bin/python -m pytest)
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

# tests/conftest.py keeps W&B offline and the model hubs unreached.
test: install
	$(PY) -m pytest $(ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(ARGS)

bench: install
	$(PY) benchmarks/head_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) logs
