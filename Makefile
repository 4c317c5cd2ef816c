# One-command entry points. `make demo` runs the pipeline on the synthetic demo
# tickets, `make test` runs the test suite; both build the virtual environment
# from requirements.lock first if it is missing or older than the lock.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlqc-installed
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export HF_HUB_OFFLINE := 1
# Rules call `python`: make it this venv's, as in an activated environment.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv demo test test-fast lint fmt bench clean-results

venv: $(STAMP)
	@# Point the venv at this checkout's src/ (cheap, so redone every time: a cached
	@# venv may have been built from another clone).
	@echo "$(CURDIR)/src" > "$(SITE)/vlqc-src.pth"

$(STAMP): requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $(STAMP)

# The pipeline, then its report (docs/evaluation.md#the-report) from the outputs of the same target.
demo: venv
	$(VENV)/bin/snakemake --cores all
	$(VENV)/bin/snakemake --report results/report.html
	@echo "Report: $(CURDIR)/results/report.html"

# One process: the e2e tests' Snakemake jobs use every core already. Two pytest-xdist workers on
# 2 cores took 28 min and 49 CPU-min against 21 min and 25 CPU-min in one: their torch threads competed.
test: venv
	$(PY) -m pytest

# Unit tests only (no Snakemake runs on the tiny model), on two pytest-xdist workers (tests/conftest.py
# keeps a module on one worker): 2:20 instead of 3:00 on 2 cores.
test-fast: venv
	$(PY) -m pytest -n 2 --dist loadgroup -m "not e2e"

lint: venv
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: venv
	$(VENV)/bin/snakefmt Snakefile rules
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The benchmarks that need nothing built first; the others (bench/train.py, stage_a_cpu.py,
# stage_a_gpu.py, stage_b.py) say in their docstrings what they need.
bench: venv
	$(PY) bench/convert.py
	$(PY) bench/merge.py

clean-results:
	rm -rf results .snakemake
