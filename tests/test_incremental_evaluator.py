"""The incremental evaluator: old/new/all split against a direct confusion-matrix computation, and equal to
detectron2's SemSegEvaluator on all classes."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fmwiss_d2.data.datasets.tasks import register_incremental_task
from _metrics import direct_iou
from fmwiss_d2.evaluation.incremental import (
    IncrementalSemSegEvaluator, forgetting, plot_steps, write_summary,
)


def _prediction(gt, rng):
    """Ground truth with some pixels replaced at random (a deterministic 'model')."""
    pred = np.where(gt == 255, 0, gt).astype(np.int64)
    flip = rng.random(gt.shape) < 0.2
    pred[flip] = rng.integers(0, 4, flip.sum())
    return pred


def test_old_new_all_match_direct_computation_and_detectron2(handmade, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    register_incremental_task("hand_eval", {"train": "handmade_train", "val": "handmade_val",
                                            "steps": [[0, 1, 2], [3], [4]]})
    name = "hand_eval_overlap_step1_val"  # seen: background, a, b (base) and c (new); d is ignored
    records = DatasetCatalog.get(name)
    lut = np.array(MetadataCatalog.get(name).label_lut)
    rng = np.random.default_rng(0)
    ev = IncrementalSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    pairs, mapped_records = [], []
    for r in records:
        gt = lut[np.asarray(Image.open(r["sem_seg_file_name"]))]
        pred = _prediction(gt, rng)
        pairs.append((pred, gt))
        ev.process([r], [{"sem_seg": torch.nn.functional.one_hot(torch.from_numpy(pred), 4).permute(2, 0, 1).float()}])
        fn = str(tmp_path / f"mapped_{r['image_id']}.png")  # ground truth remapped by hand for detectron2
        Image.fromarray(gt.astype(np.uint8)).save(fn)
        mapped_records.append({**r, "sem_seg_file_name": fn})
    res = ev.evaluate()["sem_seg"]
    iou = direct_iou(pairs, 4)
    assert res["mIoU_old"] == pytest.approx(100 * np.nanmean(iou[[1, 2]]))
    assert res["mIoU_new"] == pytest.approx(100 * iou[3])
    assert res["mIoU_all"] == pytest.approx(100 * np.nanmean(iou))
    assert res["IoU_background"] == pytest.approx(100 * iou[0])
    # detectron2's own evaluator on the hand-remapped ground truth gives the same all-class mIoU
    DatasetCatalog.register("hand_eval_mapped", lambda: mapped_records)
    MetadataCatalog.get("hand_eval_mapped").set(stuff_classes=["background", "a", "b", "c"], ignore_label=255)
    plain = SemSegEvaluator("hand_eval_mapped", distributed=False)
    plain.reset()
    for r, (pred, _) in zip(mapped_records, pairs):
        plain.process([r], [{"sem_seg": torch.nn.functional.one_hot(torch.from_numpy(pred), 4).permute(2, 0, 1).float()}])
    assert plain.evaluate()["sem_seg"]["mIoU"] == pytest.approx(res["mIoU_all"])
    saved = json.load(open(tmp_path / f"incremental_results_{name}.json"))
    assert saved["step"] == 1 and saved["task"] == "hand_eval" and saved["metrics"]["mIoU_new"] == pytest.approx(res["mIoU_new"])


def test_step0_has_no_new_classes(handmade):
    from detectron2.data import DatasetCatalog

    register_incremental_task("hand_eval", {"train": "handmade_train", "val": "handmade_val",
                                            "steps": [[0, 1, 2], [3], [4]]})
    name = "hand_eval_overlap_step0_val"
    ev = IncrementalSemSegEvaluator(name, distributed=False)
    ev.reset()
    for r in DatasetCatalog.get(name):
        ev.process([r], [{"sem_seg": torch.zeros(3, 8, 8)}])  # predicts background everywhere
    res = ev.evaluate()["sem_seg"]
    assert math.isnan(res["mIoU_new"]) and res["mIoU_old"] == 0.0 and res["IoU_background"] > 0


def test_forgetting_summary_and_plot(tmp_path):
    steps = [{"a": 80.0, "b": 60.0}, {"a": 50.0, "b": 65.0, "c": 40.0}, {"a": 30.0, "b": 70.0, "c": 20.0, "d": 10.0}]
    assert forgetting(steps) == {"a": 50.0, "b": -5.0, "c": 20.0}
    rows = [{"method": m, "step": s, "mIoU_old": 70.0 - 10 * s * (m == "finetune"), "mIoU_new": float("nan") if s == 0 else 30.0,
             "mIoU_all": 60.0, "IoU_background": 90.0, "split": "test"} for m in ("mib", "finetune") for s in range(3)]
    write_summary(rows, str(tmp_path / "summary.csv"))
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == "method,step,split,mIoU_old,mIoU_new,mIoU_all,IoU_background" and len(lines) == 7
    assert lines[6].startswith("finetune,2,test,50.0,30.0")
    plot_steps(rows, str(tmp_path / "steps.png"), title="toy")
    assert Image.open(tmp_path / "steps.png").size[0] > 500
