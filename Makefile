# Two commands do all the set-up on a fresh machine:
#   make serve   - create .venv, install memprog, start the service on the simulated backend
#   make test    - create .venv, install memprog with its test and training extras, run lint + tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test serve lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,train]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

serve: $(STAMP)
	$(BIN)/memprog serve

bench: $(STAMP)
	$(BIN)/memprog bench sim

clean:
	rm -rf $(VENV)
