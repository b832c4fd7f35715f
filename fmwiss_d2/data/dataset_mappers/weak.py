"""Weakly supervised records -> model inputs: the image and its image-level labels, nothing read from a mask."""
import copy
from typing import Dict, List

import torch

from detectron2.config import configurable
from detectron2.data import transforms as T

from . import DATASET_MAPPER_REGISTRY
from .base import ImageMapperBase, common_mapper_args

__all__ = ["ImageLabelDatasetMapper"]


class ImageLabelDatasetMapper(ImageMapperBase):
    """Reads ``file_name`` only and augments it (a class-aware crop needs a mask, so crops are plain random
    crops). Output: ``image`` and ``image_labels`` (int64 model ids, background excluded). Mask fields of the
    record (``sem_seg_file_name``, ``pan_seg_file_name``, ``annotations``, ``segments_info``) are dropped
    unread, so a weak step cannot learn from a mask by accident."""

    MASK_FIELDS = ("sem_seg_file_name", "pan_seg_file_name", "annotations", "segments_info")

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[T.Augmentation], image_format: str,
                 size_divisibility: int = -1):
        super().__init__(is_train, augmentations, image_format, size_divisibility)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return common_mapper_args(cfg, is_train, category_crop=False)

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = {k: v for k, v in dataset_dict.items() if k not in self.MASK_FIELDS}
        dataset_dict = copy.deepcopy(dataset_dict)
        if "image_labels" not in dataset_dict:
            raise KeyError(f"record of {dataset_dict.get('file_name')} has no 'image_labels'; a weakly supervised "
                           "run reads them from the dataset (INPUT.SUPERVISION image, see training_records)")
        image, _, _, _ = self.read_augment_pad(dataset_dict)
        dataset_dict["image"] = image
        dataset_dict["image_labels"] = torch.as_tensor(dataset_dict["image_labels"], dtype=torch.int64)
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register()
def image_labels(cfg, is_train):
    """Image + image-level labels (weak supervision: INPUT.SUPERVISION image)."""
    return ImageLabelDatasetMapper(cfg, is_train)
