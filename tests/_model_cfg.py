"""Configs for model tests: the shipped tiny configs, shrunk further."""
import os

from detectron2.config import get_cfg

from fmwiss_d2 import add_fmwiss_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def tiny_cfg(name="shapes/mask2former_semantic.yaml", *opts):
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATASETS.TEST", "()", *opts])
    return cfg
