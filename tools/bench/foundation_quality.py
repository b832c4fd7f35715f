#!/usr/bin/env python
"""Measures the tiny foundation models' targets on the synthetic world (val split by default); prints one JSON line.

    python tools/bench/foundation_quality.py                 # default world (seed 0): pretrains if absent
    python tools/bench/foundation_quality.py --max-images 100 # quicker, on the first 100 val images
    python tools/bench/foundation_quality.py --models dino --dino-seed 1   # the tiny DINO of training seed 1 only
    python tools/bench/foundation_quality.py --split test     # on the held-out test split (500 images)

* ``clip_zero_shot_top1``: single-object crops (``shapes_instance_val`` boxes, square side = the box's longer
  side, shifted inside the image) classified among the 10 class-name prompts (target >= 0.80, chance 0.10).
* ``clip_dense_miou``: MaskCLIP dense maps, argmax over the image's labelled classes and the background
  prompts (the world's stuff names), mIoU over background + 10 classes.
* ``dino_foreground_iou``: head-averaged last-layer CLS attention, the top pixels holding 60% of the
  attention mass, IoU with mask != 0 (mean over images; target >= 0.5). With it: the mask's precision and
  recall, ``dino_fg_mass`` (the attention's share on object pixels) and ``dino_ideal_iou``, the score of a
  perfect map (uniform over the objects) at the ViT's patch grid: the measure's ceiling.
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
from fmwiss_d2.modeling.foundation.pretrain_clip import DEFAULT_MODEL, CLIPPretrainConfig  # noqa: E402
from fmwiss_d2.modeling.foundation.pretrain_dino import DEFAULT_ARCH, DINOPretrainConfig  # noqa: E402


def save_attention_figure(dino, spec, split, cache_dir, path, n=6):
    """Rows: image | head-averaged CLS attention | its 60%-mass mask | ground-truth foreground (gray = ignored)."""
    import numpy as np
    from PIL import Image

    from fmwiss_d2.modeling.foundation.data import load_world_split
    from fmwiss_d2.modeling.foundation.evaluation import attention_foreground
    from fmwiss_d2.utils.io import atomic_open

    images, _, masks = load_world_split(spec, split, cache_dir, with_masks=True)
    attn, keep = attention_foreground(dino, images[:n])
    gray = lambda a: np.repeat(np.asarray(a, np.uint8)[..., None], 3, axis=2)
    rows = []
    for i in range(n):
        a = (attn[i] / attn[i].max()).numpy() * 255
        gt = masks[i].numpy()
        rows.append(np.concatenate([images[i].permute(1, 2, 0).numpy(), gray(a), gray(keep[i].numpy() * 255),
                                    gray(np.where(gt == 255, 128, (gt != 0) * 255))], axis=1))
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.concatenate(rows, axis=0)).save(f, format="PNG")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--max-images", type=int, default=None, help="dense/DINO metrics on the first N images only")
    p.add_argument("--dense-input-size", type=int, default=None, help="resize images before the CLIP (None = native)")
    p.add_argument("--dino-input-size", type=int, default=None, help="resize images before the ViT (None = native)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--models", default="clip,dino", help="comma-separated subset of clip,dino to measure")
    p.add_argument("--clip-seed", type=int, default=0, help="training seed of the tiny CLIP")
    p.add_argument("--dino-seed", type=int, default=0, help="training seed of the tiny DINO")
    p.add_argument("--dino-figure", default="", help="also save a PNG of the first 6 val images' DINO attention")
    args = p.parse_args(argv)
    models = set(args.models.split(","))
    if not models or not models <= {"clip", "dino"}:
        p.error(f"--models takes clip and/or dino, got {args.models!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = WorldSpec(seed=args.world_seed)
    res = {"world": spec.folder_name, "split": args.split}
    def measure_clip(path):
        clip = build_clip(DEFAULT_MODEL, path)
        zs = zero_shot_crop_accuracy(clip, spec, args.split, args.cache_dir)
        dense = dense_label_miou(clip, spec, args.split, args.cache_dir, input_size=args.dense_input_size,
                                 max_images=args.max_images)
        return {"clip_seed": args.clip_seed, "clip_zero_shot_top1": round(zs["top1"], 4), "clip_zero_shot_crops": zs["num_crops"],
                "clip_dense_miou": round(dense["miou"], 4), "clip_dense_iou_background": round(dense["iou_background"], 4),
                "clip_dense_miou_things": round(dense["miou_things"], 4), "dense_images": dense["num_images"]}

    def measure_dino(path):
        dino = build_dino(DEFAULT_ARCH, path)
        fg = dino_foreground_iou(dino, spec, args.split, args.cache_dir, input_size=args.dino_input_size,
                                 max_images=args.max_images)
        if args.dino_figure:
            save_attention_figure(dino, spec, args.split, args.cache_dir, args.dino_figure)
        return {"dino_seed": args.dino_seed, "dino_foreground_iou": round(fg["iou"], 4),
                "dino_foreground_iou_dataset": round(fg["iou_dataset"], 4),
                **{f"dino_{k}": round(fg[k], 4) for k in ("precision", "recall", "fg_mass", "ideal_iou")},
                "dino_images": fg["num_images"]}

    # per model: (checkpoint from the cache, pretrained first if absent; its measurements)
    jobs = {"clip": (lambda: ensure_tiny_clip(spec, args.cache_dir, config=CLIPPretrainConfig(seed=args.clip_seed)),
                     measure_clip),
            "dino": (lambda: ensure_tiny_dino(spec, args.cache_dir, config=DINOPretrainConfig(seed=args.dino_seed)),
                     measure_dino)}
    for key in sorted(models):
        ensure, measure = jobs[key]
        t0 = time.time()
        path = ensure()
        meta = torch.load(path, map_location="cpu", weights_only=True).get("fmwiss_meta", {})
        res[f"{key}_pretrain_wall_s_this_run"] = round(time.time() - t0, 1)
        res[f"{key}_pretrain_s"] = meta.get("seconds")
        res[f"{key}_checkpoint"] = path
        t1 = time.time()
        res.update(measure(path))
        res[f"{key}_eval_wall_s"] = round(time.time() - t1, 1)
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
