"""Zero-shot splits (fmwiss_d2/data/datasets/zero_shot.py): every unseen annotation is gone from the training data
(images kept, or with ``train_images: seen_only`` only the images without one), and kept in val / test.
Expectations are read independently from the world's own files: the COCO panoptic / instance JSON (category names)
and the panoptic PNGs (id = R + 256 G + 256^2 B)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from fmwiss_d2.data.datasets.tasks import TaskDefinitionError
from fmwiss_d2.data.datasets.zero_shot import register_zero_shot_split, resolve_zero_shot_split

from conftest import TINY_ZS_UNSEEN as UNSEEN  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def split(tiny_zs_split):
    return tiny_zs_split


def _json(dataset, kind):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset)
    with open(meta.panoptic_json if kind == "panoptic" else meta.json_file) as f:
        return json.load(f)


def _unseen_segments(dataset):
    """{image file stem: set of segment ids of unseen classes}, from the panoptic JSON alone."""
    data = _json(dataset, "panoptic")
    unseen_cats = {c["id"] for c in data["categories"] if c["name"] in UNSEEN}
    return {os.path.splitext(a["file_name"])[0]: {s["id"] for s in a["segments_info"] if s["category_id"] in unseen_cats}
            for a in data["annotations"]}


def _pan_ids(fn):
    rgb = np.asarray(Image.open(fn).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_split_classes(split):
    assert split.classes[:10] == ("disc", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon",
                                  "crescent", "heart")
    assert split.unseen_ids == [3, 7, 9, 13]
    assert split.seen_ids == [0, 1, 2, 4, 5, 6, 8, 10, 11, 12]
    assert split.excluded == ()


@pytest.mark.parametrize("which", ["train", "val", "test"])
def test_panoptic_records(split, which):
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.dataset_mappers.panoptic import PanopticDatasetMapper

    base = f"tiny_shapes_panoptic_{which}"
    records, base_records = DatasetCatalog.get(f"tiny_zs_{which}"), DatasetCatalog.get(base)
    assert [r["file_name"] for r in records] == [r["file_name"] for r in base_records]  # every image kept
    unseen = _unseen_segments(base)
    assert sum(len(v) for v in unseen.values()) > 0, "the tiny world should show unseen classes"
    mapper = PanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255)
    for r, b in zip(records, base_records):
        stem = os.path.splitext(os.path.basename(r["pan_seg_file_name"]))[0]
        ids = {s["id"] for s in r["segments_info"]}
        base_ids = {s["id"] for s in b["segments_info"]}
        if which == "train":
            assert ids == base_ids - unseen[stem]
            out = mapper(r)
            assert not set(out["instances"].gt_classes.tolist()) & set(split.unseen_ids)
            pan = _pan_ids(r["pan_seg_file_name"])
            void = np.isin(pan, list(unseen[stem]))
            assert (out["sem_seg"].numpy()[void] == 255).all()  # unseen pixels are void, never another class
        else:
            assert ids == base_ids


@pytest.mark.parametrize("which", ["train", "val"])
def test_semantic_version(split, which):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fmwiss_d2.data.dataset_mappers.semantic import SemanticDatasetMapper

    name = f"tiny_zs_sem_seg_{which}"
    meta = MetadataCatalog.get(name)
    assert list(meta.stuff_classes) == list(split.classes) and meta.evaluator_type == "zero_shot_sem_seg"
    mapper = SemanticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255,
                                   label_lut=meta.label_lut)
    unseen = _unseen_segments(f"tiny_shapes_panoptic_{which}")
    for r in DatasetCatalog.get(name)[:4]:
        stem = os.path.splitext(os.path.basename(r["pan_seg_file_name"]))[0]
        labels = mapper(r)["sem_seg"].numpy()
        void = np.isin(_pan_ids(r["pan_seg_file_name"]), list(unseen[stem]))
        if which == "train":
            assert not np.isin(labels, split.unseen_ids).any()
            assert (labels[void] == 255).all()
        else:
            assert np.isin(labels[void], split.unseen_ids).all()  # kept, with their own class


def test_instance_split_and_excluded_classes(tiny_world):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    seen = ["disc", "square", "triangle", "ring", "cross"]
    split = register_zero_shot_split("tiny_zs_inst", {"train": "tiny_shapes_instance_train",
                                                      "val": "tiny_shapes_instance_val",
                                                      "unseen": ["star", "heart"], "seen": seen})
    assert split.excluded == ("diamond", "hexagon", "crescent")
    for which in ("train", "val"):
        data = _json(f"tiny_shapes_instance_{which}", "instance")
        names = {c["id"]: c["name"] for c in data["categories"]}
        kept = set(seen) | ({"star", "heart"} if which == "val" else set())
        expected = {}
        for a in data["annotations"]:
            if names[a["category_id"]] in kept:
                expected[a["image_id"]] = expected.get(a["image_id"], 0) + 1
        records = DatasetCatalog.get(f"tiny_zs_inst_{which}")
        assert len(records) == len(data["images"])
        classes = MetadataCatalog.get(f"tiny_zs_inst_{which}").thing_classes
        for r in records:
            assert len(r["annotations"]) == expected.get(r["image_id"], 0)
            assert {classes[a["category_id"]] for a in r["annotations"]} <= kept
        assert MetadataCatalog.get(f"tiny_zs_inst_{which}").get("json_file") is None  # GT from filtered records


def test_yaml_file_and_errors(tiny_world, tmp_path):
    split = resolve_zero_shot_split(os.path.join(ROOT, "configs", "tasks", "zero_shot", "shapes_zs.yaml"))
    assert split.unseen == ("star", "hexagon", "heart", "sand")
    with pytest.raises(TaskDefinitionError, match="unknown class 'tiger'"):
        register_zero_shot_split("bad", {"train": "tiny_shapes_panoptic_train", "val": "tiny_shapes_panoptic_val",
                                         "unseen": ["tiger"]})
    with pytest.raises(TaskDefinitionError, match="both seen and unseen"):
        register_zero_shot_split("bad", {"train": "tiny_shapes_panoptic_train", "val": "tiny_shapes_panoptic_val",
                                         "unseen": ["star"], "seen": ["star", "disc"]})


def test_a_split_file_is_not_an_incremental_task():
    from fmwiss_d2.data.datasets.tasks import load_task_file

    with pytest.raises(TaskDefinitionError, match="zero-shot split.*METHOD.PADING.SPLIT"):
        load_task_file(os.path.join(ROOT, "configs", "tasks", "zero_shot", "shapes_zs.yaml"))


def test_seen_only_training_images(tiny_world):
    """``train_images: seen_only`` (PADing's public COCO panoptic training set): the training split keeps exactly the
    images whose panoptic JSON lists no unseen segment, its semantic version the same images; val keeps every image."""
    from detectron2.data import DatasetCatalog

    spec = {"train": "tiny_shapes_panoptic_train", "val": "tiny_shapes_panoptic_val", "unseen": UNSEEN,
            "train_images": "seen_only"}
    register_zero_shot_split("tiny_zs_so", spec)
    unseen = _unseen_segments("tiny_shapes_panoptic_train")
    expected = sorted(stem for stem, ids in unseen.items() if not ids)
    assert 0 < len(expected) < len(unseen), "the tiny world should have images with and without unseen classes"

    def stems(records):
        return sorted(os.path.splitext(os.path.basename(r["pan_seg_file_name"]))[0] for r in records)

    assert stems(DatasetCatalog.get("tiny_zs_so_train")) == expected
    assert stems(DatasetCatalog.get("tiny_zs_so_sem_seg_train")) == expected
    assert len(DatasetCatalog.get("tiny_zs_so_val")) == len(_json("tiny_shapes_panoptic_val", "panoptic")["images"])

    inst = register_zero_shot_split("tiny_zs_so_inst", {"train": "tiny_shapes_instance_train",
                                                        "val": "tiny_shapes_instance_val", "unseen": ["star", "heart"],
                                                        "train_images": "seen_only"})
    data = _json("tiny_shapes_instance_train", "instance")
    names = {c["id"]: c["name"] for c in data["categories"]}
    with_unseen = {a["image_id"] for a in data["annotations"] if names[a["category_id"]] in inst.unseen}
    records = DatasetCatalog.get("tiny_zs_so_inst_train")
    assert sorted(r["image_id"] for r in records) == sorted(i["id"] for i in data["images"] if i["id"] not in with_unseen)


def test_train_images_errors(tiny_world):
    with pytest.raises(TaskDefinitionError, match="train_images must be one of"):
        register_zero_shot_split("bad", {"train": "tiny_shapes_panoptic_train", "val": "tiny_shapes_panoptic_val",
                                         "unseen": ["star"], "train_images": "some"})
    with pytest.raises(TaskDefinitionError, match="needs a panoptic or instance training dataset"):
        register_zero_shot_split("bad", {"train": "tiny_shapes_sem_seg_train", "val": "tiny_shapes_sem_seg_val",
                                         "unseen": ["star"], "train_images": "seen_only"})
