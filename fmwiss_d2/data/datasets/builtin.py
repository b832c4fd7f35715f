"""Registers every built-in dataset and incremental task.

Registration only records names and loader functions: nothing is read or generated until a dataset is
loaded, so a missing real dataset never fails at import (it fails, clearly, when it is first used).
Real datasets are found under ``$DETECTRON2_DATASETS`` (default ``./datasets``), as in detectron2.
"""
import os

from .ade import register_all_ade
from .coco import register_all_coco
from .shapes import register_shapes
from .tasks import register_builtin_tasks
from .voc import register_all_voc
from .zero_shot import register_builtin_zero_shot_splits

_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))

register_shapes("shapes")
register_all_voc(_root)
register_all_ade(_root)
register_all_coco(_root)
register_builtin_tasks()
register_builtin_zero_shot_splits()
