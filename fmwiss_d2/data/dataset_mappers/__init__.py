"""Dataset mappers (dataset record -> model input), chosen by name through ``INPUT.DATASET_MAPPER_NAME``.

A registered entry is called as ``builder(cfg, is_train)`` and returns a callable mapper (usually a class
with ``@configurable``). The trainer never branches on the mapper's kind.
"""
from detectron2.utils.registry import Registry

from ...utils.errors import registry_get

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = "Dataset mappers, called with (cfg, is_train)."


def build_dataset_mapper(cfg, is_train: bool, name: str = ""):
    """The mapper named ``name`` (default ``cfg.INPUT.DATASET_MAPPER_NAME``; for training with
    ``INPUT.SUPERVISION image``, the image-label mapper, which never opens a mask)."""
    if not name and is_train and cfg.INPUT.SUPERVISION == "image":
        name = "image_labels"
    return registry_get(DATASET_MAPPER_REGISTRY, name or cfg.INPUT.DATASET_MAPPER_NAME, "INPUT.DATASET_MAPPER_NAME")(
        cfg, is_train)


from .augmentations import build_augmentations  # noqa: E402
from .instance import InstanceDatasetMapper  # noqa: E402
from .panoptic import PanopticDatasetMapper  # noqa: E402
from .semantic import SemanticDatasetMapper  # noqa: E402
from .weak import ImageLabelDatasetMapper  # noqa: E402

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_dataset_mapper",
    "build_augmentations",
    "SemanticDatasetMapper",
    "PanopticDatasetMapper",
    "InstanceDatasetMapper",
    "ImageLabelDatasetMapper",
]
