"""Semantic segmentation records -> model inputs (per-pixel labels, and per-class masks for mask classification)."""
import copy
from typing import Dict, List

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from . import DATASET_MAPPER_REGISTRY
from .base import ImageMapperBase, common_mapper_args, read_label_map

__all__ = ["SemanticDatasetMapper", "semantic_to_instances"]


def semantic_to_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """One binary mask per class present in ``sem_seg`` (H, W) (``ignore_label`` excluded):
    ``gt_classes`` (M,) int64 sorted, ``gt_masks`` (M, H, W) bool tensor."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label].long()
    inst = Instances(tuple(sem_seg.shape[-2:]))
    inst.gt_classes = classes
    inst.gt_masks = (sem_seg[None] == classes.view(-1, 1, 1)) if len(classes) else \
        torch.zeros((0, *sem_seg.shape[-2:]), dtype=torch.bool)
    return inst


class SemanticDatasetMapper(ImageMapperBase):
    """Reads ``file_name`` and ``sem_seg_file_name``; applies the augmentations to both; pads to
    ``size_divisibility`` (image with 0, labels with ``ignore_label``). Output: ``image`` (3, H, W) uint8-valued
    float tensor, ``sem_seg`` (H, W) int64, ``height``/``width`` of the record and, when ``with_instances``,
    ``instances`` (see :func:`semantic_to_instances`). An optional ``label_lut`` (old id -> new id, e.g. an
    incremental step's remapping) is applied with one lookup."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int = -1,
        with_instances: bool = True,
        label_lut: List[int] = None,
    ):
        """
        Args:
            is_train: training mode (annotations are read and returned).
            augmentations: applied to image and labels.
            image_format: detectron2 image format ("RGB", "BGR").
            ignore_label: label of ignored pixels.
            size_divisibility: pad to a multiple of this (<= 0: no padding).
            with_instances: also return per-class masks as ``instances``.
            label_lut: optional lookup table applied to the labels (255 maps to itself unless given).
        """
        super().__init__(is_train, augmentations, image_format, size_divisibility, ignore_label)
        self.with_instances = with_instances
        self.label_lut = None
        if label_lut is not None:
            lut = np.full(256, ignore_label, dtype=np.int64)
            lut[: len(label_lut)] = label_lut
            self.label_lut = lut

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, *, with_instances: bool = True):
        return {
            **common_mapper_args(cfg, is_train),
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "with_instances": with_instances,
            # an incremental step's label remapping, defined once by the task (fmwiss_d2/data/datasets/tasks.py)
            "label_lut": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("label_lut") if is_train and cfg.DATASETS.TRAIN
            else None,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict and self.is_train:
            sem_seg = read_label_map(dataset_dict.pop("sem_seg_file_name"), dataset_dict.get("image_id"))
            if self.label_lut is not None:
                sem_seg = self.label_lut[sem_seg]
            sem_seg = sem_seg.astype("double")
        image, sem_seg, _, _ = self.read_augment_pad(dataset_dict, sem_seg, label_fill=self.ignore_label)
        dataset_dict["image"] = image
        if sem_seg is not None:
            dataset_dict["sem_seg"] = sem_seg.long()
            if self.with_instances:
                dataset_dict["instances"] = semantic_to_instances(sem_seg, self.ignore_label)
        return dataset_dict


@DATASET_MAPPER_REGISTRY.register()
def mask_former_semantic(cfg, is_train):
    """Semantic labels + per-class masks (for mask classification)."""
    return SemanticDatasetMapper(cfg, is_train, with_instances=True)


@DATASET_MAPPER_REGISTRY.register()
def per_pixel_semantic(cfg, is_train):
    """Semantic labels only (for per-pixel models)."""
    return SemanticDatasetMapper(cfg, is_train, with_instances=False)
