# Two commands do all the set-up on a fresh machine:
#   make serve   - create .venv, install memprog, start the service on the simulated backend
#   make test    - create .venv, install memprog with its test and training extras, run lint + tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test serve lint benchmark clean browser containers postgresql

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,train,postgresql]'
	touch $(STAMP)

test: lint browser containers postgresql
	$(BIN)/pytest

# ruff; the layers (import-linter contracts in pyproject.toml); types (mypy, [tool.mypy])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/memprog serve

benchmark: $(STAMP)
	$(BIN)/memprog benchmark sim

# The dashboard's browser test (tests/test_dashboard_browser.py) drives Debian's chromium through
# Playwright (no browser download): install it when it is missing (root, or sudo).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "installing Debian's chromium for the dashboard's browser test"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	fi

clean:
	rm -rf $(VENV)

# The container test (tests/test_container.py) builds and runs the image with podman as root
# (runc; mmdebstrap makes a base from Debian packages when no registry answers): install them
# when they are missing (root, or sudo).
containers:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
			|| ! command -v mmdebstrap >/dev/null; then \
		echo "installing podman, runc and mmdebstrap for the container test"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q podman runc mmdebstrap; \
	fi

# The PostgreSQL store's tests (tests/pg.py) start a throwaway server from Debian's postgresql
# package: install it when it is missing (root, or sudo). Its own cluster is not started.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		echo "installing Debian's postgresql for the PostgreSQL store's tests"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; \
	fi
