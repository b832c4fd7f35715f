#!/usr/bin/env python
"""Pretrains the tiny DINO ViT on the synthetic world's images (or finds it in the cache) and prints its path.

    python tools/pretrain_dino.py                      # default world (seed 0), default training config
    python tools/pretrain_dino.py --steps 5 --batch-size 8 --num-train 32 --num-val 8 --image-size 64   # smoke run
    python tools/pretrain_dino.py --eval               # also measure the CLS-attention foreground IoU on val

Configs with ``MODEL.DINO.CHECKPOINT: "auto:shapes"`` call the same function (``ensure_tiny_dino``).
"""
import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from fmwiss_d2.data.datasets.shapes import WorldSpec  # noqa: E402
from fmwiss_d2.modeling.foundation.pretrain_dino import DEFAULT_ARCH, DINOPretrainConfig, ensure_tiny_dino  # noqa: E402


def main(argv=None) -> str:
    d = DINOPretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=DEFAULT_ARCH, help="DINO architecture name or JSON (see foundation/dino.py)")
    p.add_argument("--patch-size", type=int, default=0, help="patch size override (0 = the architecture's)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--num-train", type=int, default=WorldSpec.num_train)
    p.add_argument("--num-val", type=int, default=WorldSpec.num_val)
    p.add_argument("--image-size", type=int, default=WorldSpec.image_size)
    p.add_argument("--cache-dir", default=None, help="cache root ($FMWISS_CACHE or ~/.cache/fmwiss_d2)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed, help="training seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--eval", action="store_true", help="print the foreground IoU of the CLS attention on val")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = WorldSpec(seed=args.world_seed, image_size=args.image_size, num_train=args.num_train, num_val=args.num_val)
    config = DINOPretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    t0 = time.time()
    path = ensure_tiny_dino(spec, args.cache_dir, arch=args.arch, patch_size=args.patch_size, config=config)
    print(path)
    if args.eval:
        from fmwiss_d2.modeling.foundation.dino import build_dino
        from fmwiss_d2.modeling.foundation.evaluation import dino_foreground_iou

        dino = build_dino(args.arch, path, patch_size=args.patch_size)
        res = dino_foreground_iou(dino, spec, "val", args.cache_dir)
        print(json.dumps({"foreground_iou": round(res["iou"], 4), "seconds": round(time.time() - t0, 1)}))
    return path


if __name__ == "__main__":
    main()
