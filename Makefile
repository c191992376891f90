# Two targets do all the set-up on a fresh machine:
#   make demo  -> create .venv, install pinned deps, run the audit of the built-in demo suite (offline)
#   make test  -> same bootstrap, run the tests
# torch==2.13.0 is installed first (a local CPU wheel here); everything else is
# installed from requirements/lock.txt with requirements/constraints.txt pinning torch.
SHELL := bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# pip warns about every extra-index folder lacking a package; keep the log readable
QUIET  := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
STAMP  := $(VENV)/.bootstrapped
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export DO_NOT_TRACK ?= 1

DEMO_DB  ?= out/demo.duckdb
DEMO_OUT ?= out/demo

.PHONY: demo test venv clean bench

venv: $(STAMP)

$(STAMP): requirements/lock.txt requirements/constraints.txt requirements/assets.txt requirements/assets-hashed.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0" $(QUIET)
	$(PIP) install -q -r requirements/lock.txt -c requirements/constraints.txt $(QUIET)
	$(PIP) install -q --no-deps -r requirements/assets.txt $(QUIET)
	$(PIP) install -q --no-deps --require-hashes -r requirements/assets-hashed.txt $(QUIET)
	$(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET)
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/qscope-eval audit demo --db $(DEMO_DB) --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/metrics_bench.py
	$(PY) bench/encode_bench.py

clean:
	rm -rf $(VENV) out .prefect

# the documentation site (mkdocs + material, offline; CLI pages generated from --help): open site/index.html
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site
