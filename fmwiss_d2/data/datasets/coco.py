"""COCO 2017 as a semantic "things" dataset (81 classes), the COCO side of the COCO-to-VOC protocol.

detectron2 already registers the instance (``coco_2017_{train,val}``) and panoptic
(``coco_2017_{train,val}_panoptic*``) views of the same ``coco/`` folder; they are not re-registered.
This module adds

    coco_2017_things_sem_seg_train   118,287 images   train2017/   things_sem_seg_train2017/
    coco_2017_things_sem_seg_val       5,000 images   val2017/     things_sem_seg_val2017/

whose masks are written by ``datasets/prepare_coco_things_semantic.py`` from the panoptic annotations
with :func:`panoptic_to_things_sem_seg`: the 80 thing classes -> 1..80 (COCO_THING_CLASSES order),
every stuff class -> 0 (background), unlabeled pixels (panoptic id 0) -> 255 (ignore); and COCO-Stuff 164k,
the 171-class semantic view PADing's zero-shot semantic split is defined on (the names Mask2Former uses):

    coco_2017_train_stuff_sem_seg    118,287 images   train2017/   stuffthingmaps_detectron2/train2017/
    coco_2017_test_stuff_sem_seg       5,000 images   val2017/     stuffthingmaps_detectron2/val2017/

whose masks ``datasets/prepare_coco_stuff_semantic.py`` writes from COCO-Stuff's ``stuffthingmaps_trainval2017``
(pixel = COCO id - 1) with :func:`coco_stuff_lut`: the 171 classes -> 0..170 (COCO_STUFF_171_CLASSES order),
unlabeled -> 255. See ``datasets/README.md``, section "COCO".
"""
import functools
import logging
import os
from typing import Dict, Iterable, List, Mapping

import numpy as np

from .class_names import (COCO_STUFF_171_CLASSES, COCO_STUFF_171_IDS, COCO_THING_CLASSES, COCO_THING_IDS,
                          COCO_THINGS_SEM_SEG_CLASSES)
from .voc import dataset_not_found, sem_seg_records

__all__ = [
    "COCO_THINGS_SEM_SEG_SPLITS",
    "load_coco_things_sem_seg",
    "coco_things_sem_seg_metadata",
    "register_all_coco",
    "things_sem_seg_dir",
    "things_category_to_label",
    "rgb_to_panoptic_id",
    "panoptic_to_things_sem_seg",
    "COCO_STUFF_SEM_SEG_SPLITS",
    "coco_stuff_lut",
    "stuff_sem_seg_dir",
    "load_coco_stuff_sem_seg",
    "coco_stuff_sem_seg_metadata",
]

logger = logging.getLogger(__name__)

COCO_SECTION = "COCO"
IGNORE_LABEL = 255
COCO_THINGS_SEM_SEG_SPLITS: Dict[str, str] = {
    "coco_2017_things_sem_seg_train": "train",
    "coco_2017_things_sem_seg_val": "val",
}


# detectron2-style names (Mask2Former's): "test" is COCO's val2017, as in its COCO-Stuff registration
COCO_STUFF_SEM_SEG_SPLITS: Dict[str, str] = {
    "coco_2017_train_stuff_sem_seg": "train",
    "coco_2017_test_stuff_sem_seg": "val",
}


def stuff_sem_seg_dir(root: str, split: str) -> str:
    """Where the COCO-Stuff masks of ``split`` live: ``root/coco/stuffthingmaps_detectron2/<split>2017``."""
    return os.path.join(root, "coco", "stuffthingmaps_detectron2", f"{split}2017")


def coco_stuff_lut() -> np.ndarray:
    """256-entry lookup table from a ``stuffthingmaps`` pixel (COCO category id - 1; 255 unlabeled) to its
    COCO-Stuff-171 label (0..170); the 11 ids COCO never annotated, and 255, map to 255 (ignore)."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label, cat_id in enumerate(COCO_STUFF_171_IDS):
        lut[cat_id - 1] = label
    return lut


def things_sem_seg_dir(root: str, split: str) -> str:
    """Where the masks of ``split`` ("train" or "val") live: ``root/coco/things_sem_seg_<split>2017``."""
    return os.path.join(root, "coco", f"things_sem_seg_{split}2017")


# ----------------------------------------------------------------------------------------------
# Panoptic -> semantic "things" conversion (used by datasets/prepare_coco_things_semantic.py)
# ----------------------------------------------------------------------------------------------
def things_category_to_label(categories: Iterable[Mapping]) -> Dict[int, int]:
    """Map the COCO category id of each panoptic category to its "things" semantic label.

    Thing categories go to 1..80 by their position in ``COCO_THING_IDS``; stuff categories go to 0.
    Raises ``ValueError`` if a thing category is not one of the 80 standard ones (id and name).
    """
    position = {cat_id: i for i, cat_id in enumerate(COCO_THING_IDS)}
    mapping = {}
    for cat in categories:
        if cat.get("isthing", 0):
            i = position.get(cat["id"])
            if i is None or cat.get("name", COCO_THING_CLASSES[i]) != COCO_THING_CLASSES[i]:
                raise ValueError(f"unexpected COCO thing category {cat!r}")
            mapping[cat["id"]] = i + 1
        else:
            mapping[cat["id"]] = 0
    return mapping


def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colour (H, W, 3) -> segment id ``R + 256 G + 256^2 B`` (H, W) as int64."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def panoptic_to_things_sem_seg(
    panoptic_rgb: np.ndarray,
    segments_info: Iterable[Mapping],
    category_to_label: Mapping[int, int],
    *,
    crowd_ignore: bool = False,
) -> np.ndarray:
    """Semantic "things" mask (uint8) of one panoptic annotation.

    Each segment gets ``category_to_label[category_id]``; crowd segments get 255 when ``crowd_ignore``
    (by default they keep their class); segment id 0 (unlabeled) and ids absent from ``segments_info``
    get 255.
    """
    ids = rgb_to_panoptic_id(panoptic_rgb)
    label_of_segment = {0: IGNORE_LABEL}
    for segment in segments_info:
        category = segment["category_id"]
        if category not in category_to_label:
            raise ValueError(f"segment {segment['id']} has unknown category id {category}")
        label = category_to_label[category]
        if crowd_ignore and segment.get("iscrowd", 0):
            label = IGNORE_LABEL
        label_of_segment[int(segment["id"])] = label
    return label_segments(ids, label_of_segment)


def label_segments(segment_ids: np.ndarray, label_of_segment: Mapping[int, int]) -> np.ndarray:
    """uint8 mask giving each pixel its segment's label (255 for ids absent from ``label_of_segment``):
    one ``np.unique`` plus a lookup table, no per-pixel Python."""
    unique_ids, inverse = np.unique(segment_ids, return_inverse=True)
    lut = np.array([label_of_segment.get(int(i), IGNORE_LABEL) for i in unique_ids], dtype=np.uint8)
    return lut[inverse].reshape(segment_ids.shape)


# ----------------------------------------------------------------------------------------------
# Loading and registration
# ----------------------------------------------------------------------------------------------
def _coco_image_id(stem: str):
    return int(stem) if stem.isdigit() else stem


def _load_mask_folder(root: str, split: str, mask_dir: str, script: str, what: str) -> List[dict]:
    """Every ``mask_dir/<stem>.png`` paired with ``root/coco/<split>2017/<stem>.jpg`` (``image_id``: the COCO
    integer id); a missing folder names the README section, and for the masks the script that makes them."""
    image_dir = os.path.join(root, "coco", f"{split}2017")
    if not os.path.isdir(image_dir):
        raise dataset_not_found(image_dir, COCO_SECTION)
    if not os.path.isdir(mask_dir):
        raise dataset_not_found(mask_dir, COCO_SECTION, hint=f"Create it with datasets/{script}.")
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(mask_dir) if f.endswith(".png"))
    records = sem_seg_records(image_dir, mask_dir, ids, section=COCO_SECTION, image_id=_coco_image_id)
    logger.info("Loaded %d images of %s '%s' from %s", len(records), what, split, mask_dir)
    return records


def load_coco_things_sem_seg(root: str, split: str = "train") -> List[dict]:
    """Dataset dicts of the COCO 2017 "things" semantic view (``split`` is "train" or "val"): the masks of
    ``root/coco/things_sem_seg_<split>2017/``."""
    return _load_mask_folder(root, split, things_sem_seg_dir(root, split), "prepare_coco_things_semantic.py",
                             "COCO 2017 things")


def coco_things_sem_seg_metadata() -> dict:
    """81 classes (background + 80 things), detectron2's COCO thing colours, ignore 255."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    color = {c["id"]: list(c["color"]) for c in COCO_CATEGORIES if c["isthing"]}
    return {
        "stuff_classes": list(COCO_THINGS_SEM_SEG_CLASSES),
        "stuff_colors": [[0, 0, 0]] + [color[i] for i in COCO_THING_IDS],
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": "sem_seg",
    }


def load_coco_stuff_sem_seg(root: str, split: str = "train") -> List[dict]:
    """Dataset dicts of COCO-Stuff 164k (171 classes; ``split`` "train" or "val"): the masks of
    :func:`stuff_sem_seg_dir`."""
    return _load_mask_folder(root, split, stuff_sem_seg_dir(root, split), "prepare_coco_stuff_semantic.py",
                             "COCO-Stuff")


def coco_stuff_sem_seg_metadata() -> dict:
    """171 classes (no background class: every pixel of COCO-Stuff is a thing or a stuff), ignore 255;
    detectron2's colours for the things, a fixed pseudo-random palette for the stuff."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    color = {c["id"]: list(c["color"]) for c in COCO_CATEGORIES if c["isthing"]}
    rng = np.random.RandomState(171)
    stuff_colors = rng.randint(0, 256, size=(len(COCO_STUFF_171_CLASSES) - len(COCO_THING_IDS), 3)).tolist()
    return {
        "stuff_classes": list(COCO_STUFF_171_CLASSES),
        "stuff_colors": [color[i] for i in COCO_THING_IDS] + stuff_colors,
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": "sem_seg",
    }


def register_all_coco(root: str) -> None:
    """Register ``coco_2017_things_sem_seg_{train,val}`` and ``coco_2017_{train,test}_stuff_sem_seg`` under the
    datasets root ``root`` (lazily: nothing is read until a dataset is loaded)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, split in COCO_THINGS_SEM_SEG_SPLITS.items():
        DatasetCatalog.register(name, functools.partial(load_coco_things_sem_seg, root, split))
        MetadataCatalog.get(name).set(**coco_things_sem_seg_metadata())
    for name, split in COCO_STUFF_SEM_SEG_SPLITS.items():
        if name in DatasetCatalog.list():  # another package (e.g. Mask2Former's) already registered it
            continue
        DatasetCatalog.register(name, functools.partial(load_coco_stuff_sem_seg, root, split))
        MetadataCatalog.get(name).set(**coco_stuff_sem_seg_metadata())
