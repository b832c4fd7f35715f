"""The synthetic world: determinism, annotation consistency, and detectron2's own tools working on it."""
import hashlib
import json
import os
import re
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from fmwiss_d2.data.datasets import shapes
from fmwiss_d2.data.datasets.shapes import SEM_SEG_CLASSES, THING_CLASSES, WorldSpec, ensure_world


def _digest(root):
    h = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            h[os.path.relpath(p, root)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return h


def test_byte_identical_for_same_seed_and_size(tmp_path):
    spec = WorldSpec(seed=11, image_size=48, num_train=6, num_val=3)
    a = ensure_world(spec, str(tmp_path / "a"), workers=1)
    b = ensure_world(spec, str(tmp_path / "b"), workers=2)
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) == 3 * 9 + 6 + 2  # 3 files per image + 6 json + world.json + manifest.json


def test_other_seed_or_size_gives_other_folder_and_content(tmp_path):
    base = WorldSpec(seed=11, image_size=48, num_train=4, num_val=2)
    other_seed = WorldSpec(seed=12, image_size=48, num_train=4, num_val=2)
    other_size = WorldSpec(seed=11, image_size=56, num_train=4, num_val=2)
    roots = [ensure_world(s, str(tmp_path), workers=1) for s in (base, other_seed, other_size)]
    assert len(set(roots)) == 3
    img = lambda r: open(os.path.join(r, "images", "train", "000000.jpg"), "rb").read()
    assert img(roots[0]) != img(roots[1])
    # a validation image does not depend on the training-set size
    more_train = ensure_world(WorldSpec(seed=11, image_size=48, num_train=5, num_val=2), str(tmp_path), workers=1)
    val = lambda r: open(os.path.join(r, "sem_seg", "val", "000001.png"), "rb").read()
    assert val(roots[0]) == val(more_train)


def test_generation_is_reused_and_leaves_no_temporary_folder(tmp_path):
    spec = WorldSpec(seed=1, image_size=32, num_train=2, num_val=1)
    root = ensure_world(spec, str(tmp_path), workers=1)
    stamp = os.path.getmtime(os.path.join(root, "world.json"))
    assert ensure_world(spec, str(tmp_path), workers=1) == root
    assert os.path.getmtime(os.path.join(root, "world.json")) == stamp
    assert os.listdir(tmp_path) == [spec.folder_name]


def _load(root, split):
    ann = lambda n: json.load(open(os.path.join(root, "annotations", f"{n}_{split}.json")))
    return ann("instances"), ann("panoptic"), ann("labels")


def test_annotations_are_consistent(tiny_world):
    spec, _, root = tiny_world
    for split in ("train", "val"):
        inst, pan, labels = _load(root, split)
        assert [c["name"] for c in inst["categories"]] == THING_CLASSES
        by_image = {}
        for a in inst["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        pan_by_image = {p["image_id"]: p for p in pan["annotations"]}
        for entry in labels["images"]:
            i = entry["image_id"]
            stem = entry["file_name"][:-4]
            sem = np.asarray(Image.open(os.path.join(root, "sem_seg", split, stem + ".png")))
            assert sem.shape == (spec.image_size, spec.image_size)
            anns = by_image[i]
            union = np.zeros(sem.shape, np.int64)  # semantic id from instances (0 = background)
            masks = []
            for a in anns:
                m = mask_util.decode(a["segmentation"]).astype(bool)
                assert m.sum() == a["area"] > 0
                assert not (union[m] > 0).any(), "instances overlap"
                union[m] = a["category_id"]
                masks.append((a["category_id"], m))
            valid = sem != 255
            assert (sem[valid] == union[valid]).all(), "semantic mask != union of instance masks"
            assert (~valid).any() and (~valid).mean() < 0.5  # a border band exists and is thin
            present = sorted(int(v) for v in np.unique(sem[valid]) if v != 0)
            assert entry["labels"] == present == sorted({a["category_id"] for a in anns})
            # panoptic PNG: every thing segment equals one instance mask; stuff covers the rest
            png = np.asarray(Image.open(os.path.join(root, "panoptic", split, stem + ".png"))).astype(np.int64)
            ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
            segs = pan_by_image[i]["segments_info"]
            assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in segs)
            things = [s for s in segs if s["category_id"] <= len(THING_CLASSES)]
            assert len(things) == len(anns)
            for s in segs:
                assert (ids == s["id"]).sum() == s["area"]
            thing_masks = sorted((s["category_id"], (ids == s["id"]).tobytes()) for s in things)
            assert thing_masks == sorted((c, m.tobytes()) for c, m in masks)
            assert all(s["category_id"] > len(THING_CLASSES) for s in segs if s not in things)
            # the caption names exactly the classes present
            words = re.findall(r"[a-z]+", entry["caption"])
            singular = {shapes.PLURALS[n]: n for n in THING_CLASSES}
            named = {singular.get(w, w) for w in words} & set(THING_CLASSES)
            assert named == {THING_CLASSES[c - 1] for c in present}


def test_registered_names_and_metadata(tiny_world):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    spec, _, root = tiny_world
    sem = DatasetCatalog.get("tiny_shapes_sem_seg_val")
    assert len(sem) == spec.num_val
    assert sem[0]["sem_seg_file_name"].startswith(root) and os.path.isfile(sem[0]["file_name"])
    meta = MetadataCatalog.get("tiny_shapes_sem_seg_val")
    assert meta.stuff_classes == SEM_SEG_CLASSES and meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    inst = DatasetCatalog.get("tiny_shapes_instance_train")
    assert len(inst) == spec.num_train and all(a["category_id"] < 10 for r in inst for a in r["annotations"])
    pan = DatasetCatalog.get("tiny_shapes_panoptic_train")
    assert len(pan) == spec.num_train
    seg = pan[0]["segments_info"]
    assert {s["isthing"] for s in seg} == {True, False}
    pmeta = MetadataCatalog.get("tiny_shapes_panoptic_train")
    assert pmeta.thing_classes == THING_CLASSES and len(pmeta.stuff_classes) == 14
    assert all(s["category_id"] < 10 for s in seg if s["isthing"]) and all(s["category_id"] >= 10 for s in seg if not s["isthing"])


def test_detectron2_sem_seg_evaluator_scores_ground_truth_perfectly(tiny_world):
    """SemSegEvaluator, unchanged, reads our masks: ground truth as prediction gives mIoU 100."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import SemSegEvaluator

    records = DatasetCatalog.get("tiny_shapes_sem_seg_val")
    ev = SemSegEvaluator("tiny_shapes_sem_seg_val", distributed=False)
    ev.reset()
    present = set()
    for r in records:
        gt = np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64)
        present |= set(np.unique(gt).tolist()) - {255}
        logits = torch.nn.functional.one_hot(torch.from_numpy(np.where(gt == 255, 0, gt)), 11).permute(2, 0, 1).float()
        ev.process([r], [{"sem_seg": logits}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)


def test_detectron2_coco_evaluator_scores_ground_truth_perfectly(tiny_world, tmp_path):
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    records = DatasetCatalog.get("tiny_shapes_instance_val")
    ev = COCOEvaluator("tiny_shapes_instance_val", output_dir=str(tmp_path), distributed=False)
    ev.reset()
    for r in records:
        h, w = r["height"], r["width"]
        inst = Instances((h, w))
        ms = [mask_util.decode(a["segmentation"]) for a in r["annotations"]]
        inst.pred_masks = torch.as_tensor(np.stack(ms)).bool()
        inst.pred_boxes = Boxes(torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in r["annotations"]]))
        inst.scores = torch.ones(len(ms))
        inst.pred_classes = torch.tensor([a["category_id"] for a in r["annotations"]])
        ev.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    res = ev.evaluate()
    assert res["segm"]["AP"] == pytest.approx(100.0)


def test_visualizer_draws_our_annotations(tiny_world):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    r = DatasetCatalog.get("tiny_shapes_panoptic_val")[0]
    img = np.asarray(Image.open(r["file_name"]))
    out = Visualizer(img, MetadataCatalog.get("tiny_shapes_panoptic_val")).draw_dataset_dict(r).get_image()
    assert out.shape == img.shape and not np.array_equal(out, img)


def test_register_from_cfg_switches_the_world(tiny_world):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fmwiss_d2.config import add_fmwiss_config
    from fmwiss_d2.data.datasets.shapes import register_shapes_from_cfg

    spec, cache, root = tiny_world
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.SHAPES.SEED, cfg.SHAPES.IMAGE_SIZE = spec.seed, spec.image_size
    cfg.SHAPES.NUM_TRAIN, cfg.SHAPES.NUM_VAL, cfg.SHAPES.CACHE_DIR = spec.num_train, spec.num_val, cache
    register_shapes_from_cfg(cfg, prefix="cfg_shapes")
    assert MetadataCatalog.get("cfg_shapes_sem_seg_train").world_root == root
    assert len(DatasetCatalog.get("cfg_shapes_sem_seg_val")) == spec.num_val
    cfg.SHAPES.NUM_VAL = 3
    register_shapes_from_cfg(cfg, prefix="cfg_shapes")
    assert MetadataCatalog.get("cfg_shapes_sem_seg_train").world_root != root


def test_object_centric_layout_places_large_objects_near_the_centre():
    """ImageNet-like images for DINO pretraining: the requested object count, each object large and central."""
    size = 64
    spec = WorldSpec(seed=5, image_size=size, num_train=12, num_val=0, layout="object_centric",
                     min_objects=1, max_objects=1)
    scene = WorldSpec(seed=5, image_size=size, num_train=12, num_val=0)
    fg = {}
    for s in (spec, scene):
        fractions = []
        for i in range(s.num_train):
            _, ids, objects, _ = shapes.render_image(s, "train", i)
            fractions.append(float((ids > 0).mean()))
            if s is spec:
                assert len(objects) == 1
                ys, xs = np.nonzero(ids == 1)
                # centre offset <= 0.15 of the side; the centroid of a crescent or heart sits off the centre
                assert abs(xs.mean() - size / 2) < 0.35 * size and abs(ys.mean() - size / 2) < 0.35 * size
        fg[s.layout] = np.mean(fractions)
    # radius >= 0.35 of the side: even a thin cross (area 2.04 r^2) covers >= 0.25 of the image unless cut
    assert fg["object_centric"] > 0.25 > fg["scene"]
    assert spec.folder_name.endswith("-object_centric") and "object_centric" not in scene.folder_name


def test_world_spec_rejects_bad_layout_and_object_counts():
    with pytest.raises(ValueError, match="unknown world layout 'photo'.*scene, object_centric"):
        WorldSpec(layout="photo")
    with pytest.raises(ValueError, match="min_objects <= max_objects"):
        WorldSpec(min_objects=3, max_objects=2)


# ------------------------------------------------------------------------------------------ self-check
def _small_world(tmp_path):
    spec = WorldSpec(seed=5, image_size=32, num_train=4, num_val=2)
    return spec, str(tmp_path), ensure_world(spec, str(tmp_path), workers=1)


def test_manifest_lists_every_file_with_its_size(tmp_path):
    _, _, root = _small_world(tmp_path)
    manifest = json.load(open(os.path.join(root, "manifest.json")))["files"]
    on_disk = {os.path.relpath(os.path.join(d, f), root): os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(root) for f in files if f != "manifest.json"}
    assert manifest == on_disk and len(manifest) == 3 * 6 + 6 + 1


@pytest.mark.parametrize("damage", ["truncate_jpg", "truncate_png", "delete_mask"])
def test_damaged_world_is_reported_naming_the_file(tmp_path, damage):
    from fmwiss_d2.utils.errors import DamagedCacheError

    spec, cache, root = _small_world(tmp_path)
    rel = {"truncate_jpg": "images/train/000002.jpg", "truncate_png": "panoptic/val/000001.png",
           "delete_mask": "sem_seg/val/000001.png"}[damage]
    path = os.path.join(root, rel)
    if damage == "delete_mask":
        os.remove(path)
    else:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DamagedCacheError) as e:
        shapes.load_shapes_sem_seg(spec, "train", cache)
    msg = str(e.value)
    assert rel in msg and ("missing" if damage == "delete_mask" else "bytes, expected") in msg
    assert f"rm -rf '{root}'" in msg


def test_world_without_manifest_is_checked_in_full_once(tmp_path):
    from fmwiss_d2.utils.errors import DamagedCacheError

    spec, cache, root = _small_world(tmp_path)
    manifest = os.path.join(root, "manifest.json")
    original = open(manifest).read()
    os.remove(manifest)  # a world generated before manifests existed
    assert ensure_world(spec, cache) == root
    assert open(manifest).read() == original  # adopted: the same manifest generation writes

    os.remove(manifest)
    path = os.path.join(root, "images", "val", "000001.jpg")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DamagedCacheError, match=r"images/val/000001\.jpg unreadable"):
        ensure_world(spec, cache)
    assert not os.path.exists(manifest)  # a damaged world is never blessed with a manifest


# --------------------------------------------------------------------------------------- held-out test split
def _content_digests(spec, root):
    """sha1 over every train/val image's rendered arrays (pixels, instance ids, objects, stuff) and sha1 over the
    world's JSON files: what the files hold, independent of the JPEG/PNG encoders' versions."""
    render = hashlib.sha1()
    for split in ("train", "val"):
        for i in range(spec.num_images(split)):
            for a in shapes.render_image(spec, split, i):
                render.update(np.ascontiguousarray(a if isinstance(a, np.ndarray) else np.asarray(a, np.int64)).tobytes())
    annotations = hashlib.sha1()
    for rel in sorted(f for f in _digest(root) if f.endswith(".json") and f != "manifest.json"):  # added later
        annotations.update(rel.encode())
        annotations.update(open(os.path.join(root, rel), "rb").read())
    return render.hexdigest(), annotations.hexdigest()


def test_train_and_val_are_unchanged_by_the_test_split(tiny_world):
    """Computed with the code *before* the test split existed (commit c4d8189, same digest loop over the files
    of ``ensure_world(WorldSpec(seed=3, image_size=64, num_train=24, num_val=8))``); the whole-file sha1 of
    that world was 9decafa7c94c at the time too. The default world's name, spec and the foundation checkpoints'
    cache keys (which hash ``asdict(spec)``) are pinned as well: changing them makes every developer retrain."""
    spec, _, root = tiny_world
    assert (spec.seed, spec.image_size, spec.num_train, spec.num_val) == (3, 64, 24, 8)
    assert _content_digests(spec, root) == ("37ce98ffb78102f2dfcf0c46da06e7560e78a825",
                                            "50d16f2d4a96c11d98259bf90bdc71920d0e5811")
    default = WorldSpec()
    assert default.folder_name == "shapes-v1-seed0-size128-train2000-val500-obj2to5"
    assert asdict(default) == {"seed": 0, "image_size": 128, "num_train": 2000, "num_val": 500, "min_objects": 2,
                               "max_objects": 5, "layout": "scene"}


def test_test_split_is_held_out_and_deterministic(tmp_path):
    spec = WorldSpec(seed=11, image_size=48, num_train=6, num_val=4)
    a = shapes.ensure_split(spec, "test", str(tmp_path / "a"), num_test=5, workers=1)
    b = shapes.ensure_split(spec, "test", str(tmp_path / "b"), num_test=5, workers=2)
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) == 3 * 5 + 3 + 2  # 3 files per image + 3 json + world.json + manifest.json
    assert os.listdir(tmp_path / "a") == [spec.test_folder_name(5)]  # the train/val world is not generated
    # its own folder, whatever the training-set size
    assert os.path.basename(a) == "shapes-v1-seed11-size48-test5-obj2to5"
    assert WorldSpec(seed=11, image_size=48, num_train=9).test_folder_name(5) == os.path.basename(a)
    # every test image differs from every train and val image (its JPEG file)
    world = ensure_world(spec, str(tmp_path / "a"), workers=1)
    files = lambda r, split: {open(os.path.join(r, "images", split, f), "rb").read()
                               for f in sorted(os.listdir(os.path.join(r, "images", split)))}
    test = files(a, "test")
    assert len(test) == 5
    assert not test & (files(world, "train") | files(world, "val"))
    # more test images keep the first ones
    c = shapes.ensure_split(spec, "test", str(tmp_path / "a"), num_test=7, workers=1)
    first = lambda r: open(os.path.join(r, "sem_seg", "test", "000004.png"), "rb").read()
    assert c != a and first(c) == first(a)


def test_test_split_is_registered_like_val(tiny_world):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    spec, cache, root = tiny_world
    for kind in ("sem_seg", "instance", "panoptic"):
        val, test = MetadataCatalog.get(f"tiny_shapes_{kind}_val"), MetadataCatalog.get(f"tiny_shapes_{kind}_test")
        assert set(test.as_dict()) == set(val.as_dict()) and test.evaluator_type == val.evaluator_type
        assert test.world_root == shapes.split_root(spec, "test", cache, num_test=6) != root
    records = DatasetCatalog.get("tiny_shapes_sem_seg_test")
    assert len(records) == test.num_test == 6  # conftest registers 6 test images
    assert records[0]["sem_seg_file_name"].endswith(os.path.join("sem_seg", "test", "000000.png"))
    assert len(DatasetCatalog.get("tiny_shapes_panoptic_test")) == 6
    assert {r["image_id"] for r in DatasetCatalog.get("tiny_shapes_instance_test")} <= set(range(6))


def test_damaged_test_split_is_reported_naming_the_file(tmp_path):
    from fmwiss_d2.utils.errors import DamagedCacheError

    spec = WorldSpec(seed=11, image_size=32, num_train=2, num_val=2)
    root = shapes.ensure_split(spec, "test", str(tmp_path), num_test=3, workers=1)
    os.remove(os.path.join(root, "sem_seg", "test", "000002.png"))
    with pytest.raises(DamagedCacheError, match=r"test split .* sem_seg/test/000002.png missing.*rm -rf"):
        shapes.ensure_split(spec, "test", str(tmp_path), num_test=3, workers=1)
