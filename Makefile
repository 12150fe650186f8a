# fastconv developer entry points. Each target creates .venv and installs the project into it
# when needed, so `make demo` and `make test` work on a fresh clone with Python >= 3.10 and a
# C compiler.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastconv-installed

.PHONY: install demo test lint bench bench-full benchmarks docs annotate check-wheel asan clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall (recompiling the Cython kernels) whenever the build inputs change.
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard kernels/*.pyx kernels/*.pxd)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install fastconv (editable) with test tools

demo: $(STAMP)  ## the main job: classify sample photos with the bundled catnet, compare backends
	$(BIN)/fastconv demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)  ## lint + the whole test suite (conformance, safety, model, data, CLI)
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(STAMP)  ## quick benchmark report (< 1 minute)
	$(BIN)/fastconv bench

bench-full: $(STAMP)
	$(BIN)/fastconv bench --full --compare torch

benchmarks: $(STAMP)  ## pytest-benchmark suites, backends side by side
	$(BIN)/pytest benchmarks/ --benchmark-only

docs: $(STAMP)  ## regenerate the measured numbers and charts of docs/ladder.md
	$(BIN)/fastconv bench --full --compare torch --json docs/bench.json --plot docs/img --docs docs/ladder.md

annotate: $(STAMP)  ## cython -a: HTML annotation of every .pyx in build/annotate/ (yellow = Python API calls)
	@mkdir -p build/annotate
	for f in kernels/*.pyx; do $(BIN)/cython -3 -a -I kernels "$$f" -o build/annotate/$$(basename "$$f" .pyx).c; done
	@echo "open build/annotate/*.html"

check-wheel: $(STAMP)  ## build a wheel; check nothing named `kernels` lands at the top level, and it imports
	rm -rf build/wheel build/wheel-site
	$(BIN)/python -m pip wheel -q --no-deps -w build/wheel .
	$(BIN)/python .ci/check_wheel.py build/wheel

asan:  ## the Cython kernels built with AddressSanitizer (build/asan/), safety + conformance tests under it (gcc)
	PYTHON=$(PYTHON) .ci/asan

clean:
	rm -rf build dist *.egg-info kernels/*.c kernels/*.so kernels/*.html
