#!/usr/bin/env python
"""Pretrains the tiny DINO ViT on synthetic-world images (or finds it in the cache) and prints its path.

The images are an object-centric variant of the world (`--corpus object_centric`, ImageNet-like: one large
object per image); `--corpus world` trains on the world's own scene images instead.

    python tools/pretrain_dino.py                      # default world (seed 0), default training config
    python tools/pretrain_dino.py --steps 5 --batch-size 8 --num-train 32 --num-val 8 --image-size 64   # smoke run
    python tools/pretrain_dino.py --eval               # also measure the CLS-attention foreground IoU on val

Configs with ``MODEL.DINO.CHECKPOINT: "auto:shapes"`` call the same function (``ensure_tiny_dino``).
"""
import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fmwiss_d2.modeling.foundation.cli import add_pretrain_args, parse_pretrain_args  # noqa: E402
from fmwiss_d2.modeling.foundation.pretrain_dino import (  # noqa: E402
    CORPORA, DEFAULT_ARCH, DINOPretrainConfig, ensure_tiny_dino)
from fmwiss_d2.utils.errors import run_cli  # noqa: E402


def main(argv=None) -> str:
    d = DINOPretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=DEFAULT_ARCH, help="DINO architecture name or JSON (see foundation/dino.py)")
    p.add_argument("--patch-size", type=int, default=0, help="patch size override (0 = the architecture's)")
    add_pretrain_args(p, d)
    p.add_argument("--corpus", choices=CORPORA, default=d.corpus,
                   help="images learnt from: an object-centric variant of the world (default) or its own images")
    p.add_argument("--eval", action="store_true", help="print the foreground IoU of the CLS attention on val")
    args, spec, config = parse_pretrain_args(p, argv, DINOPretrainConfig)
    config = replace(config, corpus=args.corpus)
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
    run_cli(main)
