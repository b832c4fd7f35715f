"""Evaluation of incremental steps: old / new / all / background mIoU, per-class IoU, forgetting, plots.

MiB reports, after the last step, the mIoU of the base classes ("old", 1..base, background excluded), of
every class added after step 0 ("new"), and of all seen classes including the background ("all"). The
evaluator below subclasses detectron2's ``SemSegEvaluator``, so the confusion matrix, the IoU definition
(classes without ground truth pixels are left out of the mean) and distributed gathering are detectron2's;
it only reads the ground truth through the step's ``label_lut`` (unseen classes -> 255) and adds the
grouped means. A task without a background class (``background: None``) has its base classes from id 0 and
no ``IoU_background``.
"""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array

from ..utils.io import atomic_open, atomic_write_json
from . import EVALUATOR_REGISTRY

GROUPS = ("old", "new", "all")


def class_groups(meta) -> dict[str, list[int]]:
    """Model ids per reporting group for a task step's metadata (see module docstring); "background" is
    present only when the task has a background class (always id 0)."""
    from fmwiss_d2.data.datasets.tasks import get_task

    n_seen = len(meta.stuff_classes)
    if meta.get("task") is None:  # an ordinary dataset: everything is "all"
        return {"old": list(range(1, n_seen)), "new": [], "all": list(range(n_seen)), "background": [0]}
    task = get_task(meta.task)
    n_base = len(task.steps[0].classes)
    groups = {"old": list(range(task.first_class_id, n_base)), "new": list(range(n_base, n_seen)),
              "all": list(range(n_seen))}
    if task.background is not None:
        groups["background"] = [0]
    return groups


def grouped_miou(iou: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    """Mean IoU (in %) per group, over the group's classes whose IoU is defined (not NaN); the "background"
    group is reported as ``IoU_background``."""
    out = {}
    for g, ids in groups.items():
        vals = iou[ids] if ids else np.array([])
        vals = vals[~np.isnan(vals)]
        out["IoU_background" if g == "background" else f"mIoU_{g}"] = \
            float(100 * vals.mean()) if vals.size else float("nan")
    return out


class IncrementalSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` for a task's step dataset (``{task}_{setting}_step{k}_val``), or any dataset whose
    metadata carries ``label_lut``; adds ``mIoU_old``, ``mIoU_new``, ``mIoU_all`` and (tasks with a background)
    ``IoU_background``."""

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str | None = None):
        meta = MetadataCatalog.get(dataset_name)
        lut = np.asarray(meta.label_lut, dtype=np.int64) if meta.get("label_lut") is not None else None

        def load(filename, dtype=int):
            gt = load_image_into_numpy_array(filename, dtype=np.int64)
            return (lut[gt] if lut is not None else gt).astype(dtype)

        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, sem_seg_loading_fn=load)
        self._groups = class_groups(meta)
        self._meta = meta

    def per_class_iou(self) -> np.ndarray:
        """IoU per class from the accumulated confusion matrix, NaN where no ground truth (as detectron2)."""
        cm = self._conf_matrix[:-1, :-1].astype(float)
        tp = cm.diagonal()
        pos_gt, pos_pred = cm.sum(0), cm.sum(1)
        union = pos_gt + pos_pred - tp
        iou = np.full(len(tp), np.nan)
        valid = (pos_gt > 0) & (union > 0)
        iou[valid] = tp[valid] / union[valid]
        return iou

    def evaluate(self):
        results = super().evaluate()
        if results is None:  # not the main process
            return None
        res = results["sem_seg"]
        res.update(grouped_miou(self.per_class_iou(), self._groups))
        if self._output_dir:
            record = {"dataset": self._dataset_name, "task": self._meta.get("task"), "step": self._meta.get("step"),
                      "classes": list(self._meta.stuff_classes), "metrics": dict(res)}
            atomic_write_json(results_path(self._output_dir, self._dataset_name), record, indent=1, default=lambda x: None)
        return OrderedDict({"sem_seg": res})


@EVALUATOR_REGISTRY.register()
def incremental_sem_seg(cfg, dataset_name, output_folder):
    """SemSegEvaluator through the step's label lookup, plus old/new/all/background mIoU."""
    return IncrementalSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)


# ---------------------------------------------------------------------------------- across steps
def results_path(output_dir: str, dataset_name: str) -> str:
    """Where the evaluator of ``dataset_name`` writes its record (read back by tools/run_incremental.py)."""
    return os.path.join(output_dir, f"incremental_results_{dataset_name}.json")


def forgetting(per_step_iou: list[dict[str, float]]) -> dict[str, float]:
    """Per class: best IoU at any earlier step minus IoU at the last step (classes seen before the last)."""
    if len(per_step_iou) < 2:
        return {}
    last = per_step_iou[-1]
    out = {}
    for c, v in last.items():
        earlier = [s[c] for s in per_step_iou[:-1] if c in s and not _isnan(s[c])]
        if earlier and not _isnan(v):
            out[c] = max(earlier) - v
    return out


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def write_summary(rows: list[dict], csv_path: str) -> None:
    """rows: dicts with method, step, (evaluation) split, mIoU_old, mIoU_new, mIoU_all, IoU_background."""
    keys = ["method", "step", "split", "mIoU_old", "mIoU_new", "mIoU_all", "IoU_background"]
    with atomic_open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(r[k], 2) if isinstance(r.get(k), float) else r.get(k)) for k in keys})


def plot_steps(rows: list[dict], png_path: str, title: str = "") -> None:
    """One panel per group (old / new / all), one line per method, mIoU against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({r["step"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, g in zip(axes, GROUPS):
        for m in methods:
            pts = [(r["step"], r[f"mIoU_{g}"]) for r in rows if r["method"] == m and not _isnan(r.get(f"mIoU_{g}"))]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", label=m)
        ax.set_title(f"{g} classes")
        ax.set_xlabel("step")
        ax.set_xticks(steps)
        ax.set_xlim(min(steps) - 0.3, max(steps) + 0.3)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[-1].legend(loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
