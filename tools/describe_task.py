#!/usr/bin/env python
"""Prints what an incremental task looks like: per step, its classes, image counts and pixels per class.

    python tools/describe_task.py shapes_6-4
    python tools/describe_task.py configs/tasks/shapes_3-7.yaml --export lists/   # also writes image lists
"""
import os
import argparse
import sys

import numpy as np
from PIL import Image
from tabulate import tabulate

import fmwiss_d2  # noqa: F401  (registers datasets and tasks)
from detectron2.data import DatasetCatalog, MetadataCatalog
from fmwiss_d2.data.datasets.tasks import export_split, resolve_task
from fmwiss_d2.utils.errors import run_cli


def describe(name: str) -> str:
    task = resolve_task(name)
    name = task.name
    rows = []
    for k, step in enumerate(task.steps):
        counts = {}
        for setting in task.settings:
            counts[setting] = DatasetCatalog.get(task.dataset_name(setting, k, "train"))
        val = len(DatasetCatalog.get(task.dataset_name(task.settings[0], k, "val")))
        first = counts[task.settings[0]]
        lut = np.array(MetadataCatalog.get(task.dataset_name(task.settings[0], k, "train")).label_lut, np.uint8)
        pixels = np.zeros(256, np.int64)
        for r in first:
            pixels += np.bincount(lut[np.asarray(Image.open(r["sem_seg_file_name"]))].ravel(), minlength=256)
        order = task.class_order
        new = [c for c in step.classes if c != task.background]
        per_class = ", ".join(f"{c}:{pixels[order.index(c)]}" for c in new)
        row = [k, " ".join(new), per_class]
        row += [len(counts[s]) for s in task.settings]
        if "disjoint" in counts and "overlap" in counts:
            row.append(len(counts["overlap"]) - len(counts["disjoint"]))
        row.append(val)
        rows.append(row)
    headers = ["step", "new classes", f"train pixels ({task.settings[0]})"] + [f"train imgs {s}" for s in task.settings]
    if set(task.settings) == {"overlap", "disjoint"}:
        headers.append("dropped by disjoint")
    headers.append("val imgs")
    classes = f"{len(task.class_order)} classes" + ("" if task.background is not None else " (no background class)")
    return f"task {name}: {task.num_steps} steps, {classes}, settings {', '.join(task.settings)}\n" + tabulate(rows, headers)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="a registered task name or a YAML task file")
    parser.add_argument("--export", metavar="DIR", help="write each step dataset's image list to DIR/<name>.txt")
    args = parser.parse_args(argv)
    try:
        print(describe(args.task))
    except (KeyError, FileNotFoundError) as e:
        sys.exit(str(e.args[0]) if e.args else str(e))
    if args.export:
        task = resolve_task(args.task)
        for setting in task.settings:
            for k, step in enumerate(task.steps):
                for split in ["train"] + [s for s, _ in step.val]:
                    name = task.dataset_name(setting, k, split)
                    n = export_split(task, setting, k, split, os.path.join(args.export, name + ".txt"))
                    print(f"wrote {n:6d} images to {os.path.join(args.export, name + '.txt')}")


if __name__ == "__main__":
    run_cli(main)
