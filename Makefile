# Two entry points (see README): `make demo` sets everything up and runs the main job on the synthetic
# world; `make test` runs the test suite. Both (re)use $(VENV) (default .venv), which tools/setup_env.sh keeps
# up to date.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo incremental test bench results
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

# MiB vs fine-tuning vs joint training on the synthetic world's 6-4 task (tiny DeepLabV3).
incremental: setup
	$(PY) tools/run_incremental.py --config-file configs/shapes/mib_deeplabv3.yaml --methods MiB,Finetune,Joint

# -rs: the reason of every skipped test is printed (a skip must be visible, never silent).
test: setup
	$(PY) -m pytest -q -rs tests

# Every results table (fmwiss_d2/utils/results.py): seeds 0, 1, 2, finished seeds reused; writes results/*.json.
# Long (hours on 2 cores); one table: $(PY) tools/reproduce.py mask2former_semantic
results: setup
	$(PY) tools/reproduce.py all

bench: setup
	$(PY) tools/bench/shapes_generation.py
