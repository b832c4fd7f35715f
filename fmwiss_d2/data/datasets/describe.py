"""A task at a glance (what ``tools/describe_task.py`` prints and exports)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog

from .tasks import export_split, resolve_task


def describe_task(name: str) -> str:
    """A table of a task: per step its new classes, training pixels per class, images per setting and
    evaluation images (read from the masks of the first setting's training images)."""
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


def export_task_splits(name: str, folder: str) -> list[tuple[str, int]]:
    """Writes every step dataset's image list to ``folder/<dataset>.txt``; returns (path, images) pairs."""
    task = resolve_task(name)
    written = []
    for setting in task.settings:
        for k, step in enumerate(task.steps):
            for split in ["train"] + [s for s, _ in step.val]:
                dataset = task.dataset_name(setting, k, split)
                path = os.path.join(folder, dataset + ".txt")
                written.append((path, export_split(task, setting, k, split, path)))
    return written
