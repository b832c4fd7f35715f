#!/usr/bin/env python
"""Prints what an incremental task looks like: per step, its classes, image counts and pixels per class.

    python tools/describe_task.py shapes_6-4
    python tools/describe_task.py configs/tasks/shapes_3-7.yaml --export lists/   # also writes image lists
    python tools/describe_task.py shapes_6-4 SHAPES.NUM_TRAIN 500                  # another synthetic world
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from detectron2.config import get_cfg  # noqa: E402
from fmwiss_d2 import add_fmwiss_config  # noqa: E402
from fmwiss_d2.data.datasets.describe import describe_task, export_task_splits  # noqa: E402
from fmwiss_d2.data.datasets.shapes import register_shapes_from_cfg  # noqa: E402
from fmwiss_d2.utils.errors import run_cli  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="a registered task name or a YAML task file")
    parser.add_argument("--export", metavar="DIR", help="write each step dataset's image list to DIR/<name>.txt")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (SHAPES.* keys), KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.opts:
        cfg = get_cfg()
        add_fmwiss_config(cfg)
        cfg.merge_from_list(args.opts)
        register_shapes_from_cfg(cfg)
    print(describe_task(args.task))
    for path, n in export_task_splits(args.task, args.export) if args.export else []:
        print(f"wrote {n:6d} images to {path}")


if __name__ == "__main__":
    run_cli(main)
