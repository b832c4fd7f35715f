#!/usr/bin/env python
"""The main job on the built-in synthetic world (what `make demo` runs):

1. generate the world (once; cached) and print what is registered;
2. train the tiny Mask2Former on ``shapes_sem_seg_train`` and evaluate it on ``shapes_sem_seg_val``
   (``configs/shapes/mask2former_semantic.yaml``; an interrupted run resumes where it stopped);
3. print the metrics table.

    python tools/demo.py [--config-file CFG] [KEY VALUE ...]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from tabulate import tabulate  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from fmwiss_d2.data.datasets.tasks import TASKS  # noqa: E402
from fmwiss_d2.engine.launch import argument_parser, load_config, main as train_main  # noqa: E402
from fmwiss_d2.utils.errors import run_cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "mask2former_semantic.yaml")


def summarize_world():
    t0 = time.time()
    rows = []
    for name in ("shapes_sem_seg_train", "shapes_sem_seg_val", "shapes_instance_train", "shapes_instance_val",
                 "shapes_panoptic_train", "shapes_panoptic_val"):
        records = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        n_classes = len(meta.get("stuff_classes") or meta.get("thing_classes"))
        segments = sum(len(r.get("annotations", r.get("segments_info", []))) for r in records)
        rows.append([name, len(records), n_classes, segments or "-", meta.evaluator_type])
    print(f"Synthetic world at {MetadataCatalog.get('shapes_sem_seg_train').world_root} ({time.time() - t0:.1f}s)")
    print(tabulate(rows, ["dataset", "images", "classes", "segments", "evaluator"]))
    print("Incremental tasks registered:", ", ".join(sorted(TASKS)), "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    a = parser.parse_args(argv)
    summarize_world()
    args = argument_parser().parse_args(["--config-file", a.config_file] + a.opts)
    cfg = load_config(a.config_file, a.opts)
    args.resume = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    t0 = time.time()
    train_main(args)  # logs the metrics table at the end
    print(f"\nTrained and evaluated in {(time.time() - t0) / 60:.1f} min; outputs in {cfg.OUTPUT_DIR}")


if __name__ == "__main__":
    run_cli(main)
