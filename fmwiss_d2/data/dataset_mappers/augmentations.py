"""Augmentations from the config (resize / crop / colour / flip), shared by every mapper."""
from typing import List

from detectron2.data import transforms as T
from detectron2.projects.point_rend.color_augmentation import ColorAugSSDTransform


def build_augmentations(cfg, is_train: bool, *, category_crop: bool = True) -> List[T.Augmentation]:
    """Training: ``ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN)``, a crop (``INPUT.CROP``; with
    ``category_crop`` the crop is retried while one class covers more than ``SINGLE_CATEGORY_MAX_AREA``),
    SSD colour distortion (``INPUT.COLOR_AUG_SSD``), horizontal flip. Test: ``ResizeShortestEdge(MIN_SIZE_TEST)``."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        if category_crop:
            augs.append(T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            ))
        else:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs
