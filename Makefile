# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# Debian packages: what the optimizer needs at run time, then what the tests and benchmarks drive.
RUNTIME_DEBS := libarchive13
TEST_DEBS := skopeo umoci docker-registry apache2-utils binutils-multiarch gcc libc6-dev optipng \
	libjpeg-turbo-progs jpegoptim busybox-static debootstrap zstd xz-utils lz4 brotli openssl binutils patchelf gzip nginx

.PHONY: demo test lint typecheck unit install runtime-deps test-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

install: runtime-deps $(VENV)/.installed

runtime-deps:
	@bash scripts/ensure-debs.sh $(RUNTIME_DEBS)

test-deps:
	@bash scripts/ensure-debs.sh $(TEST_DEBS)
	@bash scripts/ensure-upx.sh

demo: install
	$(PY) testdata/make_demo_image.py testdata/demo/demo-image.tar
	$(VENV)/bin/optimize testdata/demo/demo-image.tar testdata/demo/demo-optimized.tar --report testdata/demo/report.json

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check optimizer passes tests bench testdata
	$(VENV)/bin/ruff format --check optimizer passes tests bench testdata

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# pytest exits 5 when it collected no test: that is a failure here, like any other non-zero code.
unit: install test-deps
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: install test-deps lint typecheck unit

clean:
	rm -rf $(VENV) testdata/demo build *.egg-info
