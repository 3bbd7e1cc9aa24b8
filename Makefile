# Setup, demo and checks. `make demo` and `make test` do all setup themselves (as root on a
# fresh Debian 12): Debian packages through `apt`, the Python venv through `venv`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed

# Debian packages the tests and the demo need; later work appends to this one list.
APT_PACKAGES := erofs-utils debootstrap zstd tar attr umoci

# Lint what exists: a fresh clone has no empty folders.
LINT_PATHS := $(wildcard src tests bench)

.PHONY: venv apt demo lint test

venv: $(VENV_STAMP)

# Re-installs whenever pyproject.toml changes.
$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Installs only what is missing (not fully installed per dpkg), so it costs nothing once done.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		[ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		[ "$$(id -u)" = 0 ] || { echo "make apt: run as root to install them" >&2; exit 1; }; \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

demo: venv
	bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

# pytest's exit code 5 (no tests collected) fails this target like any other failure.
test: apt lint
	$(BIN)/python -m pytest
