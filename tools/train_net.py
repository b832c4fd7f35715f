#!/usr/bin/env python
"""Train and evaluate any fmwiss_d2 model and method on any registered dataset (with or without a task).

    python tools/train_net.py --config-file configs/shapes/mask2former_semantic.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume                 # continue from the last checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 2             # 2 processes (NCCL on GPUs, Gloo on CPU)

    # one step of an incremental task (tools/run_incremental.py runs every step):
    python tools/train_net.py --config-file CFG INCREMENTAL.TASK shapes_6-4 INCREMENTAL.STEP 1 METHOD.NAME MiB

Options (``--resume``, ``--num-gpus`` ...) come before the config overrides (``KEY VALUE`` pairs). The method,
mapper, evaluators, optimizer and schedule all come from the config (see fmwiss_d2/engine/trainer.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fmwiss_d2.engine.launch import argument_parser, launch_main  # noqa: E402

if __name__ == "__main__":
    launch_main(argument_parser(__doc__).parse_args())
