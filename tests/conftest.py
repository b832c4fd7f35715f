"""Shared fixtures: a tiny synthetic world generated once per test session in a temporary cache."""
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("FMWISS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "tests"))


@pytest.fixture(scope="session")
def tiny_spec():
    from fmwiss_d2.data.datasets.shapes import WorldSpec

    return WorldSpec(seed=3, image_size=64, num_train=24, num_val=8)


@pytest.fixture(scope="session")
def tiny_world(tiny_spec, tmp_path_factory):
    """(spec, cache_dir, root) of a tiny world registered as ``tiny_shapes_*`` (6 test images)."""
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.datasets.shapes import ensure_world, register_shapes

    cache = str(tmp_path_factory.mktemp("world"))
    root = ensure_world(tiny_spec, cache, workers=1)
    if "tiny_shapes_sem_seg_train" not in DatasetCatalog.list():
        register_shapes("tiny_shapes", tiny_spec, cache, num_test=6)
    return tiny_spec, cache, root


HANDMADE_CLASSES = ["background", "a", "b", "c", "d"]
# image -> classes painted in its mask (besides background); hand-chosen to separate the rules
HANDMADE_IMAGES = {0: {"a"}, 1: {"a", "c"}, 2: {"c"}, 3: {"c", "d"}, 4: {"d", "b"}, 5: set(), 6: {"b"}}


@pytest.fixture(scope="session")
def handmade(tmp_path_factory):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = tmp_path_factory.mktemp("handmade")
    records = []
    for i, present in HANDMADE_IMAGES.items():
        mask = np.zeros((8, 8), np.uint8)
        for k, name in enumerate(sorted(present)):
            mask[k * 3 : k * 3 + 2, 1:5] = HANDMADE_CLASSES.index(name)
        mask[7, :] = 255  # a border band
        fn = str(root / f"{i}.png")
        Image.fromarray(mask).save(fn)
        records.append({"file_name": fn, "sem_seg_file_name": fn, "height": 8, "width": 8, "image_id": i})
    for split in ("train", "val"):
        name = f"handmade_{split}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda: [dict(r) for r in records])
            MetadataCatalog.get(name).set(stuff_classes=HANDMADE_CLASSES, ignore_label=255, evaluator_type="sem_seg")
    return records


TINY_ZS_UNSEEN = ["star", "hexagon", "heart", "sand"]  # 3 things + 1 stuff class of the world, as shapes_zs


@pytest.fixture(scope="session")
def tiny_zs_split(tiny_world):
    """The zero-shot split ``tiny_zs`` of the tiny world's panoptic datasets (unseen: TINY_ZS_UNSEEN)."""
    from fmwiss_d2.data.datasets.zero_shot import register_zero_shot_split

    return register_zero_shot_split("tiny_zs", {
        "train": "tiny_shapes_panoptic_train",
        "val": {"val": "tiny_shapes_panoptic_val", "test": "tiny_shapes_panoptic_test"},
        "unseen": TINY_ZS_UNSEEN})

