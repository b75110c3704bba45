# slimtorch developer entry points. Every target installs what it needs into ./.venv first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
BSTAMP  := .venv/.installed-bench
THREADS ?= 2

.PHONY: install install-bench demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q torch==2.13.0 -e ".[test,hf]"
	touch $(STAMP)

install: $(STAMP)

$(BSTAMP): $(STAMP)
	$(PY) -m pip install -q torch==2.13.0 -e ".[test,hf,bench]" || $(PY) -m pip install -q torch==2.13.0 torch-pruning
	touch $(BSTAMP)

install-bench: $(BSTAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) .venv/bin/slimtorch demo

test: $(STAMP)
	.venv/bin/lint-imports
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest tests

bench: $(BSTAMP)
	@for b in bench/*.py; do echo "== $$b"; OMP_NUM_THREADS=$(THREADS) $(PY) $$b || exit 1; done

lint: $(STAMP)
	.venv/bin/ruff check src tests bench

clean:
	rm -rf .venv build dist src/*.egg-info .pytest_cache
