#!/usr/bin/env python
"""Runs PADing's stages (stage 1 on seen classes -> generator -> classifier) for one or more variants, then compares
them on seen / unseen classes and their harmonic mean.

    python tools/run_zero_shot.py --config-file configs/shapes/pading.yaml --variants PADing,GMMN,stage1-only

A variant is the method (PADing) or a ``PROTOCOL.VARIANTS`` entry of the config. Stage 1 runs once, in
``OUTPUT_DIR/stage1``, shared by every variant; each variant's generator and classifier stages go to
``OUTPUT_DIR/<variant>/{generator,classifier}``; finished stages are skipped. The table of ``PROTOCOL.METRICS``
goes to stdout and ``OUTPUT_DIR/summary.{csv,json}``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fmwiss_d2.engine.launch import variants_argument_parser  # noqa: E402
from fmwiss_d2.engine.protocol import run_zero_shot  # noqa: E402
from fmwiss_d2.utils.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    args = variants_argument_parser(__doc__).parse_args()
    run_cli(lambda: run_zero_shot(args, args.variants))
