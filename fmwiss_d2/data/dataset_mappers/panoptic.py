"""COCO-panoptic records -> model inputs: one binary mask per (non-crowd) segment, with its class."""
import copy
from typing import Dict, List

import torch

from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..datasets.coco import rgb_to_panoptic_id
from . import DATASET_MAPPER_REGISTRY
from .base import ImageMapperBase, common_mapper_args, read_image_file

__all__ = ["PanopticDatasetMapper"]


class PanopticDatasetMapper(ImageMapperBase):
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
        super().__init__(is_train, augmentations, image_format, size_divisibility, ignore_label)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {**common_mapper_args(cfg, is_train, category_crop=False),
                "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE}

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        pan = None
        if self.is_train and "pan_seg_file_name" in dataset_dict:
            rgb = read_image_file(dataset_dict.pop("pan_seg_file_name"), "RGB", dataset_dict.get("image_id"))
            pan = rgb_to_panoptic_id(rgb).astype("double")
        image, pan, _, _ = self.read_augment_pad(dataset_dict, pan, label_fill=0)  # segment id 0: no segment
        dataset_dict["image"] = image
        if pan is None:
            return dataset_dict
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
