#!/usr/bin/env python
"""Runs every step of an incremental task for one or more methods, then compares them.

    python tools/run_incremental.py --config-file configs/shapes/mib_deeplabv3.yaml --methods MiB,Finetune,Joint
    python tools/run_incremental.py --config-file CFG --resume --num-gpus 2 SOLVER.IMS_PER_BATCH 16

Each step is an ordinary ``tools/train_net.py`` run, written to ``OUTPUT_DIR/<task>_<setting>/<method>/step<k>``;
a finished step (its stamp ``stage.json``, final model and results exist, run with the same options) is skipped.
Step 0 learns the base classes the same way for every method, so it is trained once, in
``OUTPUT_DIR/<task>_<setting>/step0``, and shared. "Joint" (a task transform) trains every class at once, the upper
bound, evaluated like the last step. The comparison goes to ``OUTPUT_DIR/<task>_<setting>/summary.{csv,json,png}``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fmwiss_d2.engine.launch import argument_parser  # noqa: E402
from fmwiss_d2.engine.protocol import run_incremental  # noqa: E402
from fmwiss_d2.utils.errors import run_cli  # noqa: E402


def parse_args(argv=None):
    parser = argument_parser(__doc__)
    parser.add_argument("--methods", default="",
                        help="comma-separated methods, task transforms or PROTOCOL.VARIANTS names, e.g. MiB,Finetune,Joint; "
                             "default: METHOD.NAME")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    run_cli(lambda: run_incremental(args, [m for m in args.methods.split(",") if m]))
