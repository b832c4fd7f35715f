"""ADE20K SceneParsing (ADEChallengeData2016) with 151 classes: the raw annotations of MiB's protocol.

The raw PNGs hold 0 = "other" (read here as the class "background") and 1..150 the ADE20K-150 classes,
so they are used as they are, with no conversion. detectron2 itself registers ``ade20k_sem_seg_*``
(150 classes, 0 mapped to 255 by its ``prepare_ade20k_sem_seg.py`` into ``annotations_detectron2/``);
those names are left untouched.

Registered names (see ``datasets/README.md``, section "ADE20K")::

    ade20k_151_sem_seg_train   20,210 images   images/training     annotations/training
    ade20k_151_sem_seg_val      2,000 images   images/validation   annotations/validation
"""
import functools
import logging
import os
from typing import Dict, List

from .class_names import ADE20K_151_CLASSES, voc_palette
from .voc import dataset_not_found, sem_seg_records

__all__ = [
    "ADE20K_151_SPLITS",
    "load_ade20k_151_sem_seg",
    "ade20k_151_metadata",
    "register_all_ade",
]

logger = logging.getLogger(__name__)

ADE_SECTION = "ADE20K"
ADE20K_151_SPLITS: Dict[str, str] = {
    "ade20k_151_sem_seg_train": "training",
    "ade20k_151_sem_seg_val": "validation",
}


def load_ade20k_151_sem_seg(root: str, split: str = "training") -> List[dict]:
    """Dataset dicts of ``root/ADEChallengeData2016/{images,annotations}/<split>`` ("training" or "validation").

    Every ``*.jpg`` of the image folder is listed (sorted) and paired with the PNG of the same stem;
    ``image_id`` is the stem (``ADE_train_00000001``).
    """
    base = os.path.join(root, "ADEChallengeData2016")
    image_dir = os.path.join(base, "images", split)
    mask_dir = os.path.join(base, "annotations", split)
    if not os.path.isdir(image_dir):
        raise dataset_not_found(image_dir, ADE_SECTION)
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".jpg"))
    records = sem_seg_records(image_dir, mask_dir, ids, section=ADE_SECTION)
    logger.info("Loaded %d images of ADE20K '%s' from %s", len(records), split, base)
    return records


def ade20k_151_metadata() -> dict:
    """151 classes ("background" = ADE's "other" first), VOC-style colours, ignore 255."""
    return {
        "stuff_classes": list(ADE20K_151_CLASSES),
        "stuff_colors": [list(c) for c in voc_palette(len(ADE20K_151_CLASSES))],
        "ignore_label": 255,
        "evaluator_type": "sem_seg",
    }


def register_all_ade(root: str) -> None:
    """Register ``ade20k_151_sem_seg_{train,val}`` under the datasets root ``root`` (lazily)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, split in ADE20K_151_SPLITS.items():
        DatasetCatalog.register(name, functools.partial(load_ade20k_151_sem_seg, root, split))
        MetadataCatalog.get(name).set(**ade20k_151_metadata())

