"""What ``tools/train_net.py`` does, as library functions: build the config of a run, then train or evaluate it."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_fmwiss_config
from ..data.datasets.shapes import register_shapes_from_cfg
from ..utils.errors import run_cli
from .incremental import configure_step
from .lock import OutputDirLock
from .trainer import Trainer, default_device_check, results_file

__all__ = ["argument_parser", "setup", "main", "launch_main"]


def argument_parser(description: str | None = None):
    """detectron2's argument parser (``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``, opts)."""
    parser = default_argument_parser()
    if description:
        parser.description = description
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def variants_argument_parser(description: str | None = None):
    """:func:`argument_parser` plus ``--variants`` (the comparison runners: run_variants, run_zero_shot)."""
    parser = argument_parser(description)
    parser.add_argument("--variants", default="", type=lambda s: [v for v in s.split(",") if v],
                        help="comma-separated variants (methods or PROTOCOL.VARIANTS names); default: METHOD.NAME")
    return parser


def load_config(config_file: str, opts) -> "CfgNode":  # noqa: F821
    """The config of a run before ``configure_step``: defaults + file + command-line options."""
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    register_shapes_from_cfg(cfg)
    return cfg


def _reset_loggers():
    """Why: the protocol runners run several stages in one process, each with its own OUTPUT_DIR; detectron2's
    ``setup_logger`` adds console and file handlers per new folder, so without this every line would be printed
    once per earlier stage (and written into earlier stages' log files)."""
    for name in ("detectron2", "fvcore", "fmwiss_d2"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    setup_logger.cache_clear()


def setup(args):
    """The frozen config of a run (task step resolved, device checked), with logging set up."""
    cfg = load_config(args.config_file, args.opts)
    configure_step(cfg, eval_only=args.eval_only)
    default_device_check(cfg)
    cfg.freeze()
    _reset_loggers()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fmwiss_d2", abbrev_name="fmwiss")
    return cfg


def main(args):
    """Trains (or, with ``--eval-only``, evaluates) one run; returns the evaluation results."""
    cfg = setup(args)
    if args.eval_only:
        return Trainer.test(cfg, Trainer.build_eval_model(cfg, cfg.MODEL.WEIGHTS))
    start = time.time()
    with OutputDirLock(cfg.OUTPUT_DIR, enabled=comm.is_main_process()):  # one trainer per folder
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    path = results_file(cfg.OUTPUT_DIR)  # written by this run's final evaluation (Trainer.test)
    if comm.is_main_process() and os.path.isfile(path) and os.path.getmtime(path) >= start:
        with open(path) as f:
            return json.load(f)
    return None


def _main_cli(args):
    return run_cli(lambda: main(args))


def launch_main(args):
    """:func:`main` in ``args.num_gpus`` processes (detectron2's launcher); a user error (config, task,
    dataset, checkpoint, cache) is one line on stderr and exit code 2 (``FMWISS_TRACEBACK=1``: the traceback)."""
    logging.getLogger("fmwiss_d2").info("Command line arguments: %s", args)
    return run_cli(lambda: launch(_main_cli, args.num_gpus, num_machines=args.num_machines,
                                  machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,)))
