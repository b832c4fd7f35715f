"""The FMWISS protocol configs of the paper (VOC 15-5 and 10-10, both settings; COCO-to-VOC): each loads, its
weak step is configured and built (model + method) without any data, the recipes agree where the paper's do, and
the COCO-to-VOC task splits COCO's 80 thing classes into the 60 non-VOC ones and the 20 VOC ones."""
import os

import pytest
from detectron2.modeling import build_model

from fmwiss_d2.data.datasets.class_names import COCO_THING_CLASSES, COCO_THING_IDS, VOC_CLASSES, VOC_TO_COCO
from fmwiss_d2.data.datasets.tasks import get_task
from fmwiss_d2.engine.incremental import configure_step
from fmwiss_d2.engine.launch import load_config
from fmwiss_d2.methods import build_method

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
VOC_15_5, VOC_10_10 = "voc/fmwiss_deeplabv3_R101_15-5.yaml", "voc/fmwiss_deeplabv3_R101_10-10.yaml"
COCO_TO_VOC = "coco/fmwiss_deeplabv3_R101_coco-to-voc.yaml"
# the COCO category ids of the 20 VOC classes (COCO's annotation file; person 1 ... tv 72)
VOC_COCO_IDS = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}


def _load(path, *opts):
    return load_config(os.path.join(CONFIGS, path), ["MODEL.DEVICE", "cpu", *opts])


@pytest.mark.parametrize("path, setting, groups, new_ids", [
    (VOC_15_5, "overlap", [16, 5], list(range(16, 21))), (VOC_15_5, "disjoint", [16, 5], list(range(16, 21))),
    (VOC_10_10, "overlap", [11, 10], list(range(11, 21))), (VOC_10_10, "disjoint", [11, 10], list(range(11, 21))),
    (COCO_TO_VOC, "overlap", [61, 20], list(range(61, 81)))])
def test_each_protocol_config_builds_its_weak_step(path, setting, groups, new_ids):
    cfg = configure_step(_load(path, "INCREMENTAL.STEP", "1", "INCREMENTAL.SETTING", setting), eval_only=True)
    assert cfg.METHOD.NAME == "FMWISS" and cfg.INCREMENTAL.NEW_CLASS_LABELS == "image"
    assert list(cfg.MODEL.CLASSES_PER_STEP) == groups and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == sum(groups)
    task = get_task(cfg.INCREMENTAL.TASK)
    assert cfg.DATASETS.TRAIN == (f"{task.name}_{setting}_step1_train",)
    method = build_method(cfg, build_model(cfg), task, 1)
    assert method.new_ids == new_ids and method.source_name == "CoSegmentation"
    assert method.teacher is not None and method.memory_bank is not None


def test_the_voc_recipes_are_wilsons_and_10_10_differs_from_15_5_by_its_task_only():
    """WILSON's VOC recipe (its run.sh): batch 24, crop 512, step 0 lr 0.01 for 30 epochs, the weak step lr 0.001
    for 40 epochs; the two VOC files are the same recipe (they cannot inherit one another: at most three levels)."""
    a, b = _load(VOC_15_5), _load(VOC_10_10)
    for cfg in (a, b):
        assert (cfg.SOLVER.IMS_PER_BATCH, tuple(cfg.INPUT.CROP.SIZE), cfg.SOLVER.BASE_LR) == (24, (512, 512), 0.01)
        assert (cfg.INCREMENTAL.EPOCHS, cfg.INCREMENTAL.STEP_EPOCHS, cfg.INCREMENTAL.STEP_BASE_LR) == (30, 40, 0.001)
        assert cfg.MODEL.META_ARCHITECTURE == "DeepLabV3" and cfg.MODEL.RESNETS.DEPTH == 101
    assert (a.INCREMENTAL.TASK, b.INCREMENTAL.TASK) == ("voc_15-5", "voc_10-10")
    for cfg in (a, b):
        cfg.INCREMENTAL.TASK, cfg.OUTPUT_DIR = "", ""
    assert a == b


def test_the_coco_to_voc_recipe_is_wilsons():
    """WILSON's coco.sh and argparser: 30 epochs per step, batch 24, lr 0.01 then 0.001, crop 448, output stride 8."""
    cfg = _load(COCO_TO_VOC)
    assert (cfg.INCREMENTAL.EPOCHS, cfg.INCREMENTAL.STEP_EPOCHS) == (30, 0)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.INCREMENTAL.STEP_BASE_LR) == (24, 0.01, 0.001)
    assert tuple(cfg.INPUT.CROP.SIZE) == (448, 448) and cfg.INPUT.MIN_SIZE_TEST == 512
    backbone = build_model(_load(COCO_TO_VOC, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "61",
                                 "MODEL.CLASSES_PER_STEP", "[61]")).backbone
    assert backbone.output_shape()[cfg.MODEL.DEEPLAB.IN_FEATURE].stride == 8


def test_coco_to_voc_is_the_60_non_voc_classes_then_the_20_voc_classes_with_their_coco_ids():
    task = get_task("coco-to-voc")
    step0, step1 = task.steps[0].classes, task.steps[1].classes
    assert step0[0] == "background" and len(step0) == 61 and len(step1) == 20
    assert set(step0[1:]) | set(step1) == set(COCO_THING_CLASSES) and not set(step0) & set(step1)
    coco_id = dict(zip(COCO_THING_CLASSES, COCO_THING_IDS))
    assert {coco_id[c] for c in step1} == VOC_COCO_IDS and {coco_id[c] for c in step0[1:]}.isdisjoint(VOC_COCO_IDS)
    assert [task.canonical(c) for c in VOC_CLASSES[1:]] == list(step1)  # every VOC class, in VOC's order
    assert set(VOC_TO_COCO) == set(VOC_CLASSES[1:])
    assert task.new_class_ids(1) == list(range(61, 81)) and task.old_class_ids(1) == list(range(1, 61))
    assert task.steps[0].train == "coco_2017_things_sem_seg_train"
    assert task.steps[1].train == "voc_2012_sem_seg_train_aug"
    assert dict(task.steps[1].val) == {"val": "coco_2017_things_sem_seg_val", "val_voc": "voc_2012_sem_seg_val"}
