"""One incremental step as an ordinary detectron2 training.

``configure_step(cfg)`` turns ``INCREMENTAL.{TASK,SETTING,STEP,TRANSFORM}`` into the usual keys (datasets,
classifier groups, output folder, previous weights, step learning rate, supervision); :func:`build_old_model`
loads the frozen previous-step model a method asks for; :class:`IncrementalCheckpointer` stamps every checkpoint
with its task, step and classes and refuses one from another task or step. Without ``INCREMENTAL.TASK`` all of
this is a no-op and a run is an ordinary training.
"""
from __future__ import annotations

import logging
import math
import os

import torch

from ..data.datasets.tasks import get_task_transform, resolve_task
from ..utils.errors import CheckpointMismatchError, UserError
from .checkpoint import AtomicCheckpointer

logger = logging.getLogger("fmwiss_d2")


def run_task(cfg):
    """``(task, step)`` this run trains: the (transformed) task and step, or ``(None, 0)`` without a task."""
    inc = cfg.INCREMENTAL
    if not inc.TASK:
        return None, 0
    task = resolve_task(inc.TASK)
    transform = get_task_transform(inc.TRANSFORM)
    return transform.train_task(task), transform.train_step(task, inc.STEP)


def configure_step(cfg, eval_only: bool = False):
    """Fills the step-specific keys from ``INCREMENTAL.*`` (no-op when ``INCREMENTAL.TASK`` is empty).

    For training, steps >= 1 start from ``INCREMENTAL.PREVIOUS_WEIGHTS`` and, with
    ``INCREMENTAL.NEW_CLASS_LABELS image``, learn from image-level labels only (``INPUT.SUPERVISION image``);
    for evaluation, an empty ``MODEL.WEIGHTS`` means the step's own final model."""
    inc = cfg.INCREMENTAL
    if not inc.TASK:
        return cfg
    task = resolve_task(inc.TASK)
    if inc.SETTING not in task.settings:
        raise ValueError(f"INCREMENTAL.SETTING '{inc.SETTING}' is not run for task '{task.name}'; "
                         f"choose one of {list(task.settings)}")
    if inc.NEW_CLASS_LABELS not in ("pixel", "image"):
        raise ValueError(f"INCREMENTAL.NEW_CLASS_LABELS must be 'pixel' or 'image', not '{inc.NEW_CLASS_LABELS}'")
    step = inc.STEP
    task.check_step(step)
    transform = get_task_transform(inc.TRANSFORM)
    train_task, train_step = transform.train_task(task), transform.train_step(task, step)
    root = cfg.OUTPUT_DIR
    groups = [len(s.classes) for s in train_task.steps[: train_step + 1]]
    cfg.DATASETS.TRAIN = (train_task.dataset_name(inc.SETTING, train_step, "train"),)
    cfg.DATASETS.TEST = tuple(task.dataset_name(inc.SETTING, step, s) for s, _ in task.steps[step].val)
    cfg.MODEL.CLASSES_PER_STEP = groups
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = sum(groups)
    cfg.OUTPUT_DIR = os.path.join(root, transform.folder(step))
    if eval_only:
        cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        return cfg
    epochs = inc.STEP_EPOCHS if train_step > 0 and inc.STEP_EPOCHS > 0 else inc.EPOCHS
    if epochs > 0:  # MiB trains each step for a number of epochs of that step's (filtered) data
        from detectron2.data import DatasetCatalog

        n = len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))
        cfg.SOLVER.MAX_ITER = max(1, math.ceil(epochs * n / cfg.SOLVER.IMS_PER_BATCH))
    if train_step > 0:
        if inc.STEP_BASE_LR > 0:
            cfg.SOLVER.BASE_LR = inc.STEP_BASE_LR
        if inc.STEP_MAX_ITER > 0 and epochs <= 0:
            cfg.SOLVER.MAX_ITER = inc.STEP_MAX_ITER
        if inc.NEW_CLASS_LABELS == "image":
            cfg.INPUT.SUPERVISION = "image"
        _previous_weights(cfg, root, step)
    return cfg


def _stamp_of(path: str):
    """The incremental stamp of a checkpoint file, or None (not a file of this project, or unreadable)."""
    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False).get("incremental")
    except Exception:  # noqa: BLE001 - a damaged file is reported when it is loaded
        return None


def _previous_weights(cfg, root: str, step: int) -> None:
    """Step ``step`` >= 1 starts from the previous step's final model: ``INCREMENTAL.PREVIOUS_WEIGHTS``, else a
    ``MODEL.WEIGHTS`` that is an incremental checkpoint (checked to be the previous step of this task when
    loaded), else ``OUTPUT_DIR/step{k-1}/model_final.pth``. A ``MODEL.WEIGHTS`` that is none of these (e.g. the
    base config's ImageNet backbone) is not used at this step, and the log says so."""
    inc = cfg.INCREMENTAL
    user = cfg.MODEL.WEIGHTS
    if not inc.PREVIOUS_WEIGHTS:
        if user and _stamp_of(user) is not None:
            inc.PREVIOUS_WEIGHTS = user
        else:
            inc.PREVIOUS_WEIGHTS = os.path.join(root, f"step{step - 1}", "model_final.pth")
    if user and user != inc.PREVIOUS_WEIGHTS:
        logger.warning("MODEL.WEIGHTS %s is not used at step %d: a step >= 1 starts from the previous step's final "
                       "model, INCREMENTAL.PREVIOUS_WEIGHTS = %s", user, step, inc.PREVIOUS_WEIGHTS)
    cfg.MODEL.WEIGHTS = inc.PREVIOUS_WEIGHTS


def check_previous_weights(cfg) -> None:
    """Before a step >= 1 trains: its previous step's final model must exist (named error otherwise)."""
    _, step = run_task(cfg)
    path = cfg.INCREMENTAL.PREVIOUS_WEIGHTS
    if step > 0 and not os.path.isfile(path):
        raise UserError(f"step {step} starts from the final model of step {step - 1}, but "
                        f"INCREMENTAL.PREVIOUS_WEIGHTS '{path}' does not exist: run step {step - 1} first "
                        "(tools/run_incremental.py runs every step) or set INCREMENTAL.PREVIOUS_WEIGHTS.")


def step_identity(cfg) -> dict | None:
    """What a checkpoint of this run is stamped with (None without a task)."""
    task, step = run_task(cfg)
    if task is None:
        return None
    return {"task": task.name, "step": step, "classes": task.seen_classes(step)}


def allowed_steps(cfg) -> set:
    """Steps whose checkpoints a training run may load: its own (resume) and the previous one (start)."""
    _, step = run_task(cfg)
    return {step, step - 1} if step > 0 else {0}


class MethodState:
    """The checkpoint entry ``"method"``: a method's own trainable parts (its model is saved as ``"model"``)."""

    def __init__(self, method):
        self.method = method

    def state_dict(self):
        return self.method.own_state_dict()

    def load_state_dict(self, state):
        self.method.load_own_state_dict(state)


class IncrementalCheckpointer(AtomicCheckpointer):
    """An :class:`AtomicCheckpointer` that stamps checkpoints with ``identity`` and checks what it loads.

    ``identity`` None (a run without a task) stamps and checks nothing. ``allowed_steps``: the steps whose
    checkpoints may be loaded (the previous step's final model to start a step, the step's own checkpoints to
    resume it). A checkpoint without a stamp (e.g. pretrained backbone weights) is accepted only at step 0.
    """

    def __init__(self, model, save_dir="", *, identity: dict | None, allowed_steps=(0,), **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.identity = identity
        self.allowed_steps = set(allowed_steps)
        self.loaded_step = None
        self._path = None

    def save(self, name, **kwargs):
        if self.identity is not None:
            kwargs.setdefault("incremental", self.identity)
        super().save(name, **kwargs)

    def load(self, path, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        stamp = checkpoint.get("incremental")
        want = self.identity
        where = f"Checkpoint '{self._path}'"
        if want is None:
            pass
        elif stamp is None:
            if want["step"] != 0:
                raise CheckpointMismatchError(
                    f"{where} was not written by an incremental step, but step {want['step']} of task "
                    f"'{want['task']}' must start from the final model of step {want['step'] - 1} "
                    "(set INCREMENTAL.PREVIOUS_WEIGHTS, or run the previous step first)."
                )
        else:
            if stamp["task"] != want["task"]:
                raise CheckpointMismatchError(
                    f"{where} belongs to task '{stamp['task']}' (step {stamp['step']}), not to task "
                    f"'{want['task']}'. Use another OUTPUT_DIR or point MODEL.WEIGHTS / "
                    "INCREMENTAL.PREVIOUS_WEIGHTS to this task's checkpoints."
                )
            if stamp["step"] not in self.allowed_steps:
                raise CheckpointMismatchError(
                    f"{where} is from step {stamp['step']} of task '{want['task']}'; step {want['step']} can "
                    f"load only step(s) {sorted(self.allowed_steps)}."
                )
            if list(stamp["classes"]) != list(want["classes"][: len(stamp["classes"])]):
                raise CheckpointMismatchError(
                    f"{where} was trained on classes {stamp['classes']}, which are not the first classes of "
                    f"this task's order {want['classes']}."
                )
        result = super()._load_model(checkpoint)
        self.loaded_step = None if stamp is None else stamp["step"]
        return result


def build_old_model(cfg, build_model):
    """The previous step's final model (``INCREMENTAL.PREVIOUS_WEIGHTS``), built with the previous steps'
    classifier groups and checked against this task; the caller freezes it."""
    prev = cfg.clone()
    prev.defrost()
    prev.MODEL.CLASSES_PER_STEP = list(cfg.MODEL.CLASSES_PER_STEP[:-1])
    prev.MODEL.SEM_SEG_HEAD.NUM_CLASSES = sum(prev.MODEL.CLASSES_PER_STEP)
    prev.freeze()
    old = build_model(prev)
    _, step = run_task(cfg)
    IncrementalCheckpointer(old, identity=step_identity(cfg), allowed_steps={step - 1}, strict=True).load(
        cfg.INCREMENTAL.PREVIOUS_WEIGHTS)
    return old
