"""Pseudo labels of a whole dataset split from any registered source, cached, and measured against its masks.

What ``tools/generate_pseudo_labels.py`` does, as library functions:

* :func:`pseudo_label_data`: the split's records as the source sees them. With ``INCREMENTAL.TASK``, split
  ``train`` is the step's training dataset and any other split (``val``, ``test``) is that base dataset viewed
  as the step trains (the same image filter, the step's image labels, old and future classes as background:
  :func:`step_training_view`), so its masks measure pseudo labels under the labels they stand in for. Without a
  task: ``DATASETS.TRAIN[0]`` (``train``) or ``DATASETS.TEST[0]``.
* :func:`run_source`: ``source.prepare`` then a :class:`PseudoLabelCache` fill (batched, progress bar, only the
  images not cached yet: an interrupted run resumes where it stopped).
* :func:`measure`: per-class IoU of the hard pseudo labels against the masks (measurement only: no source
  ever reads a mask). A pixel without a pseudo label (``valid`` False) counts as a miss of its true class.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from ..utils.errors import UserError
from ..utils.io import atomic_write_json
from .base import PseudoLabelContext, PseudoLabelSource, build_pseudo_label_source
from .cache import PseudoLabelCache

__all__ = ["load_step_config", "PseudoLabelData", "pseudo_label_data", "build_context", "run_source", "confusion_matrix", "measure",
           "generate_pseudo_labels", "visualize_sources", "format_results"]

IGNORE = 255


@dataclass
class PseudoLabelData:
    """A split's records (with ``image_labels``) and what measuring needs: the model's class names, the
    background id, and ``lut`` mapping mask values to model ids (None: no masks to measure against)."""

    name: str
    records: List[dict]
    class_names: List[str]
    background: Optional[int]
    lut: Optional[np.ndarray]

    @property
    def has_masks(self) -> bool:
        return self.lut is not None and bool(self.records) and "sem_seg_file_name" in self.records[0]

    def mask(self, index: int) -> np.ndarray:
        """Record ``index``'s ground truth in model ids (measurement and pictures only; no source reads it)."""
        from PIL import Image

        return self.lut[np.asarray(Image.open(self.records[index]["sem_seg_file_name"]))]


def load_step_config(config_file: str, opts) -> "CfgNode":  # noqa: F821
    """The tools' config: defaults + file + overrides, the task step resolved as for training (its previous
    step's weights, its datasets), the CPU when no GPU is visible."""
    from ..engine.incremental import configure_step
    from ..engine.launch import load_config
    from ..engine.trainer import default_device_check

    return default_device_check(configure_step(load_config(config_file, opts)))


def pseudo_label_data(cfg, split: str = "train") -> PseudoLabelData:
    """The split's records as a source sees them (module docstring); ``cfg`` has gone through configure_step."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.datasets.tasks import dataset_image_labels, step_training_view
    from ..engine.incremental import run_task

    task, step = run_task(cfg)
    if task is not None:
        setting = cfg.INCREMENTAL.SETTING
        classes = task.seen_classes(step)
        background = None if task.background is None else task.class_order.index(task.background)
        if split == "train":
            name = task.dataset_name(setting, step, "train")
            records = DatasetCatalog.get(name)
            lut = np.asarray(MetadataCatalog.get(name).label_lut, dtype=np.int64)
        else:
            bases = dict(task.steps[step].val)
            if split not in bases:
                raise UserError(f"split {split!r} is not one of task {task.name!r}'s: train, {', '.join(bases)}")
            records, lut = step_training_view(task, setting, step, bases[split])
            name = f"{task.dataset_name(setting, step, split)}-as-train"
        return PseudoLabelData(name, list(records), list(classes), background, np.asarray(lut, dtype=np.int64))
    names = cfg.DATASETS.TRAIN if split == "train" else cfg.DATASETS.TEST
    if not names:
        raise UserError(f"no dataset for split {split!r}: set DATASETS.{'TRAIN' if split == 'train' else 'TEST'}")
    name = names[0]
    meta = MetadataCatalog.get(name)
    records = dataset_image_labels(name, DatasetCatalog.get(name))
    classes = list(meta.get("stuff_classes") or [])
    lut = np.asarray(meta.get("label_lut") or np.arange(256), dtype=np.int64)
    return PseudoLabelData(name, records, classes, 0 if classes[:1] == ["background"] else None, lut)


def build_context(cfg, data: PseudoLabelData) -> PseudoLabelContext:
    """The context of ``data``: its classes and background, and, at a step >= 1 whose previous step's model
    exists, that model (frozen) for the sources built on it."""
    from ..engine.incremental import build_old_model, run_task
    from ..engine.trainer import Trainer

    _, step = run_task(cfg)
    old = None
    if step > 0 and os.path.isfile(cfg.INCREMENTAL.PREVIOUS_WEIGHTS):
        old = build_old_model(cfg, Trainer.build_model).eval().requires_grad_(False)
    return PseudoLabelContext(class_names=data.class_names, background=data.background, old_model=old)


def run_source(source: PseudoLabelSource, data: PseudoLabelData, context: PseudoLabelContext, *,
               cache_root: str | None = None, batch_size: int = 8, device: str = "cpu") -> tuple:
    """Prepares ``source`` on the records and fills its cache; returns ``(cache, timing dict)``."""
    from ..data.datasets.shapes import default_cache_dir

    t0 = time.time()
    source.prepare(data.records, context)
    t1 = time.time()
    cache = PseudoLabelCache(source, data.name, data.records, cache_root or default_cache_dir(),
                             len(data.class_names))
    computed = cache.fill(context, batch_size=batch_size, device=device)
    return cache, {"images": len(data.records), "computed": computed, "prepare_s": round(t1 - t0, 2),
                   "fill_s": round(time.time() - t1, 2), "cache": cache.folder}


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K + 1) counts ``[true, predicted]`` over pixels with ``gt != 255``; column K = no pseudo label."""
    keep = gt != IGNORE
    p = np.where(pred[keep] == IGNORE, num_classes, pred[keep]).astype(np.int64)
    return np.bincount(gt[keep].astype(np.int64) * (num_classes + 1) + p,
                       minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def measure(cache: PseudoLabelCache, data: PseudoLabelData, indices: Optional[List[int]] = None) -> dict:
    """IoU (%) of the cached hard pseudo labels against the masks (mapped by ``data.lut``).

    Classes measured: those in any record's image labels (``mIoU_labelled``) and the background (``mIoU`` =
    their mean with it); ``coverage``: share of measured pixels that have a pseudo label.
    """
    if data.lut is None:
        raise UserError(f"dataset {data.name!r} has no masks to measure pseudo labels against")
    k = len(data.class_names)
    conf = np.zeros((k, k + 1), np.int64)
    for i in tqdm(indices if indices is not None else range(len(data.records)), desc="measuring", disable=None):
        conf += confusion_matrix(cache.load(i).hard()[0].numpy(), data.mask(i), k)
    labelled = sorted({int(c) for r in data.records for c in r.get("image_labels", [])})
    tp = np.diag(conf[:, :k]).astype(float)
    iou = 100 * tp / np.maximum(conf.sum(1) + conf[:, :k].sum(0) - tp, 1)
    per_class = {data.class_names[c]: round(float(iou[c]), 2) for c in labelled}
    out = {"mIoU_labelled": round(float(np.mean([iou[c] for c in labelled])), 2) if labelled else float("nan"),
           "IoU": per_class}
    if data.background is not None:
        out["IoU_background"] = round(float(iou[data.background]), 2)
        out["mIoU"] = round(float(np.mean([iou[c] for c in labelled + [data.background]])), 2)
    out["coverage"] = round(100 * float(1 - conf[:, k].sum() / max(conf.sum(), 1)), 2)
    return out


def generate_pseudo_labels(cfg, source_name: str, split: str = "train", *, batch_size: int = 8,
                           output: str | None = None, cache_root: str | None = None,
                           measure_labels: bool = True, max_images: int = 0) -> dict:
    """``tools/generate_pseudo_labels.py``: runs the registered source ``source_name`` over the split (cached,
    resumable), measures it where masks exist, writes the result JSON (``output``) and returns it.
    ``max_images > 0``: the split's first images only (a quick look; its own cache folder)."""
    data = pseudo_label_data(cfg, split)
    if max_images > 0 and max_images < len(data.records):
        data = PseudoLabelData(f"{data.name}-first{max_images}", data.records[:max_images], data.class_names,
                               data.background, data.lut)
    source = build_pseudo_label_source(cfg, source_name, "--source")
    context = build_context(cfg, data)
    cache, timing = run_source(source, data, context, cache_root=cache_root, batch_size=batch_size,
                               device=cfg.MODEL.DEVICE)
    result = {"source": source_name, "dataset": data.name, "split": split, **timing,
              "settings": source.cache_key()}
    if measure_labels and data.has_masks:
        result["metrics"] = measure(cache, data)
    if output:
        atomic_write_json(output, result, indent=2)
        result["output"] = output
    return result


def visualize_sources(cfg, source_names: List[str], split: str, path: str, *, num_images: int = 8,
                      batch_size: int = 8, cache_root: str | None = None) -> List[str]:
    """``tools/visualize_pseudo_labels.py``: the first ``num_images`` of the split, one column per source's hard
    pseudo labels and the truth; returns the column titles. Each source is prepared on, and fills its cache
    for, the whole split (the same cache :func:`generate_pseudo_labels` fills, so nothing is computed twice,
    and a localizer learns from every record)."""
    from detectron2.data import MetadataCatalog
    from detectron2.data import detection_utils as utils

    from .visualize import label_grid, label_palette, save_png

    data = pseudo_label_data(cfg, split)
    context = build_context(cfg, data)
    idx = list(range(min(num_images, len(data.records))))
    records = [data.records[i] for i in idx]
    columns = []
    for name in source_names:
        source = build_pseudo_label_source(cfg, name, "--sources")
        cache, _ = run_source(source, data, context, cache_root=cache_root, batch_size=batch_size,
                              device=cfg.MODEL.DEVICE)
        columns.append((name, [cache.load(i).hard()[0].numpy() for i in idx]))
    if data.has_masks:
        columns.append(("ground truth", [data.mask(i) for i in idx]))
    colors = MetadataCatalog.get(data.name).get("stuff_colors", []) if data.name in MetadataCatalog.list() else []
    palette = label_palette(len(data.class_names), colors)
    images = [utils.read_image(r["file_name"], format="RGB") for r in records]
    save_png(label_grid(images, columns, palette), path)
    return ["image"] + [t for t, _ in columns]


def format_results(result: dict) -> str:
    """One table: the source's per-class IoU, the means and the coverage."""
    m = result.get("metrics")
    head = (f"{result['source']} on {result['dataset']}: {result['images']} images, {result['computed']} computed "
            f"({result['fill_s']} s; prepare {result['prepare_s']} s)")
    if not m:
        return head + "\n(no masks: nothing measured)"
    rows = [[name, v] for name, v in m["IoU"].items()]
    if "IoU_background" in m:
        rows.append(["background", m["IoU_background"]])
    rows += [["mIoU (labelled classes)", m["mIoU_labelled"]]]
    if "mIoU" in m:
        rows.append(["mIoU (+ background)", m["mIoU"]])
    rows.append(["coverage %", m["coverage"]])
    return head + "\n" + tabulate(rows, headers=["class", "IoU %"], tablefmt="github")
