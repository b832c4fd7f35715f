#!/usr/bin/env python
"""Measures the tiny foundation models' targets on the synthetic world's val split and prints one JSON line.

    python tools/bench/foundation_quality.py                 # default world (seed 0): pretrains if absent
    python tools/bench/foundation_quality.py --max-images 100 # quicker, on the first 100 val images

* ``clip_zero_shot_top1``: single-object crops (``shapes_instance_val`` boxes, square side = the box's longer
  side, shifted inside the image) classified among the 10 class-name prompts (target >= 0.80, chance 0.10).
* ``clip_dense_miou``: MaskCLIP dense maps, argmax over the image's labelled classes and the background
  prompts (the world's stuff names), mIoU over background + 10 classes.
* ``dino_foreground_iou``: head-averaged last-layer CLS attention, the top pixels holding 60% of the
  attention mass, IoU with mask != 0 (mean over images; target >= 0.5).
Pretraining seconds are read from the checkpoints (measured when they were made).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

from fmwiss_d2.data.datasets.shapes import WorldSpec  # noqa: E402
from fmwiss_d2.modeling.foundation import build_clip, build_dino, ensure_tiny_clip, ensure_tiny_dino  # noqa: E402
from fmwiss_d2.modeling.foundation.evaluation import (  # noqa: E402
    dense_label_miou, dino_foreground_iou, zero_shot_crop_accuracy)
from fmwiss_d2.modeling.foundation.pretrain_clip import DEFAULT_MODEL  # noqa: E402
from fmwiss_d2.modeling.foundation.pretrain_dino import DEFAULT_ARCH  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=None, help="dense/DINO metrics on the first N images only")
    p.add_argument("--dense-input-size", type=int, default=None, help="resize images before the CLIP (None = native)")
    p.add_argument("--dino-input-size", type=int, default=None, help="resize images before the ViT (None = native)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = WorldSpec(seed=args.world_seed)
    res = {"world": spec.folder_name, "split": args.split}
    t0 = time.time()
    clip_path = ensure_tiny_clip(spec, args.cache_dir)
    dino_path = ensure_tiny_dino(spec, args.cache_dir)
    res["pretrain_wall_s_this_run"] = round(time.time() - t0, 1)
    for key, path in (("clip", clip_path), ("dino", dino_path)):
        meta = torch.load(path, map_location="cpu", weights_only=True).get("fmwiss_meta", {})
        res[f"{key}_pretrain_s"] = meta.get("seconds")
        res[f"{key}_checkpoint"] = path
    t1 = time.time()
    clip = build_clip(DEFAULT_MODEL, clip_path)
    zs = zero_shot_crop_accuracy(clip, spec, args.split, args.cache_dir)
    dense = dense_label_miou(clip, spec, args.split, args.cache_dir, input_size=args.dense_input_size,
                             max_images=args.max_images)
    dino = build_dino(DEFAULT_ARCH, dino_path)
    fg = dino_foreground_iou(dino, spec, args.split, args.cache_dir, input_size=args.dino_input_size,
                             max_images=args.max_images)
    res.update({
        "clip_zero_shot_top1": round(zs["top1"], 4), "clip_zero_shot_crops": zs["num_crops"],
        "clip_dense_miou": round(dense["miou"], 4), "clip_dense_iou_background": round(dense["iou_background"], 4),
        "clip_dense_miou_things": round(dense["miou_things"], 4), "dense_images": dense["num_images"],
        "dino_foreground_iou": round(fg["iou"], 4), "dino_foreground_iou_dataset": round(fg["iou_dataset"], 4),
        "eval_wall_s": round(time.time() - t1, 1), "threads": torch.get_num_threads(),
    })
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
