#!/usr/bin/env python
"""Pretrains the tiny CLIP on the synthetic world's image captions (or finds it in the cache) and prints its path.

    python tools/pretrain_clip.py                      # default world (seed 0), default training config
    python tools/pretrain_clip.py --steps 20 --num-train 64 --num-val 16 --image-size 64   # a quick smoke run
    python tools/pretrain_clip.py --eval               # also measure zero-shot crop top-1 and dense mIoU on val
    python tools/pretrain_clip.py --captions attributes   # captions with colour/texture/outline words (PADing)

Configs with ``MODEL.CLIP.CHECKPOINT: "auto:shapes"`` call the same function (``ensure_tiny_clip``).
"""
import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fmwiss_d2.modeling.foundation.cli import add_pretrain_args, parse_pretrain_args  # noqa: E402
from fmwiss_d2.modeling.foundation.pretrain_clip import (  # noqa: E402
    CAPTION_STYLES, DEFAULT_MODEL, CLIPPretrainConfig, ensure_tiny_clip)
from fmwiss_d2.utils.errors import run_cli  # noqa: E402


def main(argv=None) -> str:
    d = CLIPPretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name or model-config JSON")
    add_pretrain_args(p, d)
    p.add_argument("--captions", choices=CAPTION_STYLES, default=d.captions,
                   help="'attributes': captions also give the classes' colour, texture and outline words")
    p.add_argument("--eval", action="store_true", help="print zero-shot and dense quality on the val split")
    args, spec, config = parse_pretrain_args(p, argv, CLIPPretrainConfig)
    config = replace(config, captions=args.captions)
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
    run_cli(main)
