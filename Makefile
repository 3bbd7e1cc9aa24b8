# Setup, demo and checks. `make demo` and `make test` do all setup themselves (as root on a
# fresh Debian 12): Debian packages through `apt`, the Python venv through `venv`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed

# containerd gRPC stubs: generated from our .proto files by grpcio-tools (dev extra), not
# committed; rafs.content.containerd imports them from there.
PROTO_DIR := src/rafs/content/protos
GEN_DIR := src/rafs/content/_gen
PROTOS := $(shell find $(PROTO_DIR) -name '*.proto')
GEN_STAMP := $(GEN_DIR)/.generated

# Debian packages the tests and the demo need; later work appends to this one list.
APT_PACKAGES := erofs-utils debootstrap zstd tar attr umoci containerd docker-registry skopeo libfuse3-dev pkg-config fuse3

# Lint what exists: a fresh clone has no empty folders.
LINT_PATHS := $(wildcard src tests bench)

.PHONY: venv apt demo lint judges test fuzz

# The editable install leaves the sources uncompiled: compile them as a wheel install would,
# so a command does not compile every module it imports each time it starts (it would where
# PYTHONDONTWRITEBYTECODE is set, as on the machines we build on). Up-to-date files are skipped.
venv: $(VENV_STAMP) $(GEN_STAMP)
	$(BIN)/python -m compileall -q src

# Re-installs whenever pyproject.toml changes; regenerates stubs when a .proto changes.
$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(GEN_STAMP): $(VENV_STAMP) $(PROTOS)
	rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR)
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(GEN_DIR) \
		--pyi_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) $(PROTOS)
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

demo: apt venv
	bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

# The real Nydus tools the tests judge rafs by (nydus-image, nydusd, our judge crate,
# containerd-nydus-grpc, ...), built once from crates.io and the Go module proxy into
# $RAFS_JUDGES_DIR (default ~/.cache/rafs-judges); a second run costs nothing.
judges:
	bash judges/build

# pytest's exit code 5 (no tests collected) fails this target like any other failure.
test: apt lint judges
	$(BIN)/python -m pytest

# The long fuzz pass: FUZZ_RUNS inputs per target (atheris, coverage-guided), the corpus kept
# in .fuzz/ between runs; a crash stops its target and leaves its input in fuzz-artifacts/.
FUZZ_TARGETS := v6 v5 layer blobmeta tar oci auth reference
FUZZ_RUNS ?= 200000
fuzz: venv
	@for target in $(FUZZ_TARGETS); do \
		$(BIN)/python -m tests.fuzz.run $$target --runs $(FUZZ_RUNS) \
			--corpus .fuzz/$$target --artifacts fuzz-artifacts/$$target || exit 1; \
	done
