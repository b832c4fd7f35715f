"""Pascal VOC 2012 semantic segmentation, and the VOC-style file helpers the other real datasets share.

A "VOC-style" semantic dataset is a folder of images plus a folder of single-channel PNG masks with the
same file stems, whose pixel values are class indices (255 = ignore). ADE20K and the COCO "things" view
use the same helpers (:func:`sem_seg_records`, :func:`dataset_not_found`, :func:`write_mask_png`).

Registered names (see ``datasets/README.md``, section "Pascal VOC 2012")::

    voc_2012_sem_seg_train       1,464 images  ImageSets/Segmentation/train.txt      SegmentationClass/
    voc_2012_sem_seg_train_aug  10,582 images  ImageSets/Segmentation/train_aug.txt  SegmentationClassAug/
    voc_2012_sem_seg_val         1,449 images  ImageSets/Segmentation/val.txt        SegmentationClass/

Registration never reads the disk; loading an absent dataset raises ``FileNotFoundError``.
"""
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ...utils.io import atomic_open
from .class_names import VOC_CLASSES, voc_palette

__all__ = [
    "VOC_SEM_SEG_SPLITS",
    "find_voc_root",
    "load_voc_sem_seg",
    "register_voc_sem_seg",
    "register_all_voc",
    "voc_sem_seg_metadata",
    "dataset_not_found",
    "read_id_list",
    "sem_seg_records",
    "write_mask_png",
]

logger = logging.getLogger(__name__)

README = "datasets/README.md"
VOC_SECTION = "Pascal VOC 2012"

# dataset name -> (list file stem in ImageSets/Segmentation, mask folder)
VOC_SEM_SEG_SPLITS: Dict[str, Tuple[str, str]] = {
    "voc_2012_sem_seg_train": ("train", "SegmentationClass"),
    "voc_2012_sem_seg_train_aug": ("train_aug", "SegmentationClassAug"),
    "voc_2012_sem_seg_val": ("val", "SegmentationClass"),
}


# ----------------------------------------------------------------------------------------------
# Shared helpers for VOC-style semantic datasets
# ----------------------------------------------------------------------------------------------
def dataset_not_found(path: str, section: str, hint: str = "") -> FileNotFoundError:
    """The error raised when a dataset file or folder is absent: names the path and the README section."""
    shown = path if os.path.isabs(path) else f"{path} ({os.path.abspath(path)})"
    message = (
        f"{shown} does not exist. Lay out the dataset as described in {README}, section "
        f'"{section}"; the datasets root is $DETECTRON2_DATASETS (default: ./datasets).'
    )
    if hint:
        message += " " + hint
    return FileNotFoundError(message)


def read_id_list(list_file: str) -> List[str]:
    """Image ids (file stems) from a split list.

    Accepts the plain VOC format (one id per line) and the two-column format of the SBD-augmented
    lists shipped with MiB/DeepLab (``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``): the id is
    the stem of the first column. Blank lines are skipped.
    """
    ids = []
    with open(list_file) as f:
        for line in f:
            fields = line.split()
            if fields:
                ids.append(os.path.splitext(os.path.basename(fields[0]))[0])
    return ids


_EXIF_ORIENTATION = 0x0112


def _image_hw(path: str) -> Tuple[int, int]:
    """(height, width) as detectron2's ``read_image`` returns it (EXIF rotation applied); header only."""
    with Image.open(path) as im:
        width, height = im.size
        if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            width, height = height, width
    return height, width


def sem_seg_records(
    image_dir: str,
    mask_dir: str,
    ids: Sequence[str],
    *,
    section: str,
    image_ext: str = ".jpg",
    mask_ext: str = ".png",
    image_id: Callable[[str], Union[str, int]] = str,
    num_workers: int = 8,
) -> List[dict]:
    """detectron2 dataset dicts for images ``image_dir/<id><image_ext>`` and masks ``mask_dir/<id><mask_ext>``.

    Each dict has ``file_name``, ``sem_seg_file_name``, ``height``, ``width`` (read from the image
    header, in parallel threads) and ``image_id`` (``image_id(<id>)``). Raises ``FileNotFoundError``
    (via :func:`dataset_not_found`) naming the first missing folder or file.
    """
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise dataset_not_found(folder, section)
    pairs = [
        (os.path.join(image_dir, i + image_ext), os.path.join(mask_dir, i + mask_ext)) for i in ids
    ]

    def probe(pair: Tuple[str, str]) -> Tuple[int, int]:
        image_file, mask_file = pair
        for path in pair:
            if not os.path.isfile(path):
                raise dataset_not_found(path, section)
        return _image_hw(image_file)

    if num_workers > 1 and len(pairs) > 64:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            sizes = list(pool.map(probe, pairs, chunksize=64))
    else:
        sizes = [probe(p) for p in pairs]
    return [
        {
            "file_name": image_file,
            "sem_seg_file_name": mask_file,
            "height": h,
            "width": w,
            "image_id": image_id(i),
        }
        for i, (image_file, mask_file), (h, w) in zip(ids, pairs, sizes)
    ]


def write_mask_png(path: str, mask: np.ndarray, palette: Optional[Iterable[Tuple[int, int, int]]] = None):
    """Write a uint8 class-index mask as a PNG atomically (temporary file in the same folder, then rename).

    Without ``palette`` the PNG is single-channel ("L"), which every reader (including detectron2's
    ``read_image(path, "L")``) returns as the indices; with it the PNG is a palette ("P") image.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 mask, got {mask.dtype} {mask.shape}")
    image = Image.fromarray(mask)  # 2-D uint8 -> mode "L"
    if palette is not None:
        image.putpalette([c for rgb in palette for c in rgb])  # L -> P, pixel values unchanged
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def run_jobs(convert: Callable, jobs: Sequence, *, workers: int, desc: str) -> None:
    """``convert(job)`` for every job with a progress bar, in ``workers`` processes (0 or 1: in this process): the
    loop of the ``datasets/prepare_*.py`` scripts."""
    from multiprocessing import Pool

    from tqdm import tqdm

    with tqdm(total=len(jobs), desc=desc, unit="img") as progress:
        if workers > 1 and len(jobs) > 1:
            with Pool(workers) as pool:
                for _ in pool.imap_unordered(convert, jobs, chunksize=16):
                    progress.update()
        else:
            for job in jobs:
                convert(job)
                progress.update()


# ----------------------------------------------------------------------------------------------
# Pascal VOC 2012
# ----------------------------------------------------------------------------------------------
def find_voc_root(root: str) -> str:
    """``root/VOC2012``, else ``root/VOCdevkit/VOC2012`` (the layout of the official tar)."""
    candidates = [os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise dataset_not_found(candidates[0], VOC_SECTION, hint=f"({candidates[1]} is accepted too.)")


def load_voc_sem_seg(root: str, split: str = "train", mask_dir: Optional[str] = None) -> List[dict]:
    """Dataset dicts of a Pascal VOC 2012 segmentation split.

    Args:
        root: the datasets root (``$DETECTRON2_DATASETS``) holding ``VOC2012/`` or ``VOCdevkit/VOC2012/``.
        split: a list in ``ImageSets/Segmentation/`` ("train", "val", "train_aug", ...).
        mask_dir: mask folder inside ``VOC2012/``; default ``SegmentationClassAug`` for "train_aug",
            else ``SegmentationClass``. Masks hold class indices 0..20 and 255 (ignore); the palette
            PNGs of ``SegmentationClass`` read back as indices with ``np.asarray(Image.open(f))``.
    """
    voc = find_voc_root(root)
    if mask_dir is None:
        mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    list_file = os.path.join(voc, "ImageSets", "Segmentation", split + ".txt")
    if not os.path.isfile(list_file):
        hint = "Create it with datasets/prepare_voc_sbd_aug.py." if split == "train_aug" else ""
        raise dataset_not_found(list_file, VOC_SECTION, hint=hint)
    ids = read_id_list(list_file)
    records = sem_seg_records(
        os.path.join(voc, "JPEGImages"), os.path.join(voc, mask_dir), ids, section=VOC_SECTION
    )
    logger.info("Loaded %d images of VOC 2012 '%s' from %s", len(records), split, voc)
    return records


def voc_sem_seg_metadata() -> dict:
    """Metadata of the VOC semantic datasets: 21 classes (background first), VOC colours, ignore 255."""
    return {
        "stuff_classes": list(VOC_CLASSES),
        "stuff_colors": [list(c) for c in voc_palette(len(VOC_CLASSES))],
        "ignore_label": 255,
        "evaluator_type": "sem_seg",
    }


def register_voc_sem_seg(name: str, root: str, split: str, mask_dir: Optional[str] = None) -> None:
    """Register one VOC split under ``name``, lazily (nothing is read until the dataset is loaded)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, functools.partial(load_voc_sem_seg, root, split, mask_dir))
    MetadataCatalog.get(name).set(**voc_sem_seg_metadata())


def register_all_voc(root: str) -> None:
    """Register ``voc_2012_sem_seg_{train,train_aug,val}`` under the datasets root ``root``."""
    for name, (split, mask_dir) in VOC_SEM_SEG_SPLITS.items():
        register_voc_sem_seg(name, root, split, mask_dir)
