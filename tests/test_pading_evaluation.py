"""Zero-shot evaluators (evaluation/zero_shot.py): seen / unseen / harmonic mean over detectron2's evaluators, checked
against hand-made numbers and an independent confusion-matrix computation."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fmwiss_d2.data.datasets.zero_shot import register_zero_shot_split
from fmwiss_d2.evaluation.zero_shot import (
    ZeroShotPanopticEvaluator, ZeroShotSemSegEvaluator, harmonic_mean,
)


def test_harmonic_mean_hand_made():
    assert harmonic_mean(40.6, 26.4) == pytest.approx(2 * 40.6 * 26.4 / 67.0)  # PADing's semantic hIoU: 32.0
    assert round(harmonic_mean(40.6, 26.4), 1) == 32.0
    assert round(harmonic_mean(37.7, 14.4), 1) == 20.8  # PADing's panoptic HM
    assert harmonic_mean(50.0, 50.0) == 50.0
    assert harmonic_mean(80.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 3.0))


@pytest.fixture(scope="module")
def split(tiny_world):
    return register_zero_shot_split("tiny_zs_eval", {"train": "tiny_shapes_panoptic_train",
                                                     "val": "tiny_shapes_panoptic_val",
                                                     "unseen": ["star", "hexagon", "heart", "sand"]})


def test_semantic_seen_unseen_against_a_confusion_matrix(split):
    from detectron2.data import DatasetCatalog

    name = "tiny_zs_eval_sem_seg_val"
    records = DatasetCatalog.get(name)
    k = len(split.classes)
    ev = ZeroShotSemSegEvaluator(name, distributed=False)
    ev.reset()
    inter, union = np.zeros(k), np.zeros(k)
    for r in records:
        gt = np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64)
        pred = np.where(np.isin(gt, split.unseen_ids), 0, gt)  # every unseen pixel called "disc"
        pred[gt == 255] = 0
        scores = torch.nn.functional.one_hot(torch.as_tensor(pred), k).permute(2, 0, 1).float()
        ev.process([{"file_name": r["file_name"]}], [{"sem_seg": scores}])
        valid = gt != 255
        for c in range(k):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    res = ev.evaluate()["sem_seg"]
    present = union > 0
    iou = np.where(present, 100 * inter / np.maximum(union, 1), np.nan)
    seen = np.nanmean(iou[split.seen_ids])
    assert res["mIoU_seen"] == pytest.approx(seen, rel=1e-6)
    assert res["mIoU_unseen"] == pytest.approx(0.0)
    assert res["hIoU"] == 0.0
    assert 0 < seen < 100


def _panoptic_predictions(records, drop_classes=()):
    from fmwiss_d2.data.datasets.coco import rgb_to_panoptic_id

    for r in records:
        pan = rgb_to_panoptic_id(np.asarray(Image.open(r["pan_seg_file_name"]).convert("RGB")))
        out = np.zeros_like(pan, dtype=np.int32)
        segments = []
        for s in r["segments_info"]:
            if s["category_id"] in drop_classes:
                continue
            out[pan == s["id"]] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": s["category_id"], "isthing": s["isthing"]})
        yield r, (torch.as_tensor(out), segments)


@pytest.mark.parametrize("drop_unseen", [False, True])
def test_panoptic_seen_unseen(split, tmp_path, drop_unseen):
    from detectron2.data import DatasetCatalog

    name = "tiny_zs_eval_val"
    records = DatasetCatalog.get(name)
    ev = ZeroShotPanopticEvaluator(name, str(tmp_path))
    ev.reset()
    for r, pred in _panoptic_predictions(records, split.unseen_ids if drop_unseen else ()):
        ev.process([{"file_name": r["file_name"], "image_id": r["image_id"]}], [{"panoptic_seg": pred}])
    res = ev.evaluate()["panoptic_seg"]
    assert res["PQ_seen"] == pytest.approx(100.0)
    if drop_unseen:  # every unseen segment missed: its classes have only false negatives
        assert res["PQ_unseen"] == pytest.approx(0.0) and res["HM"] == 0.0
        assert res["PQ"] < 100
    else:
        assert res["PQ_unseen"] == pytest.approx(100.0) and res["HM"] == pytest.approx(100.0)


@pytest.mark.parametrize("drop_unseen", [False, True])
def test_instance_seen_unseen(tiny_world, tmp_path, drop_unseen):
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import annotations_to_instances
    from detectron2.structures import Boxes, Instances

    from fmwiss_d2.evaluation.zero_shot import ZeroShotInstanceEvaluator

    split = register_zero_shot_split("tiny_zs_inst_eval", {"train": "tiny_shapes_instance_train",
                                                           "val": "tiny_shapes_instance_val",
                                                           "unseen": ["star", "heart"]})
    name = "tiny_zs_inst_eval_val"
    ev = ZeroShotInstanceEvaluator(name, tasks=("segm",), distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for r in DatasetCatalog.get(name):
        anns = [a for a in r["annotations"] if not (drop_unseen and a["category_id"] in split.unseen_ids)]
        gt = annotations_to_instances(anns, (r["height"], r["width"]), mask_format="bitmask")
        pred = Instances((r["height"], r["width"]), pred_masks=gt.gt_masks.tensor, pred_classes=gt.gt_classes,
                         scores=torch.ones(len(gt)), pred_boxes=Boxes(gt.gt_boxes.tensor))
        ev.process([{"image_id": r["image_id"], "file_name": r["file_name"]}], [{"instances": pred}])
    res = ev.evaluate()["segm"]
    assert res["AP50_seen"] == pytest.approx(100.0) and res["recall_seen"] == pytest.approx(100.0)
    if drop_unseen:
        assert res["AP50_unseen"] == pytest.approx(0.0) and res["recall_unseen"] == pytest.approx(0.0)
        assert res["HM"] == 0.0 and res["recall_HM"] == 0.0
    else:
        assert res["AP50_unseen"] == pytest.approx(100.0) and res["HM"] == pytest.approx(100.0)
