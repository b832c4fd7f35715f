"""What every mapper does first: read the image, augment it together with a per-pixel label map, pad both.

Files are read through :func:`read_image_file` / :func:`read_label_map`, so that a missing, truncated or
corrupt file raises :class:`ImageReadError` naming it and its record, not a bare PIL error from a worker.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ...utils.errors import DamagedCacheError
from .augmentations import build_augmentations


class ImageReadError(DamagedCacheError):
    """An image or label file of a dataset record cannot be read; the message names the file and the record."""


def read_image_file(path: str, format: Optional[str] = None, record_id=None) -> np.ndarray:
    """``detection_utils.read_image(path, format)``; PIL and OS failures raise :class:`ImageReadError` naming
    ``path`` and ``record_id``."""
    try:
        return utils.read_image(path, format=format)
    except (OSError, SyntaxError) as e:  # PIL: OSError (missing, truncated, unidentified), SyntaxError (broken PNG)
        raise ImageReadError(
            f"cannot read {path!r} (dataset record {record_id!r}): {e}. The file is missing, truncated or not an "
            "image: regenerate the dataset (for the synthetic world, delete its folder; it is generated again) "
            "or check the dataset's files."
        ) from e


def read_label_map(path: str, record_id=None) -> np.ndarray:
    """A label PNG (semantic mask) as an int64 (H, W) array; of a multi-channel file, the first channel."""
    labels = read_image_file(path, record_id=record_id).astype("int64")
    return labels[..., 0] if labels.ndim == 3 else labels


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
        image = read_image_file(dataset_dict["file_name"], self.image_format, dataset_dict.get("image_id"))
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
