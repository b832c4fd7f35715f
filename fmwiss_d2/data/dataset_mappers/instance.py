"""COCO-instance records -> model inputs: one binary mask per (non-crowd) instance."""
import copy
from typing import Dict, List

import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from . import DATASET_MAPPER_REGISTRY
from .base import ImageMapperBase, common_mapper_args

__all__ = ["InstanceDatasetMapper"]


class InstanceDatasetMapper(ImageMapperBase):
    """Reads ``file_name`` and ``annotations`` (polygons or RLE); augments both. Output: ``image`` and
    ``instances`` with ``gt_classes`` and ``gt_masks`` (M, H, W) bool (crowd and empty instances dropped)."""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[T.Augmentation], image_format: str,
                 size_divisibility: int = -1):
        """
        Args:
            is_train: read annotations. augmentations: applied to the image and the masks.
            image_format: detectron2 image format. size_divisibility: pad to a multiple of this (<= 0: none).
        """
        super().__init__(is_train, augmentations, image_format, size_divisibility)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return common_mapper_args(cfg, is_train, category_crop=False)

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, _, transforms, (h, w) = self.read_augment_pad(dataset_dict)
        pad = None
        if self.size_divisibility > 0:
            pad = (0, -w % self.size_divisibility, 0, -h % self.size_divisibility)
        dataset_dict["image"] = image
        annos = dataset_dict.pop("annotations", None)
        if not self.is_train or annos is None:
            return dataset_dict
        annos = [
            utils.transform_instance_annotations(a, transforms, (h, w))
            for a in annos if a.get("iscrowd", 0) == 0
        ]
        inst = utils.annotations_to_instances(annos, (h, w), mask_format="bitmask")
        masks = inst.gt_masks.tensor if len(annos) else torch.zeros((0, h, w), dtype=torch.bool)
        keep = masks.flatten(1).any(1)
        masks, classes = masks[keep], inst.gt_classes[keep]
        if pad is not None:
            masks = F.pad(masks, pad, value=False)
        out = Instances(tuple(masks.shape[-2:]) if pad is not None else (h, w))
        out.gt_classes = classes
        out.gt_masks = masks
        dataset_dict["instances"] = out
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register()
def mask_former_instance(cfg, is_train):
    """Instance masks + classes (for mask classification)."""
    return InstanceDatasetMapper(cfg, is_train)
