"""COCO-format panoptic datasets as semantic bases of incremental tasks.

Why: an incremental task reads one class id per pixel (``sem_seg_file_name`` + the step's ``label_lut``), but a
COCO panoptic dataset stores segment ids (``pan_seg_file_name``, id = R + 256 G + 256^2 B) and their classes
(``segments_info``). Each panoptic PNG is converted once into a semantic PNG and cached on disk; the records then
gain ``sem_seg_file_name`` and everything downstream treats the dataset like any semantic one.

Class ids of the semantic masks are the dataset's contiguous ids, as detectron2 defines them for panoptic data:

* the usual convention (detectron2's COCO panoptic, Mask2Former's ADE20K panoptic, the shapes world):
  ``stuff_classes`` lists *every* class (things included) and both id maps point into it -> the semantic id is
  the segment's ``category_id``;
* thing and stuff classes in two separate contiguous ranges (``thing_classes`` and ``stuff_classes`` disjoint)
  -> things keep their id, stuff ids are shifted by the number of thing classes (classes = things + stuff).

Pixels of no segment (id 0, "unlabeled") become 255. Crowd segments keep their class (as detectron2's
``prepare_panoptic_fpn.py`` and Mask2Former's semantic conversion do).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from ...utils.errors import UserError
from ...utils.manifest import check_manifest, write_manifest
from ...utils.io import atomic_directory

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255


class PanopticBaseError(UserError, ValueError):
    """A panoptic dataset cannot be read as a semantic base; the message names the dataset and the fix."""


def is_panoptic(dataset_name: str) -> bool:
    """A COCO-format panoptic dataset (panoptic PNGs, no semantic masks of its own), told from its metadata
    alone so that tasks can be defined without loading the data. ``register_coco_panoptic_separated``
    datasets carry a ``sem_seg_root``: they are semantic already (their ``stuff_classes``)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    return (meta.get("panoptic_root") is not None or meta.get("panoptic_json") is not None) and \
        meta.get("sem_seg_root") is None


def _layout(dataset_name: str) -> tuple[list[str], list, int]:
    """(class names, colours, offset added to stuff ids) of the semantic version (module docstring)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    things, stuff = list(meta.get("thing_classes", [])), list(meta.get("stuff_classes", []))
    if not stuff and not things:
        raise PanopticBaseError(f"panoptic dataset '{dataset_name}' has neither thing_classes nor stuff_classes in "
                                "its MetadataCatalog entry; register it with the metadata of register_coco_panoptic")
    if set(things) <= set(stuff):  # stuff_classes holds every class
        classes, colors, offset = stuff, list(meta.get("stuff_colors", [])), 0
    else:
        classes = things + stuff
        colors = list(meta.get("thing_colors", [])) + list(meta.get("stuff_colors", []))
        offset = len(things)
    if len(classes) > IGNORE_LABEL:
        raise PanopticBaseError(f"panoptic dataset '{dataset_name}' has {len(classes)} classes; semantic masks hold "
                                f"at most {IGNORE_LABEL} (255 is 'unlabeled')")
    if len(colors) != len(classes):
        colors = []
    return classes, colors, offset


def semantic_classes(dataset_name: str) -> list[str]:
    """Class names of the semantic version of a panoptic dataset, in semantic-id order."""
    return _layout(dataset_name)[0]


def semantic_colors(dataset_name: str) -> list:
    """Colours matching :func:`semantic_classes` ([] when the metadata has none for every class)."""
    return _layout(dataset_name)[1]


def _segment_classes(dataset_name: str, record: dict, offset: int, n_classes: int) -> dict[int, int]:
    """Segment id -> semantic id of one record."""
    out = {}
    for seg in record["segments_info"]:
        if offset and "isthing" not in seg:
            raise PanopticBaseError(
                f"panoptic dataset '{dataset_name}': a segment of {record['pan_seg_file_name']} has no 'isthing', "
                "needed because its thing and stuff ids are separate ranges (load it with detectron2's "
                "load_coco_panoptic_json)")
        sem = seg["category_id"] + (0 if seg.get("isthing", True) else offset)
        if not 0 <= sem < n_classes:
            raise PanopticBaseError(
                f"panoptic dataset '{dataset_name}': segment {seg['id']} of {record['pan_seg_file_name']} has "
                f"category_id {seg['category_id']}, outside its {n_classes} classes (category ids must be the "
                "contiguous ids of its metadata)")
        out[int(seg["id"])] = int(sem)
    return out


def segment_class_ids(dataset_name: str, record: dict) -> dict[int, int]:
    """Segment id -> semantic class id (index into :func:`semantic_classes`) of one record of a panoptic dataset."""
    classes, _, offset = _layout(dataset_name)
    return _segment_classes(dataset_name, record, offset, len(classes))


def convert_panoptic_png(pan_file: str, segment_classes: dict[int, int]) -> np.ndarray:
    """uint8 semantic mask of one panoptic PNG: each pixel gets its segment's class, 255 where no segment."""
    from PIL import Image

    from .coco import label_segments, rgb_to_panoptic_id

    return label_segments(rgb_to_panoptic_id(Image.open(pan_file).convert("RGB")), segment_classes)


def semantic_records(dataset_name: str, records: list[dict], cache_dir: str | None = None) -> list[dict]:
    """``records`` of a panoptic dataset, each with ``sem_seg_file_name`` added (the converted mask).

    The masks are written once under ``<cache>/panoptic_sem_seg/<dataset>-<key>/``, the key hashing the dataset
    name, its panoptic files, their segments and the class layout, so any change converts anew. The folder is
    filled under a temporary name and renamed into place: a reader never sees a half-converted dataset.
    """
    from PIL import Image
    from tqdm import tqdm

    from .shapes import default_cache_dir

    missing = [k for k in ("pan_seg_file_name", "segments_info") if records and k not in records[0]]
    if missing:
        raise PanopticBaseError(
            f"dataset '{dataset_name}' is registered as panoptic (its metadata has panoptic_root/panoptic_json) but "
            f"its records lack {missing}; register it with detectron2's register_coco_panoptic, or as a semantic "
            "dataset (register_sem_seg) without panoptic metadata")
    classes, _, offset = _layout(dataset_name)
    maps = [_segment_classes(dataset_name, r, offset, len(classes)) for r in records]
    key_src = json.dumps([dataset_name, classes, offset,
                          [[r["pan_seg_file_name"], sorted(m.items())] for r, m in zip(records, maps)]])
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    root = os.path.join(cache_dir or default_cache_dir(), "panoptic_sem_seg", f"{dataset_name}-{key}")
    names = [f"{i:06d}_{os.path.splitext(os.path.basename(r['pan_seg_file_name']))[0]}.png"
             for i, r in enumerate(records)]
    if not os.path.isdir(root):
        with atomic_directory(root) as tmp:
            for r, m, name in tqdm(list(zip(records, maps, names)), desc=f"panoptic -> semantic {dataset_name}",
                                   leave=False, disable=None):
                Image.fromarray(convert_panoptic_png(r["pan_seg_file_name"], m)).save(os.path.join(tmp, name))
            write_manifest(tmp)
        logger.info("Converted %d panoptic masks of %s to semantic masks in %s", len(records), dataset_name, root)
    elif not check_manifest(f"the semantic conversion of panoptic dataset '{dataset_name}'", root):
        write_manifest(root)  # converted before manifests existed: complete by construction (atomic folder)
    return [{**r, "sem_seg_file_name": os.path.join(root, name)} for r, name in zip(records, names)]
