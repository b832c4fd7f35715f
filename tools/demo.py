#!/usr/bin/env python
"""The main job on the built-in synthetic world: generate it (once, cached), register it, summarize it.

Later stages of the project extend this to training and evaluation; today it shows what is registered.
"""
import time

from tabulate import tabulate

import fmwiss_d2  # noqa: F401  (registers datasets and tasks)
from detectron2.data import DatasetCatalog, MetadataCatalog
from fmwiss_d2.data.datasets.tasks import TASKS


def main():
    t0 = time.time()
    rows = []
    for name in ("shapes_sem_seg_train", "shapes_sem_seg_val", "shapes_instance_train", "shapes_instance_val",
                 "shapes_panoptic_train", "shapes_panoptic_val"):
        records = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        n_classes = len(meta.get("stuff_classes") or meta.get("thing_classes"))
        objects = sum(len(r.get("annotations", r.get("segments_info", []))) for r in records)
        rows.append([name, len(records), n_classes, objects or "-", meta.evaluator_type])
    print(f"Synthetic world at {MetadataCatalog.get('shapes_sem_seg_train').world_root} ({time.time() - t0:.1f}s)")
    print(tabulate(rows, ["dataset", "images", "classes", "segments", "evaluator"]))
    print("\nIncremental tasks registered:", ", ".join(sorted(TASKS)))
    from describe_task import describe  # tools/ is on sys.path when run as a script

    print()
    print(describe("shapes_6-4"))


if __name__ == "__main__":
    main()
