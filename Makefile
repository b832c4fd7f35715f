# Two entry points (see README): `make demo` sets everything up and runs the main job on the synthetic
# world; `make test` runs the test suite. Both (re)use .venv, which tools/setup_env.sh keeps up to date.
PY := .venv/bin/python

.PHONY: setup demo incremental test bench
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

# MiB vs fine-tuning vs joint training on the synthetic world's 6-4 task (tiny DeepLabV3).
incremental: setup
	$(PY) tools/run_incremental.py --config-file configs/shapes/mib_deeplabv3.yaml --methods MiB,Finetune,Joint

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) tools/bench/shapes_generation.py
