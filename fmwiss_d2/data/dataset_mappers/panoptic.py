"""COCO-panoptic records -> model inputs: one binary mask per (non-crowd) segment, with its class."""
import copy
from typing import Dict, List

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from . import DATASET_MAPPER_REGISTRY
from .augmentations import build_augmentations

__all__ = ["PanopticDatasetMapper"]


def _rgb2id(color: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colour -> segment id: ``R + 256 G + 256^2 B``."""
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


class PanopticDatasetMapper:
    """Reads ``file_name`` and ``pan_seg_file_name``; augments both. Output: ``image``, ``instances``
    (``gt_classes`` = contiguous ``category_id``, ``gt_masks`` (M, H, W) bool; crowd segments dropped) and
    ``sem_seg`` (class per pixel, ``ignore_label`` where no segment or crowd)."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[T.Augmentation], image_format: str,
                 ignore_label: int, size_divisibility: int = -1):
        """
        Args:
            is_train: read annotations. augmentations: applied to the image and the segment-id map.
            image_format: detectron2 image format. ignore_label: ``sem_seg`` value of unlabelled pixels.
            size_divisibility: pad to a multiple of this (<= 0: no padding).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train, category_crop=False),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        pan = None
        if self.is_train and "pan_seg_file_name" in dataset_dict:
            pan = _rgb2id(utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")).astype("double")
        aug_input = T.AugInput(image, sem_seg=pan)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        pad = None
        if self.size_divisibility > 0:
            h, w = image.shape[-2:]
            pad = (0, -w % self.size_divisibility, 0, -h % self.size_divisibility)
            image = F.pad(image, pad, value=0)
        dataset_dict["image"] = image
        if pan is None:
            return dataset_dict
        pan = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if pad is not None:
            pan = F.pad(pan, pad, value=0)
        sem_seg = torch.full(pan.shape, self.ignore_label, dtype=torch.int64)
        classes, masks = [], []
        for seg in dataset_dict.pop("segments_info"):
            if seg.get("iscrowd", 0):
                continue
            mask = pan == seg["id"]
            if not mask.any():
                continue
            classes.append(seg["category_id"])
            masks.append(mask)
            sem_seg[mask] = seg["category_id"]
        inst = Instances(tuple(pan.shape))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = torch.stack(masks) if masks else torch.zeros((0, *pan.shape), dtype=torch.bool)
        dataset_dict["instances"] = inst
        dataset_dict["sem_seg"] = sem_seg
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register()
def mask_former_panoptic(cfg, is_train):
    """Panoptic segments as masks + classes (for mask classification)."""
    return PanopticDatasetMapper(cfg, is_train)
