# Every target sets itself up on a fresh machine: a .venv with the package, all extras and the test oracles,
# installed under constraints.txt (the tested versions).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo venv clean plots bench

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

# Greedy text from the model the package ships (gpt2-tiny-kjv) in each installed framework, then a checkpoint
# conversion tour through every format. make demo PROMPT="And God said"
PROMPT ?= In the beginning
demo: $(STAMP)
	$(PY) -m gpt2 demo --prompt "$(PROMPT)"

# The benchmark plots (docs/img/*.png, shown in docs/benchmarks.md) redrawn from benchmarks/results/*.json; a missing
# results file skips its plot with the command that makes it. `make bench` runs every plotted benchmark first
# (benchmarks/run_all.sh: ~45 min on 2 cores; run it on an idle machine), then draws the plots.
plots: $(STAMP)
	$(PY) benchmarks/plot.py

bench: $(STAMP)
	PY=$(PY) benchmarks/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info
