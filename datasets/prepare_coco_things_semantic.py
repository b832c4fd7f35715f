#!/usr/bin/env python
"""Write the semantic "things" masks of COCO 2017 (81 classes) from its panoptic annotations.

Reads   $ROOT/coco/annotations/panoptic_<split>2017.json and $ROOT/coco/panoptic_<split>2017/*.png
Writes  $ROOT/coco/things_sem_seg_<split>2017/<image stem>.png  (single-channel uint8)

Labels: the 80 thing classes -> 1..80 (detectron2's contiguous order), all stuff classes -> 0
(background), unlabeled pixels -> 255 (ignore); crowd regions keep their class unless --crowd-ignore.
Each mask is written to a temporary file and renamed; existing masks are skipped (--overwrite redoes
them), so an interrupted run resumes where it stopped. ROOT defaults to $DETECTRON2_DATASETS or ./datasets.

    python datasets/prepare_coco_things_semantic.py --workers 8
"""
import argparse
import functools
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from fmwiss_d2.data.datasets.coco import (
    COCO_SECTION,
    panoptic_to_things_sem_seg,
    things_category_to_label,
    things_sem_seg_dir,
)
from fmwiss_d2.data.datasets.voc import dataset_not_found, run_jobs, write_mask_png


def _convert_one(job: Tuple[str, str, list], category_to_label: Dict[int, int], crowd_ignore: bool):
    panoptic_png, out_png, segments_info = job
    if not os.path.isfile(panoptic_png):
        raise dataset_not_found(panoptic_png, COCO_SECTION)
    with Image.open(panoptic_png) as im:
        rgb = np.asarray(im.convert("RGB"))
    mask = panoptic_to_things_sem_seg(rgb, segments_info, category_to_label, crowd_ignore=crowd_ignore)
    write_mask_png(out_png, mask)


def convert_split(
    root: str, split: str, *, workers: int = 4, crowd_ignore: bool = False, overwrite: bool = False
) -> Tuple[int, int]:
    """Convert one split ("train" or "val"); returns (masks written, masks skipped because present)."""
    coco = os.path.join(root, "coco")
    json_file = os.path.join(coco, "annotations", f"panoptic_{split}2017.json")
    panoptic_dir = os.path.join(coco, f"panoptic_{split}2017")
    for path in (json_file, panoptic_dir):
        if not os.path.exists(path):
            raise dataset_not_found(path, COCO_SECTION)
    with open(json_file) as f:
        data = json.load(f)
    category_to_label = things_category_to_label(data["categories"])
    image_stem = {im["id"]: os.path.splitext(im["file_name"])[0] for im in data.get("images", [])}

    out_dir = things_sem_seg_dir(root, split)
    os.makedirs(out_dir, exist_ok=True)
    jobs: List[Tuple[str, str, list]] = []
    skipped = 0
    for ann in data["annotations"]:
        stem = image_stem.get(ann["image_id"], os.path.splitext(ann["file_name"])[0])
        out_png = os.path.join(out_dir, stem + ".png")
        if os.path.exists(out_png) and not overwrite:
            skipped += 1
            continue
        jobs.append((os.path.join(panoptic_dir, ann["file_name"]), out_png, ann["segments_info"]))

    convert = functools.partial(
        _convert_one, category_to_label=category_to_label, crowd_ignore=crowd_ignore
    )
    run_jobs(convert, jobs, workers=workers, desc=f"things_sem_seg_{split}2017")
    return len(jobs), skipped


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding coco/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    parser.add_argument("--workers", type=int, default=4, help="processes (0 or 1: in this process)")
    parser.add_argument("--crowd-ignore", action="store_true", help="label crowd regions 255 instead of their class")
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    args = parser.parse_args(argv)
    for split in args.splits:
        written, skipped = convert_split(
            args.root, split, workers=args.workers, crowd_ignore=args.crowd_ignore, overwrite=args.overwrite
        )
        print(f"{split}: wrote {written} masks, skipped {skipped} existing -> {things_sem_seg_dir(args.root, split)}")


if __name__ == "__main__":
    main()
