"""A COCO-format panoptic dataset as the base of an incremental task, and tasks without a background class.

The fixture is a hand-made panoptic dataset (segment ids written as RGB, id = R + 256 G + 256^2 B) registered
through detectron2's own ``register_coco_panoptic``; every expectation below is written out by hand."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from _metrics import direct_iou
from fmwiss_d2.data.datasets.tasks import register_incremental_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP = 4  # the 8x8 hand-written maps are blown up 4x (32x32 images, big enough for the model test)

# COCO dataset category ids: things cat=1, dog=2; stuff grass=3, sky=4
CATEGORIES = [{"id": 1, "name": "cat", "isthing": 1, "color": [200, 0, 0]},
              {"id": 2, "name": "dog", "isthing": 1, "color": [0, 200, 0]},
              {"id": 3, "name": "grass", "isthing": 0, "color": [0, 120, 0]},
              {"id": 4, "name": "sky", "isthing": 0, "color": [0, 0, 220]}]
# the usual detectron2 panoptic metadata: stuff_classes lists every class, both maps point into it
UNIFIED_META = {"thing_classes": ["cat", "dog"], "stuff_classes": ["cat", "dog", "grass", "sky"],
                "stuff_colors": [(200, 0, 0), (0, 200, 0), (0, 120, 0), (0, 0, 220)],
                "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
                "stuff_dataset_id_to_contiguous_id": {3: 2, 4: 3}}
# separate contiguous ranges for things and stuff
SEPARATE_META = {"thing_classes": ["cat", "dog"], "stuff_classes": ["grass", "sky"],
                 "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
                 "stuff_dataset_id_to_contiguous_id": {3: 0, 4: 1}}

S, G, D, C, E, X, Y, Z = 5, 300, 258, 70000, 513, 65537, 65793, 12  # segment ids (several bytes used)
# (panoptic id map, segments as (id, dataset category, iscrowd))
PANOPTIC = [
    (np.array([[S, S, S, S, S, S, S, S],
               [S, S, S, S, S, S, S, S],
               [G, G, G, G, G, G, G, G],
               [G, C, C, G, G, G, G, G],
               [G, C, C, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, 0]]), [(S, 4, 0), (G, 3, 0), (C, 1, 0)]),
    (np.array([[S, S, S, S, S, S, S, S],
               [S, S, S, D, D, S, S, S],
               [S, S, S, D, D, S, S, S],
               [G, G, G, G, G, G, G, G],
               [E, E, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [0, 0, G, G, G, G, G, G]]), [(S, 4, 0), (G, 3, 0), (D, 2, 0), (E, 1, 1)]),
    (np.array([[X, X, G, G, G, G, G, G],
               [X, X, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, Y, Y, G, G],
               [G, G, G, G, Y, Y, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G]]), [(G, 3, 0), (X, 2, 0), (Y, 2, 0)]),
    (np.array([[G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, Z, Z, G, G, G, G],
               [G, G, Z, Z, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G],
               [G, G, G, G, G, G, G, G]]), [(G, 3, 0), (Z, 1, 0)]),
]
_ = 255
# the semantic masks expected by hand, in contiguous ids: cat 0, dog 1, grass 2, sky 3, unlabeled 255
EXPECTED = [
    [[3, 3, 3, 3, 3, 3, 3, 3],
     [3, 3, 3, 3, 3, 3, 3, 3],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 0, 0, 2, 2, 2, 2, 2],
     [2, 0, 0, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, _]],
    [[3, 3, 3, 3, 3, 3, 3, 3],
     [3, 3, 3, 1, 1, 3, 3, 3],
     [3, 3, 3, 1, 1, 3, 3, 3],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [0, 0, 2, 2, 2, 2, 2, 2],  # a crowd of cats keeps its class
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [_, _, 2, 2, 2, 2, 2, 2]],
    [[1, 1, 2, 2, 2, 2, 2, 2],
     [1, 1, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 1, 1, 2, 2],
     [2, 2, 2, 2, 1, 1, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2]],
    [[2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 0, 0, 2, 2, 2, 2],
     [2, 2, 0, 0, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2],
     [2, 2, 2, 2, 2, 2, 2, 2]],
]


def _up(a):
    return np.kron(np.asarray(a), np.ones((UP, UP), np.int64))


def expected(i):
    return _up(EXPECTED[i]).astype(np.uint8)


@pytest.fixture(scope="module")
def handpan(tmp_path_factory):
    """``handpan_{train,val}`` (unified metadata) and ``handpan_sep_train`` (separate ranges), same files."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_panoptic

    root = tmp_path_factory.mktemp("handpan")
    (root / "images").mkdir()
    (root / "panoptic").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (ids, segments) in enumerate(PANOPTIC):
        ids = _up(ids)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "panoptic" / f"{i:03d}.png")
        sem = expected(i)
        img = (rng.random((*sem.shape, 3)) * 40).astype(np.uint8)  # class-coloured picture
        for c, col in enumerate([(220, 40, 40), (40, 40, 220), (40, 160, 40), (150, 200, 250)]):
            img[sem == c] = col
        Image.fromarray(img).save(root / "images" / f"{i:03d}.jpg", quality=98)
        images.append({"id": i, "file_name": f"{i:03d}.jpg", "height": sem.shape[0], "width": sem.shape[1]})
        anns.append({"image_id": i, "file_name": f"{i:03d}.png",
                     "segments_info": [{"id": s, "category_id": c, "iscrowd": k} for s, c, k in segments]})
    pan_json = root / "panoptic.json"
    pan_json.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    for name, meta in (("handpan_train", UNIFIED_META), ("handpan_val", UNIFIED_META),
                       ("handpan_sep_train", SEPARATE_META)):
        if name not in DatasetCatalog.list():
            register_coco_panoptic(name, dict(meta), str(root / "images"), str(root / "panoptic"), str(pan_json))
    return root


def _read(fn):
    return np.asarray(Image.open(fn))


def test_conversion_equals_the_hand_made_masks_in_both_id_layouts(handpan, tmp_path):
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.datasets.panoptic_to_semantic import is_panoptic, semantic_classes, semantic_records

    for name in ("handpan_train", "handpan_sep_train"):
        assert is_panoptic(name) and semantic_classes(name) == ["cat", "dog", "grass", "sky"]
        records = semantic_records(name, DatasetCatalog.get(name), cache_dir=str(tmp_path))
        assert [r["image_id"] for r in records] == [0, 1, 2, 3]
        for i, r in enumerate(records):
            assert r["file_name"].endswith(f"{i:03d}.jpg")
            np.testing.assert_array_equal(_read(r["sem_seg_file_name"]), expected(i), err_msg=f"{name} image {i}")


def test_conversion_cache_is_reused_and_recomputed_when_files_change(handpan, tmp_path, monkeypatch):
    import PIL.Image
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.datasets.panoptic_to_semantic import semantic_records

    records = DatasetCatalog.get("handpan_train")
    first = semantic_records("handpan_train", records, cache_dir=str(tmp_path))
    folder = tmp_path / "panoptic_sem_seg"
    assert len(list(folder.iterdir())) == 1  # one finished folder, no temporary leftovers
    mtimes = [os.path.getmtime(r["sem_seg_file_name"]) for r in first]

    def no_reading(*a, **k):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(PIL.Image, "open", no_reading)
    again = semantic_records("handpan_train", DatasetCatalog.get("handpan_train"), cache_dir=str(tmp_path))
    monkeypatch.undo()
    assert [r["sem_seg_file_name"] for r in again] == [r["sem_seg_file_name"] for r in first]
    assert [os.path.getmtime(r["sem_seg_file_name"]) for r in again] == mtimes
    fewer = semantic_records("handpan_train", records[1:3], cache_dir=str(tmp_path))  # another file list
    assert len(list(folder.iterdir())) == 2
    assert {os.path.dirname(r["sem_seg_file_name"]) for r in fewer}.isdisjoint(
        {os.path.dirname(r["sem_seg_file_name"]) for r in first})
    for i, r in zip((1, 2), fewer):
        np.testing.assert_array_equal(_read(r["sem_seg_file_name"]), expected(i))


SPEC = {"train": "handpan_train", "val": "handpan_val", "background": None,
        "steps": [["grass", "cat"], ["sky", "dog"]]}


def _image_ids(name):
    from detectron2.data import DatasetCatalog

    return sorted(r["image_id"] for r in DatasetCatalog.get(name))


def test_background_less_task_on_the_panoptic_base(handpan):
    from detectron2.data import MetadataCatalog

    task = register_incremental_task("handpan_2-2", SPEC)
    # model ids follow the steps: grass 0, cat 1, sky 2, dog 3; raw (contiguous) ids: cat 0, dog 1, grass 2, sky 3
    assert task.class_order == ["grass", "cat", "sky", "dog"]
    assert task.new_class_ids(0) == [0, 1] and task.old_class_ids(0) == []
    assert task.new_class_ids(1) == [2, 3] and task.old_class_ids(1) == [0, 1]
    raw = np.array([0, 1, 2, 3, 255], np.uint8)
    expected_luts = {
        "step0_train": [1, 255, 0, 255, 255],  # dog and sky are not current: ignored, not background
        "step1_train": [255, 3, 255, 2, 255],  # old cat and grass ignored too
        "step0_val": [1, 255, 0, 255, 255],
        "step1_val": [1, 3, 0, 2, 255],
    }
    for setting in ("overlap", "disjoint"):
        for key, want in expected_luts.items():
            meta = MetadataCatalog.get(f"handpan_2-2_{setting}_{key}")
            assert np.array(meta.label_lut, np.uint8)[raw].tolist() == want, (setting, key)
    meta = MetadataCatalog.get("handpan_2-2_overlap_step1_val")
    assert meta.stuff_classes == ["grass", "cat", "sky", "dog"]
    assert meta.old_classes == [0, 1] and meta.new_classes == [2, 3]
    assert meta.stuff_colors == [(0, 120, 0), (200, 0, 0), (0, 0, 220), (0, 200, 0)]  # follow the classes
    # present classes (by hand): 0 sky grass cat, 1 sky grass dog cat, 2 grass dog, 3 grass cat
    assert _image_ids("handpan_2-2_overlap_step0_train") == [0, 1, 2, 3]
    assert _image_ids("handpan_2-2_disjoint_step0_train") == [3]
    assert _image_ids("handpan_2-2_overlap_step1_train") == [0, 1, 2]
    assert _image_ids("handpan_2-2_disjoint_step1_train") == [0, 1, 2]
    assert _image_ids("handpan_2-2_overlap_step0_val") == [0, 1, 2, 3]


def test_training_labels_ignore_non_current_classes(handpan):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fmwiss_d2.data.dataset_mappers.semantic import SemanticDatasetMapper

    register_incremental_task("handpan_2-2", SPEC)
    name = "handpan_2-2_overlap_step1_train"
    mapper = SemanticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255,
                                   with_instances=False, label_lut=MetadataCatalog.get(name).label_lut)
    record = [r for r in DatasetCatalog.get(name) if r["image_id"] == 1][0]
    got = mapper(record)["sem_seg"].numpy()
    # image 1 at step 1 (sky -> 2, dog -> 3 current): grass, cat (also the crowd) and unlabeled -> 255
    want = _up([[2, 2, 2, 2, 2, 2, 2, 2],
                [2, 2, 2, 3, 3, 2, 2, 2],
                [2, 2, 2, 3, 3, 2, 2, 2],
                [_, _, _, _, _, _, _, _],
                [_, _, _, _, _, _, _, _],
                [_, _, _, _, _, _, _, _],
                [_, _, _, _, _, _, _, _],
                [_, _, _, _, _, _, _, _]])
    np.testing.assert_array_equal(got, want)


def test_evaluator_old_new_all_without_background(handpan, tmp_path):
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.evaluation.incremental import IncrementalSemSegEvaluator

    register_incremental_task("handpan_2-2", SPEC)
    name = "handpan_2-2_overlap_step1_val"
    to_model = {0: 1, 1: 3, 2: 0, 3: 2, 255: 255}  # by hand: cat 1, dog 3, grass 0, sky 2
    rng = np.random.default_rng(1)
    ev = IncrementalSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    pairs = []
    for r in DatasetCatalog.get(name):
        gt = np.vectorize(to_model.get)(expected(r["image_id"]))
        pred = np.where(gt == 255, 0, gt)
        flip = rng.random(gt.shape) < 0.3
        pred[flip] = rng.integers(0, 4, flip.sum())
        pairs.append((pred, gt))
        logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 4).permute(2, 0, 1).float()
        ev.process([r], [{"sem_seg": logits}])
    res = ev.evaluate()["sem_seg"]
    iou = direct_iou(pairs, 4)
    assert not np.isnan(iou).any()
    assert res["mIoU_old"] == pytest.approx(100 * iou[[0, 1]].mean())  # grass, cat: step 0's classes
    assert res["mIoU_new"] == pytest.approx(100 * iou[[2, 3]].mean())
    assert res["mIoU_all"] == pytest.approx(100 * iou.mean())
    assert "IoU_background" not in res


def test_mib_on_a_background_less_task_is_refused(handpan):
    from detectron2.config import get_cfg

    from fmwiss_d2 import add_fmwiss_config
    from fmwiss_d2.methods import build_method

    task = register_incremental_task("handpan_2-2", SPEC)
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.METHOD.NAME = "MiB"
    model = torch.nn.Linear(1, 1)  # refused before the model is used
    for step in (0, 1):
        with pytest.raises(ValueError, match="'MiB' needs a background class.*task 'handpan_2-2' has none"):
            build_method(cfg, model, task, step)
    cfg.METHOD.NAME = "Finetune"
    assert build_method(cfg, model, task, 1).new_ids == [2, 3]


def test_background_key_and_null(handpan):
    from fmwiss_d2.data.datasets.tasks import TaskDefinitionError, task_from_dict

    with pytest.raises(TaskDefinitionError, match="step 0 must begin with the background class 'background'.*"
                                                  "background: null"):
        task_from_dict("bad", {**SPEC, "background": "background"})
    with pytest.raises(TaskDefinitionError, match="'background' must be a class name or null"):
        task_from_dict("bad", {**SPEC, "background": 3})


def test_finetune_trains_one_step_of_a_background_less_panoptic_task(handpan, tmp_path):
    from fmwiss_d2.engine.launch import argument_parser, main

    task_file = tmp_path / "handpan.yaml"
    task_file.write_text("name: handpan_yaml_2-2\ntrain: handpan_train\nval: handpan_val\nbackground: null\n"
                         "steps:\n  - [grass, cat]\n  - [sky, dog]\n")
    args = argument_parser().parse_args([
        "--config-file", os.path.join(ROOT, "configs", "shapes/deeplabv3_semantic.yaml"),
        "INCREMENTAL.TASK", str(task_file), "METHOD.NAME", "Finetune",
        "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2", "INPUT.CROP.ENABLED", "False", "INPUT.MIN_SIZE_TRAIN", "(32,)",
        "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64"])
    results = main(args)
    res = results["sem_seg"] if "sem_seg" in results else results["handpan_yaml_2-2_overlap_step0_val"]["sem_seg"]
    assert {"mIoU_old", "mIoU_new", "mIoU_all"} <= set(res) and "IoU_background" not in res
    saved = tmp_path / "out" / "step0" / "inference" / "incremental_results_handpan_yaml_2-2_overlap_step0_val.json"
    record = json.loads(saved.read_text())
    assert record["classes"] == ["grass", "cat"] and record["step"] == 0
    assert (tmp_path / "out" / "step0" / "model_final.pth").is_file()


def test_a_base_without_semantic_or_panoptic_masks_is_refused_clearly(handpan):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fmwiss_d2.data.datasets.panoptic_to_semantic import PanopticBaseError
    from fmwiss_d2.data.datasets.tasks import TaskDefinitionError

    boxes = [{"file_name": "x.jpg", "image_id": 0, "annotations": []}]
    for name, meta in (("handpan_boxes", {"stuff_classes": ["background", "cat"]}),
                       ("handpan_fake_panoptic", {**UNIFIED_META, "panoptic_root": "/nowhere"})):
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda: [dict(r) for r in boxes])
            MetadataCatalog.get(name).set(**meta)
    register_incremental_task("handpan_boxes_task", {"train": "handpan_boxes", "val": "handpan_boxes",
                                                     "steps": [["background", "cat"]]})
    with pytest.raises(TaskDefinitionError, match="dataset 'handpan_boxes' of task 'handpan_boxes_task' has no "
                                                  "sem_seg_file_name.*register_sem_seg"):
        DatasetCatalog.get("handpan_boxes_task_overlap_step0_train")
    register_incremental_task("handpan_fake_task", {"train": "handpan_fake_panoptic", "val": "handpan_fake_panoptic",
                                                    "background": None, "steps": [["cat", "dog", "grass", "sky"]]})
    with pytest.raises(PanopticBaseError, match="'handpan_fake_panoptic' is registered as panoptic.*lack "
                                                r"\['pan_seg_file_name', 'segments_info'\]"):
        DatasetCatalog.get("handpan_fake_task_overlap_step0_train")


def test_shapes_panoptic_conversion_agrees_with_the_generator_semantic_masks(tiny_world, tmp_path):
    """The world's generator writes semantic masks too (0 background, 1..10 objects, 255 border): converted
    panoptic masks must give the same objects (ids shifted by one) and a stuff class on the background."""
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.datasets.panoptic_to_semantic import semantic_classes, semantic_records
    from fmwiss_d2.data.datasets.shapes import PANOPTIC_CLASSES

    assert semantic_classes("tiny_shapes_panoptic_train") == PANOPTIC_CLASSES
    converted = semantic_records("tiny_shapes_panoptic_train", DatasetCatalog.get("tiny_shapes_panoptic_train"),
                                 cache_dir=str(tmp_path))
    semantic = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get("tiny_shapes_sem_seg_train")}
    assert len(converted) == len(semantic) == 24
    for r in converted:
        sem, pan = _read(semantic[r["file_name"]]).astype(int), _read(r["sem_seg_file_name"]).astype(int)
        objects = (sem >= 1) & (sem <= 10)
        np.testing.assert_array_equal(pan[objects], sem[objects] - 1)
        assert np.isin(pan[sem == 0], [10, 11, 12, 13]).all()  # sky, wall, grass, sand
