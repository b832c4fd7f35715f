"""What every mapper does first: read the image, augment it together with a per-pixel label map, pad both."""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .augmentations import build_augmentations


def common_mapper_args(cfg, is_train: bool, *, category_crop: bool = True) -> Dict:
    """The ``from_config`` arguments every mapper takes (``category_crop``: see :func:`build_augmentations`)."""
    return {
        "is_train": is_train,
        "augmentations": build_augmentations(cfg, is_train, category_crop=category_crop),
        "image_format": cfg.INPUT.FORMAT,
        "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
    }


class ImageMapperBase:
    """Holds the settings shared by the semantic, panoptic and instance mappers; subclasses add their labels."""

    def __init__(self, is_train: bool, augmentations: List[T.Augmentation], image_format: str,
                 size_divisibility: int = -1, ignore_label: int = 255):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.size_divisibility = size_divisibility
        self.ignore_label = ignore_label

    def read_augment_pad(self, dataset_dict: Dict, label_map: Optional[np.ndarray] = None, label_fill: int = 0
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor], T.TransformList, Tuple[int, int]]:
        """``(image (3, H, W), label map (H, W) int64 or None, transforms, (h, w) before padding)``.

        ``label_map`` (float array: resizing needs one; nearest interpolation keeps integers exact) gets the
        image's geometric augmentations and is padded with ``label_fill``; the image is padded with 0 up to a
        multiple of ``size_divisibility``."""
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image, sem_seg=label_map)
        transforms = self.augmentations(aug_input)
        h, w = aug_input.image.shape[:2]
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        labels = None if label_map is None else torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if self.size_divisibility > 0:
            pad = (0, -w % self.size_divisibility, 0, -h % self.size_divisibility)
            image = F.pad(image, pad, value=0)
            if labels is not None:
                labels = F.pad(labels, pad, value=label_fill)
        return image, labels, transforms, (h, w)
