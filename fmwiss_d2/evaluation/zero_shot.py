"""Zero-shot evaluators: detectron2's own evaluators, with the seen / unseen split of their per-class results and
the harmonic mean (generalised zero-shot protocol, ZS3Net; PADing Tables 1-3).

The split comes from the dataset's metadata (``seen_classes`` / ``unseen_classes``: contiguous ids, written by
data/datasets/zero_shot.py). All matching and per-class arithmetic is detectron2's / the official code's:

* ``zero_shot_sem_seg`` -- :class:`SemSegEvaluator`'s per-class IoU -> ``mIoU_seen``, ``mIoU_unseen``, ``hIoU``;
* ``zero_shot_panoptic`` -- :class:`COCOPanopticEvaluator` (panopticapi): its ``PQStat`` averaged over the seen and
  the unseen categories by panopticapi's own ``pq_average`` -> ``PQ/SQ/RQ_seen``, ``..._unseen``, ``HM`` (of PQ);
* ``zero_shot_instance`` -- :class:`COCOEvaluator` (pycocotools): per-class AP at IoU 0.5 and recall at IoU 0.5
  with 100 detections (ZSI's metrics) -> ``AP50_seen``, ``AP50_unseen``, ``HM``, ``recall_seen``,
  ``recall_unseen``, ``recall_HM``, in the ``segm`` results.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator

from . import EVALUATOR_REGISTRY


def harmonic_mean(seen: float, unseen: float) -> float:
    """``2 s u / (s + u)``; 0 when both are 0, NaN when either is NaN. Why the harmonic mean: a model that
    ignores the unseen classes scores 0, however good it is on the seen ones."""
    if seen != seen or unseen != unseen:
        return float("nan")
    return 0.0 if seen + unseen == 0 else 2.0 * seen * unseen / (seen + unseen)


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _split_ids(dataset_name: str):
    meta = MetadataCatalog.get(dataset_name)
    seen, unseen = meta.get("seen_classes"), meta.get("unseen_classes")
    if seen is None or unseen is None:
        from ..utils.errors import UserError

        raise UserError(f"dataset '{dataset_name}' has no seen/unseen classes in its metadata; zero-shot evaluators "
                        "need a zero-shot split's dataset (data/datasets/zero_shot.py), e.g. shapes_zs_val")
    return list(seen), list(unseen)


class _SplitMixin:
    """Reads the dataset's seen / unseen contiguous ids once, when built (a dataset without them fails early)."""

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        self.seen_ids, self.unseen_ids = _split_ids(dataset_name)


class ZeroShotSemSegEvaluator(_SplitMixin, SemSegEvaluator):
    def evaluate(self):
        results = super().evaluate()
        if not results:
            return results
        res = results["sem_seg"]
        iou = lambda ids: _mean([res.get(f"IoU-{self._class_names[i]}", float("nan")) for i in ids])  # noqa: E731
        res["mIoU_seen"], res["mIoU_unseen"] = iou(self.seen_ids), iou(self.unseen_ids)
        res["hIoU"] = harmonic_mean(res["mIoU_seen"], res["mIoU_unseen"])
        return results


class ZeroShotPanopticEvaluator(_SplitMixin, COCOPanopticEvaluator):
    @contextlib.contextmanager
    def _recording_pq_stat(self):
        """Keeps the ``PQStat`` that panopticapi's ``pq_compute`` builds (it returns only its averages)."""
        import panopticapi.evaluation as pq

        original, self._pq_stat = pq.pq_compute_multi_core, None

        def recording(*args, **kwargs):
            self._pq_stat = original(*args, **kwargs)
            return self._pq_stat

        pq.pq_compute_multi_core = recording
        try:
            yield
        finally:
            pq.pq_compute_multi_core = original

    def evaluate(self):
        with self._recording_pq_stat():
            results = super().evaluate()
        if not results:
            return results
        meta = self._metadata
        to_dataset = {c: d for m in ("stuff_dataset_id_to_contiguous_id", "thing_dataset_id_to_contiguous_id")
                      for d, c in (meta.get(m) or {}).items()}
        thing = set((meta.get("thing_dataset_id_to_contiguous_id") or {}).values())
        res = results["panoptic_seg"]
        for name, ids in (("seen", self.seen_ids), ("unseen", self.unseen_ids)):
            categories = {to_dataset[i]: {"isthing": int(i in thing)} for i in ids}
            avg, _ = self._pq_stat.pq_average(categories, isthing=None) if self._pq_n(categories) else (
                {"pq": math.nan, "sq": math.nan, "rq": math.nan}, None)
            for key in ("pq", "sq", "rq"):
                res[f"{key.upper()}_{name}"] = 100 * avg[key]
        res["HM"] = harmonic_mean(res["PQ_seen"], res["PQ_unseen"])
        return results

    def _pq_n(self, categories) -> int:
        """How many of ``categories`` occur in ground truth or predictions (pq_average divides by it)."""
        stat = self._pq_stat.pq_per_cat
        return sum(1 for c in categories if stat[c].tp + stat[c].fp + stat[c].fn > 0)


class ZeroShotInstanceEvaluator(_SplitMixin, COCOEvaluator):
    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is None or iou_type != "segm":
            return results
        precision = coco_eval.eval["precision"]  # (IoU, recall, class, area, max dets)
        recall = coco_eval.eval["recall"]  # (IoU, class, area, max dets)
        ap50, rec50 = [], []
        for k in range(precision.shape[2]):
            p = precision[0, :, k, 0, -1]
            p = p[p > -1]
            ap50.append(100 * float(p.mean()) if p.size else float("nan"))
            r = recall[0, k, 0, -1]
            rec50.append(100 * float(r) if r > -1 else float("nan"))
        for name, ids in (("seen", self.seen_ids), ("unseen", self.unseen_ids)):
            results[f"AP50_{name}"] = _mean([ap50[i] for i in ids])
            results[f"recall_{name}"] = _mean([rec50[i] for i in ids])
        results["HM"] = harmonic_mean(results["AP50_seen"], results["AP50_unseen"])
        results["recall_HM"] = harmonic_mean(results["recall_seen"], results["recall_unseen"])
        return results


@EVALUATOR_REGISTRY.register()
def zero_shot_sem_seg(cfg, dataset_name, output_folder):
    """mIoU of seen and unseen classes and their harmonic mean (hIoU), besides SemSegEvaluator's metrics."""
    return ZeroShotSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)


@EVALUATOR_REGISTRY.register()
def zero_shot_panoptic(cfg, dataset_name, output_folder):
    """PQ / SQ / RQ of seen and unseen classes and the harmonic mean of PQ, besides COCOPanopticEvaluator's."""
    return ZeroShotPanopticEvaluator(dataset_name, output_folder)


@EVALUATOR_REGISTRY.register()
def zero_shot_instance(cfg, dataset_name, output_folder):
    """AP50 and recall@100 (IoU 0.5) of seen and unseen classes and their harmonic means, besides COCO AP."""
    return ZeroShotInstanceEvaluator(dataset_name, tasks=("segm",), distributed=True, output_dir=output_folder,
                                     max_dets_per_image=cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_IMAGE)
