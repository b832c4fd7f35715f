"""The trainer used for every model, method, task and step: detectron2's DefaultTrainer training a method
(``METHOD.NAME``, which owns the model), with the data mapper, the evaluators and the optimizer chosen from the
config through registries."""
import logging
import os
import weakref
from collections import OrderedDict

import torch

from detectron2.data import build_detection_test_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.dataset_mappers import build_dataset_mapper
from ..evaluation import build_evaluator, format_metrics_table
from ..methods import build_method
from ..utils.errors import registry_get
from ..utils.io import atomic_write_json
from .data_loader import build_deterministic_train_loader, training_records
from .incremental import (
    IncrementalCheckpointer, MethodState, allowed_steps, build_old_model, check_previous_weights, run_task, step_identity,
)
from .hooks import IterationSeedHook
from .solver import build_lr_scheduler, build_optimizer

__all__ = ["Trainer", "RESULTS_FILE", "results_file"]


def unwrap(module):
    """The module inside a DDP wrapper."""
    return module.module if hasattr(module, "module") else module


class Trainer(DefaultTrainer):
    """DefaultTrainer that trains a method (``METHOD.NAME``; with or without an incremental task), with:
    registry-chosen mappers (``INPUT.DATASET_MAPPER_NAME``) and evaluators (``TEST.EVALUATOR_TYPES`` or the
    dataset's ``evaluator_type``); a training stream that resumes exactly (see
    :mod:`fmwiss_d2.engine.data_loader`); DDP that works on CPU (Gloo) as well as on GPUs; AdamW/SGD with
    Mask2Former's parameter groups and full-model gradient clipping; the poly schedule.

    Checkpoints hold the model as ``"model"`` (loadable by any detectron2 tool) and the method's own trainable
    parts as ``"method"``; at an incremental step they are stamped with the task, step and classes."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        from ..modeling.ops import set_deterministic

        set_deterministic(cfg.MODEL.MS_DEFORM_ATTN.DETERMINISTIC)
        model = self.build_train_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {}))
        amp = cfg.SOLVER.AMP.ENABLED and not on_cpu
        self._trainer = (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        registry_get(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")  # names the valid ones
        return super().build_model(cfg)

    @classmethod
    def build_method(cls, cfg, model):
        task, step = run_task(cfg)
        return build_method(cfg, model, task, step)

    @classmethod
    def build_train_model(cls, cfg):
        """The module trained: the method around a new model, with the frozen previous-step model attached when
        the method asks for one, and its other frozen parts prepared."""
        check_previous_weights(cfg)
        method = cls.build_method(cfg, cls.build_model(cfg))
        if method.needs_old_model and method.step > 0:
            method.add_frozen("old_model", build_old_model(cfg, cls.build_model))
        method.prepare_training(cfg)
        return method

    @classmethod
    def checkpointer_for(cls, cfg, method, steps, **kwargs) -> IncrementalCheckpointer:
        """Saves/loads ``method.model`` as ``"model"`` and the method's own parts as ``"method"``."""
        return IncrementalCheckpointer(method.model, cfg.OUTPUT_DIR, identity=step_identity(cfg), allowed_steps=steps,
                                       method=MethodState(method), **kwargs)

    def build_checkpointer(self, cfg, model):
        return self.checkpointer_for(cfg, unwrap(model), allowed_steps(cfg), trainer=weakref.proxy(self))

    @classmethod
    def build_eval_model(cls, cfg, weights: str):
        """The method around a model loaded from ``weights`` (and its own parts, when the file has them), in
        eval mode; at an incremental step the file must be that step's checkpoint."""
        method = cls.build_method(cfg, cls.build_model(cfg))
        cls.checkpointer_for(cfg, method, {method.step}, strict=True).load(weights)
        return method.eval()

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.SEED >= 0:
            hooks.insert(0, IterationSeedHook(self.cfg.SEED))
        return hooks

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        method = unwrap(self._trainer.model)
        if method.step > 0 and self.checkpointer.loaded_step == method.step - 1:  # a fresh start of this step
            method.start_step()
            logging.getLogger("detectron2").info("Step %d starts from step %d's model (%s)", method.step,
                                                 method.step - 1, type(method).__name__)
        if self.start_iter > 0:  # continue the training stream where the checkpoint left it
            self._trainer.reset_data_loader(lambda: self.build_train_loader(self.cfg, start_iter=self.start_iter))

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        mapper = build_dataset_mapper(cfg, is_train=True)
        dataset = training_records(cfg)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_deterministic_train_loader(
            dataset, mapper, total_batch_size=cfg.SOLVER.IMS_PER_BATCH, seed=seed, start_iter=start_iter,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_dataset_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, logged as a table and written to :func:`results_file` (what protocols read)."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            named = results if len(cfg.DATASETS.TEST) > 1 else OrderedDict({cfg.DATASETS.TEST[0]: results})
            logging.getLogger("detectron2").info("Metrics:\n" + format_metrics_table(named))
            atomic_write_json(results_file(cfg.OUTPUT_DIR), named, indent=1, default=lambda x: None)
        return results


RESULTS_FILE = os.path.join("inference", "results.json")  # relative to a run's OUTPUT_DIR


def results_file(output_dir: str) -> str:
    """``{dataset: {task: {metric: value}}}`` of the last evaluation of the run in ``output_dir``."""
    return os.path.join(output_dir, RESULTS_FILE)


def default_device_check(cfg):
    """Falls back to the CPU when the config asks for CUDA on a machine without a GPU."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg
