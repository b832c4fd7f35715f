#!/usr/bin/env python
"""Trains and evaluates several variants of one config (methods, ablations, baselines), then compares them.

    python tools/run_variants.py --config-file configs/shapes/deeplabv3_semantic.yaml --variants Supervised

A variant is a registered method or a ``PROTOCOL.VARIANTS`` entry of the config ("NAME: KEY VALUE ..."). Each runs
as ``tools/train_net.py`` into ``OUTPUT_DIR/<variant>`` and is skipped once finished (same options, outputs
present); the table of ``PROTOCOL.METRICS`` goes to stdout and ``OUTPUT_DIR/summary.{csv,json}``. Incremental
tasks: ``tools/run_incremental.py``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fmwiss_d2.engine.launch import variants_argument_parser  # noqa: E402
from fmwiss_d2.engine.protocol import run_variants  # noqa: E402
from fmwiss_d2.utils.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    args = variants_argument_parser(__doc__).parse_args()
    run_cli(lambda: run_variants(args, args.variants))
