#!/usr/bin/env python
"""Build the SBD-augmented Pascal VOC 2012 training set ("train_aug", 10,582 images).

Reads   $ROOT/VOC2012 (or $ROOT/VOCdevkit/VOC2012): ImageSets/Segmentation/{train,val}.txt, SegmentationClass/
        --sbd DIR: the "dataset" folder of the SBD release (benchmark_RELEASE/dataset) with cls/<id>.mat,
        train.txt and val.txt
Writes  VOC2012/SegmentationClassAug/<id>.png  single-channel uint8 masks (0..20, 255 = ignore)
        VOC2012/ImageSets/Segmentation/train_aug.txt  one id per line

train_aug = (SBD train + SBD val + VOC train) - VOC val, the split of DeepLab, MiB and WILSON. A mask comes
from VOC's SegmentationClass when VOC annotates the image (finer, with 255 borders), otherwise from SBD's
GTcls.Segmentation. Every file is written to a temporary file and renamed; existing masks are skipped
(--overwrite redoes them). ROOT defaults to $DETECTRON2_DATASETS or ./datasets.

    python datasets/prepare_voc_sbd_aug.py --sbd /path/to/benchmark_RELEASE/dataset
"""
import argparse
import os
import tempfile
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from fmwiss_d2.data.datasets.voc import (
    VOC_SECTION,
    dataset_not_found,
    find_voc_root,
    read_id_list,
    write_mask_png,
)


def read_sbd_mask(mat_file: str) -> np.ndarray:
    """Class-index mask (uint8, 0..20) stored as ``GTcls.Segmentation`` in an SBD ``cls/<id>.mat``."""
    from scipy.io import loadmat

    gt = loadmat(mat_file, squeeze_me=True, struct_as_record=False)["GTcls"]
    return np.asarray(gt.Segmentation, dtype=np.uint8)


def train_aug_ids(voc: str, sbd: str) -> List[str]:
    """Sorted ids of (SBD train + SBD val + VOC train) - VOC val."""
    lists = {
        "voc_train": os.path.join(voc, "ImageSets", "Segmentation", "train.txt"),
        "voc_val": os.path.join(voc, "ImageSets", "Segmentation", "val.txt"),
        "sbd_train": os.path.join(sbd, "train.txt"),
        "sbd_val": os.path.join(sbd, "val.txt"),
    }
    for path in lists.values():
        if not os.path.isfile(path):
            raise dataset_not_found(path, VOC_SECTION)
    ids = {k: set(read_id_list(p)) for k, p in lists.items()}
    return sorted((ids["sbd_train"] | ids["sbd_val"] | ids["voc_train"]) - ids["voc_val"])


def _write_text_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
    os.replace(tmp, path)


def build_train_aug(root: str, sbd: str, *, overwrite: bool = False) -> Tuple[int, int]:
    """Write SegmentationClassAug/ and train_aug.txt; returns (masks written, masks skipped)."""
    voc = find_voc_root(root)
    ids = train_aug_ids(voc, sbd)
    voc_masks = os.path.join(voc, "SegmentationClass")
    out_dir = os.path.join(voc, "SegmentationClassAug")
    os.makedirs(out_dir, exist_ok=True)
    written = skipped = 0
    for i in tqdm(ids, desc="SegmentationClassAug", unit="img"):
        out_png = os.path.join(out_dir, i + ".png")
        if os.path.exists(out_png) and not overwrite:
            skipped += 1
            continue
        voc_png = os.path.join(voc_masks, i + ".png")
        if os.path.isfile(voc_png):
            with Image.open(voc_png) as im:
                mask = np.asarray(im, dtype=np.uint8)  # palette PNG: the array holds the indices
        else:
            mat_file = os.path.join(sbd, "cls", i + ".mat")
            if not os.path.isfile(mat_file):
                raise dataset_not_found(mat_file, VOC_SECTION)
            mask = read_sbd_mask(mat_file)
        write_mask_png(out_png, mask)
        written += 1
    _write_text_atomic(
        os.path.join(voc, "ImageSets", "Segmentation", "train_aug.txt"), "".join(i + "\n" for i in ids)
    )
    return written, skipped


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root holding VOC2012/ or VOCdevkit/VOC2012/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--sbd", required=True, help="SBD folder with cls/, train.txt, val.txt")
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    args = parser.parse_args(argv)
    written, skipped = build_train_aug(args.root, args.sbd, overwrite=args.overwrite)
    print(f"train_aug: wrote {written} masks, skipped {skipped} existing ({written + skipped} images)")


if __name__ == "__main__":
    main()
