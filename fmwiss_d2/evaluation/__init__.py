"""Evaluators, chosen by name through ``TEST.EVALUATOR_TYPES`` (default: the dataset's ``evaluator_type``).

A registered entry is called as ``builder(cfg, dataset_name, output_folder)`` and returns a
``DatasetEvaluator``. Built-in entries wrap detectron2's own evaluators; project evaluators subclass them.
"""
from typing import List

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils.registry import Registry

from ..utils.errors import registry_get

from .table import format_metrics_table

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = "Evaluators, called with (cfg, dataset_name, output_folder)."

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator", "evaluator_types", "format_metrics_table"]


@EVALUATOR_REGISTRY.register()
def sem_seg(cfg, dataset_name, output_folder):
    """mIoU, fwIoU, mACC, pACC (detectron2's SemSegEvaluator; classes and ignore_label from the metadata)."""
    return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)


@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name, output_folder):
    """COCO box/mask AP (detectron2's COCOEvaluator)."""
    return COCOEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                         max_dets_per_image=cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_IMAGE)


@EVALUATOR_REGISTRY.register()
def coco_panoptic_seg(cfg, dataset_name, output_folder):
    """PQ, SQ, RQ (detectron2's COCOPanopticEvaluator, official panopticapi code)."""
    return COCOPanopticEvaluator(dataset_name, output_folder)


def evaluator_types(cfg, dataset_name: str) -> List[str]:
    """``cfg.TEST.EVALUATOR_TYPES`` if set, else the dataset's ``evaluator_type``."""
    if cfg.TEST.EVALUATOR_TYPES:
        return list(cfg.TEST.EVALUATOR_TYPES)
    return [MetadataCatalog.get(dataset_name).evaluator_type]


def build_evaluator(cfg, dataset_name: str, output_folder: str):
    evaluators = [registry_get(EVALUATOR_REGISTRY, t, "TEST.EVALUATOR_TYPES")(cfg, dataset_name, output_folder) for t in evaluator_types(cfg, dataset_name)]
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


from . import incremental  # noqa: E402,F401  (registers "incremental_sem_seg")
from . import zero_shot  # noqa: E402,F401  (registers "zero_shot_sem_seg", "zero_shot_panoptic", "zero_shot_instance")
