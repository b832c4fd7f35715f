#!/usr/bin/env python
"""Pretrains the tiny CLIP on the synthetic world's image captions (or finds it in the cache) and prints its path.

    python tools/pretrain_clip.py                      # default world (seed 0), default training config
    python tools/pretrain_clip.py --steps 20 --num-train 64 --num-val 16 --image-size 64   # a quick smoke run
    python tools/pretrain_clip.py --eval               # also measure zero-shot crop top-1 and dense mIoU on val

Configs with ``MODEL.CLIP.CHECKPOINT: "auto:shapes"`` call the same function (``ensure_tiny_clip``).
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
from fmwiss_d2.modeling.foundation.pretrain_clip import DEFAULT_MODEL, CLIPPretrainConfig, ensure_tiny_clip  # noqa: E402


def main(argv=None) -> str:
    d = CLIPPretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name or model-config JSON")
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
    p.add_argument("--eval", action="store_true", help="print zero-shot and dense quality on the val split")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = WorldSpec(seed=args.world_seed, image_size=args.image_size, num_train=args.num_train, num_val=args.num_val)
    config = CLIPPretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    t0 = time.time()
    path = ensure_tiny_clip(spec, args.cache_dir, model_name=args.model, config=config)
    print(path)
    if args.eval:
        from fmwiss_d2.modeling.foundation.clip import build_clip
        from fmwiss_d2.modeling.foundation.evaluation import dense_label_miou, zero_shot_crop_accuracy

        clip = build_clip(args.model, path)
        zs = zero_shot_crop_accuracy(clip, spec, "val", args.cache_dir)
        dense = dense_label_miou(clip, spec, "val", args.cache_dir)
        print(json.dumps({"zero_shot_top1": round(zs["top1"], 4), "dense_miou": round(dense["miou"], 4),
                          "seconds": round(time.time() - t0, 1)}))
    return path


if __name__ == "__main__":
    main()
