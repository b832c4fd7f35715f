#!/usr/bin/env python
"""Train and evaluate any fmwiss_d2 model (Mask2Former-style or DeepLabV3) on any registered dataset.

    python tools/train_net.py --config-file configs/shapes/mask2former_semantic.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume                 # continue from the last checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 2             # 2 processes (NCCL on GPUs, Gloo on CPU)

    # one step of an incremental task (see tools/run_incremental.py to run every step):
    python tools/train_net.py --config-file CFG INCREMENTAL.TASK shapes_6-4 INCREMENTAL.STEP 1 INCREMENTAL.METHOD MiB

The mapper, evaluators, optimizer and schedule all come from the config (see fmwiss_d2/engine/trainer.py).
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import fmwiss_d2  # noqa: E402,F401  (registers datasets)
import fmwiss_d2.modeling  # noqa: E402,F401  (registers models)
from fmwiss_d2 import add_fmwiss_config  # noqa: E402
from fmwiss_d2.data.datasets.shapes import register_shapes_from_cfg  # noqa: E402
from fmwiss_d2.engine import Trainer, default_device_check  # noqa: E402
from fmwiss_d2.engine.incremental import IncrementalTrainer, configure_step  # noqa: E402


def setup(args):
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_shapes_from_cfg(cfg)
    configure_step(cfg, eval_only=args.eval_only)
    default_device_check(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fmwiss_d2", abbrev_name="fmwiss")
    return cfg


def trainer_class(cfg):
    """The incremental trainer for a step of a task, the plain one otherwise."""
    return IncrementalTrainer if cfg.INCREMENTAL.TASK else Trainer


def main(args):
    cfg = setup(args)
    trainer_cls = trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        if cfg.INCREMENTAL.TASK:
            trainer_cls.load_for_eval(cfg, model, cfg.MODEL.WEIGHTS)
        else:
            DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_cls.test(cfg, model)
    else:
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)
    return results  # Trainer.test has logged them as a table


def parse_args(argv=None):
    return default_argument_parser().parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
