#!/usr/bin/env python
"""Write the COCO-Stuff 164k semantic masks (171 classes, contiguous labels) the zero-shot split coco_zs_stuff uses.

Reads   $ROOT/coco/stuffthingmaps_trainval2017/<split>2017/<stem>.png   (COCO-Stuff's release: pixel = id - 1)
Writes  $ROOT/coco/stuffthingmaps_detectron2/<split>2017/<stem>.png      (single-channel uint8, 0..170, 255 ignore)

Labels: the 80 things then the 91 stuff classes, each in COCO id order (COCO_STUFF_171_CLASSES); unlabeled pixels
and the 11 ids COCO never annotated -> 255. Each mask is written to a temporary file and renamed; existing masks
are skipped (--overwrite redoes them), so an interrupted run resumes where it stopped. ROOT defaults to
$DETECTRON2_DATASETS or ./datasets.

    python datasets/prepare_coco_stuff_semantic.py --workers 8
"""
import argparse
import functools
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from fmwiss_d2.data.datasets.coco import COCO_SECTION, coco_stuff_lut, stuff_sem_seg_dir
from fmwiss_d2.data.datasets.voc import dataset_not_found, run_jobs, write_mask_png


def raw_stuff_dir(root: str, split: str) -> str:
    return os.path.join(root, "coco", "stuffthingmaps_trainval2017", f"{split}2017")


def _convert_one(job: Tuple[str, str], lut: np.ndarray) -> None:
    src, dst = job
    with Image.open(src) as im:
        raw = np.asarray(im)
    if raw.ndim != 2:
        raise ValueError(f"{src}: expected a single-channel COCO-Stuff map, got shape {raw.shape}")
    write_mask_png(dst, lut[raw.astype(np.uint8)])


def convert_split(root: str, split: str, *, workers: int = 4, overwrite: bool = False) -> Tuple[int, int]:
    """Convert one split ("train" or "val"); returns (masks written, masks skipped because present)."""
    src_dir = raw_stuff_dir(root, split)
    if not os.path.isdir(src_dir):
        raise dataset_not_found(src_dir, COCO_SECTION,
                                hint="Unpack COCO-Stuff's stuffthingmaps_trainval2017.zip under coco/.")
    out_dir = stuff_sem_seg_dir(root, split)
    os.makedirs(out_dir, exist_ok=True)
    jobs, skipped = [], 0
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".png"):
            continue
        dst = os.path.join(out_dir, name)
        if os.path.exists(dst) and not overwrite:
            skipped += 1
            continue
        jobs.append((os.path.join(src_dir, name), dst))
    convert = functools.partial(_convert_one, lut=coco_stuff_lut())
    run_jobs(convert, jobs, workers=workers, desc=f"stuffthingmaps_detectron2/{split}2017")
    return len(jobs), skipped


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                        help="datasets root holding coco/ (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    parser.add_argument("--workers", type=int, default=4, help="processes (0 or 1: in this process)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    args = parser.parse_args(argv)
    for split in args.splits:
        written, skipped = convert_split(args.root, split, workers=args.workers, overwrite=args.overwrite)
        print(f"{split}: wrote {written} masks, skipped {skipped} existing -> {stuff_sem_seg_dir(args.root, split)}")


if __name__ == "__main__":
    main()
