#!/usr/bin/env python
"""Training and inference speed (images/s) and peak memory of a config; prints one JSON line.

    python tools/bench/train_speed.py                                   # the shapes default (Mask2Former)
    python tools/bench/train_speed.py --config-file configs/shapes/deeplabv3_semantic.yaml --iters 20

Training: optimizer steps on batches from the real training loader (after warm-up steps); inference: the model
on single test images from the test loader. Peak memory: the process's maximum resident set size on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import fmwiss_d2.modeling  # noqa: E402,F401
from fmwiss_d2 import add_fmwiss_config  # noqa: E402
from fmwiss_d2.engine import Trainer, default_device_check  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "shapes", "mask2former_semantic.yaml")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--iters", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--test-images", type=int, default=50, help="timed inference images")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    setup_logger(name="fmwiss_d2")

    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    default_device_check(cfg)
    cfg.freeze()
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    data = iter(Trainer.build_train_loader(cfg))
    model.train()
    t0 = 0.0
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        losses = model(next(data))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    sync()
    train_time = time.perf_counter() - t0

    model.eval()
    loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    n, t_inf = 0, 0.0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= 2 + args.test_images:
                break
            sync()
            t = time.perf_counter()
            model(batch)
            sync()
            if i >= 2:  # two warm-up images
                t_inf += time.perf_counter() - t
                n += len(batch)

    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "config": os.path.relpath(args.config_file),
        "device": cfg.MODEL.DEVICE,
        "torch_threads": torch.get_num_threads(),
        "batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "train_images_per_s": round(args.iters * cfg.SOLVER.IMS_PER_BATCH / train_time, 2),
        "train_s_per_iter": round(train_time / args.iters, 4),
        "inference_images_per_s": round(n / t_inf, 2) if n else None,
        "peak_memory_mib": round(peak, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
