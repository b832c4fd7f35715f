"""Zero-shot splits: seen / unseen classes of a dataset, defined once as data and registered as datasets.

A split names a base dataset per data split (train; val, test, ...) and the classes that are *unseen*: no training
annotation of them may reach the model. Optionally ``seen`` lists the seen classes; classes in neither list are
*excluded* (COCO 48/17 uses 65 of COCO's 80 classes): dropped from every split. The protocol is the one of the
zero-shot segmentation papers (ZS3Net, ZegFormer, PADing, arXiv 2306.11087 Sec. 4.1):

* training records keep every image (by default, ``train_images`` below), but every annotation of an unseen (or
  excluded) class is removed: panoptic segments and instance annotations are dropped from the record, semantic
  pixels become 255 through the registered ``label_lut`` (one lookup in the mapper, as for incremental tasks). An
  unseen object in a training image is therefore *void*, never a background label (though an unmatched query on it
  still learns "no object").
* evaluation records are the base's, unchanged (unseen annotations kept; excluded ones removed).

``train_images: seen_only`` (default ``all``) trains on the images without any unseen annotation only, the
training set of PADing's public code for COCO panoptic (its ``panoptic_train2017_seen.json``): a query is then
never taught that an unseen object is "no object", at the price of fewer training images. It needs a panoptic or
instance base (a semantic base's records do not say which classes an image holds).

Model class ids are the base dataset's contiguous ids (every class, seen or not): a text classifier scores all of
them, and training masks out the unseen ones (``seen_classes`` / ``unseen_classes`` in the metadata).
Registered datasets, for a split named ``S`` on base kind ``panoptic``, ``instance`` or ``sem_seg``:
``S_{train,val,...}`` (the base's kind), and for a panoptic base also ``S_sem_seg_{train,val,...}`` (its semantic
version, for mIoU).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ...utils.errors import UnknownNameError
from .panoptic_to_semantic import is_panoptic, segment_class_ids, semantic_classes, semantic_colors, semantic_records
from .tasks import IGNORE_LABEL, TaskDefinitionError, read_definition_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroShotSplit:
    name: str
    classes: tuple[str, ...]  # every class of the base dataset, in model (contiguous id) order
    unseen: tuple[str, ...]
    excluded: tuple[str, ...]  # neither seen nor unseen: removed everywhere
    train: str  # base dataset of the training split
    evals: tuple[tuple[str, str], ...]  # (suffix, base dataset) of every evaluation split
    train_images: str = "all"  # "all" or "seen_only" (module docstring)

    @property
    def seen(self) -> list[str]:
        return [c for c in self.classes if c not in self.unseen and c not in self.excluded]

    @property
    def seen_ids(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) if c in self.seen]

    @property
    def unseen_ids(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) if c in self.unseen]

    @property
    def inference_ids(self) -> list[int]:
        """Classes a model may predict at test time (seen + unseen, in id order)."""
        return sorted(self.seen_ids + self.unseen_ids)

    def kept_ids(self, split: str) -> set[int]:
        return set(self.seen_ids) if split == "train" else set(self.inference_ids)

    def label_lut(self, split: str) -> np.ndarray:
        """uint8[256]: a kept class keeps its id, any other class (and 255) becomes 255."""
        lut = np.full(256, IGNORE_LABEL, np.uint8)
        for i in self.kept_ids(split):
            lut[i] = i
        return lut

    def dataset_name(self, split: str, kind: str = "") -> str:
        return f"{self.name}_{kind + '_' if kind else ''}{split}"

    def filter_record(self, record: dict, split: str, base: str) -> dict:
        """The record without the annotations of classes not kept in ``split`` (semantic pixels: ``label_lut``)."""
        keep = self.kept_ids(split)
        record = dict(record)
        if "segments_info" in record:
            ids = segment_class_ids(base, record)
            record["segments_info"] = [s for s in record["segments_info"] if ids[int(s["id"])] in keep]
        if "annotations" in record:
            record["annotations"] = [a for a in record["annotations"] if a["category_id"] in keep]
        return record

    def holds_unseen(self, record: dict, base: str) -> bool:
        """Whether a panoptic or instance record annotates any unseen class."""
        unseen = set(self.unseen_ids)
        if "segments_info" in record:
            ids = segment_class_ids(base, record)
            return any(ids[int(s["id"])] in unseen for s in record["segments_info"])
        return any(a["category_id"] in unseen for a in record.get("annotations", ()))


TRAIN_IMAGES = ("all", "seen_only")


def _base_classes(dataset_name: str) -> list[str]:
    """Class names by contiguous id: a panoptic dataset's semantic classes, an instance dataset's
    ``thing_classes``, a semantic dataset's ``stuff_classes``."""
    from detectron2.data import MetadataCatalog

    kind = _kind(dataset_name)
    if kind == "panoptic":
        return semantic_classes(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    classes = meta.get("thing_classes") if kind == "instance" else meta.get("stuff_classes")
    if not classes:
        raise TaskDefinitionError(f"dataset '{dataset_name}' has neither thing_classes nor stuff_classes in its "
                                  "MetadataCatalog entry; register it as a panoptic, instance or semantic dataset")
    return list(classes)


def _kind(dataset_name: str) -> str:
    """"panoptic", "instance" (``thing_classes`` only) or "sem_seg"."""
    from detectron2.data import MetadataCatalog

    if is_panoptic(dataset_name):
        return "panoptic"
    meta = MetadataCatalog.get(dataset_name)
    return "instance" if meta.get("thing_classes") and not meta.get("stuff_classes") else "sem_seg"


def split_from_dict(name: str, spec: dict) -> ZeroShotSplit:
    """A split from its plain-data form (the form of ``configs/tasks/zero_shot/*.yaml``)::

        {"train": "shapes_panoptic_train", "val": {"val": "shapes_panoptic_val", "test": "shapes_panoptic_test"},
         "unseen": ["star", "hexagon", "heart", "sand"],     # class names or ids of the train dataset
         "seen": [...],                                       # optional; default: every class not unseen
         "train_images": "all"}                               # optional; or "seen_only" (module docstring)
    """
    where = f"zero-shot split '{name}'"
    unknown = set(spec) - {"train", "val", "unseen", "seen", "train_images"}
    if unknown:
        raise TaskDefinitionError(f"{where}: unknown keys {sorted(unknown)}; allowed: train, val, unseen, seen, "
                                  "train_images")
    for key in ("train", "val", "unseen"):
        if key not in spec:
            raise TaskDefinitionError(f"{where}: missing key '{key}'")
    classes = _base_classes(spec["train"])

    def names(key: str) -> list[str]:
        values = spec[key]
        if not isinstance(values, (list, tuple)) or not values:
            raise TaskDefinitionError(f"{where}: '{key}' expects a non-empty list of class names or ids, not {values!r}")
        out = []
        for c in values:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                if not 0 <= c < len(classes):
                    raise TaskDefinitionError(f"{where}: {key}: class id {c} is out of range for '{spec['train']}' "
                                              f"(ids 0..{len(classes) - 1})")
                c = classes[c]
            if c not in classes:
                raise TaskDefinitionError(f"{where}: {key}: unknown class '{c}' (not a class of '{spec['train']}')")
            out.append(c)
        return out

    unseen = names("unseen")
    seen = names("seen") if "seen" in spec else [c for c in classes if c not in unseen]
    both = sorted(set(seen) & set(unseen))
    if both:
        raise TaskDefinitionError(f"{where}: classes both seen and unseen: {both}")
    val = spec["val"]
    evals = tuple(sorted(val.items())) if isinstance(val, dict) else (("val", val),)
    excluded = tuple(c for c in classes if c not in seen and c not in unseen)
    train_images = spec.get("train_images", "all")
    if train_images not in TRAIN_IMAGES:
        raise TaskDefinitionError(f"{where}: train_images must be one of {list(TRAIN_IMAGES)}, not {train_images!r}")
    if train_images == "seen_only" and _kind(spec["train"]) == "sem_seg":
        raise TaskDefinitionError(f"{where}: train_images 'seen_only' needs a panoptic or instance training dataset, "
                                  f"and '{spec['train']}' is semantic (its records do not list their classes); "
                                  "use train_images 'all'")
    return ZeroShotSplit(name, tuple(classes), tuple(c for c in classes if c in unseen), excluded, spec["train"], evals,
                         train_images)


# ------------------------------------------------------------------------------------- registration
SPLITS: dict[str, ZeroShotSplit] = {}


def _load(split: ZeroShotSplit, which: str, base: str, semantic: bool) -> list[dict]:
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get(base)
    if which == "train" and split.train_images == "seen_only":
        total = len(records)
        records = [r for r in records if not split.holds_unseen(r, base)]
        logger.info("%s: %d of %d training images hold no unseen class and are kept (train_images: seen_only)",
                    split.dataset_name(which), len(records), total)
        if not records:
            raise TaskDefinitionError(f"zero-shot split '{split.name}': every training image of '{base}' holds an "
                                      "unseen class, so train_images 'seen_only' leaves none; use train_images 'all'")
    if semantic and is_panoptic(base):
        records = semantic_records(base, records)
    records = [split.filter_record(r, "train" if which == "train" else "val", base) for r in records]
    logger.info("%s: %d images of %s (unseen annotations %s)", split.dataset_name(which), len(records), base,
                "removed" if which == "train" else "kept")
    return records


def register_zero_shot_split(name: str, spec: dict | ZeroShotSplit) -> ZeroShotSplit:
    """Registers the split's datasets (module docstring); returns the split."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    split = spec if isinstance(spec, ZeroShotSplit) else split_from_dict(name, spec)
    SPLITS[name] = split
    for which, base in [("train", split.train)] + list(split.evals):
        lut_split = "train" if which == "train" else "val"
        kinds = [("", False)] + ([("sem_seg", True)] if is_panoptic(base) else [])
        for kind, semantic in kinds:
            ds = split.dataset_name(which, kind)
            if ds in DatasetCatalog.list():
                DatasetCatalog.remove(ds)
                MetadataCatalog.remove(ds)
            DatasetCatalog.register(ds, lambda s=split, w=which, b=base, m=semantic: _load(s, w, b, m))
            meta = {k: v for k, v in MetadataCatalog.get(base).as_dict().items() if k != "name"}
            if _kind(base) == "instance":
                meta.pop("json_file", None)  # COCOEvaluator builds its ground truth from the filtered records
            if semantic:
                for key in ("panoptic_root", "panoptic_json", "thing_dataset_id_to_contiguous_id",
                            "stuff_dataset_id_to_contiguous_id", "thing_classes", "thing_colors"):
                    meta.pop(key, None)
                colors = semantic_colors(base)
                meta.update(stuff_classes=list(split.classes), ignore_label=IGNORE_LABEL,
                            **({"stuff_colors": colors} if colors else {}))
            if semantic or _kind(base) == "sem_seg":
                meta["label_lut"] = split.label_lut(lut_split).tolist()
            meta["evaluator_type"] = "zero_shot_" + ("sem_seg" if semantic else _kind(base))
            MetadataCatalog.get(ds).set(**meta, zero_shot=name, base_dataset=base,
                                        seen_classes=split.seen_ids, unseen_classes=split.unseen_ids)
    return split


def reregister_splits_on(prefix: str) -> None:
    """Registers again every split whose base datasets start with ``prefix`` (their copied metadata, e.g. the
    panoptic JSON, must follow a re-registered world: ``register_shapes_from_cfg``)."""
    for name, split in list(SPLITS.items()):
        if all(base.startswith(prefix + "_") for base in [split.train] + [b for _, b in split.evals]):
            register_zero_shot_split(name, split)


def get_zero_shot_split(name: str) -> ZeroShotSplit:
    if name not in SPLITS:
        raise UnknownNameError(f"Unknown zero-shot split '{name}' (METHOD.PADING.SPLIT). Registered: "
                               f"{', '.join(sorted(SPLITS))}; or give a split YAML file (configs/tasks/zero_shot/*.yaml)")
    return SPLITS[name]


def resolve_zero_shot_split(name_or_file: str) -> ZeroShotSplit:
    """A registered split's name, or a YAML file (``name:`` plus the keys of :func:`split_from_dict`)."""
    if not name_or_file.endswith((".yaml", ".yml")):
        return get_zero_shot_split(name_or_file)
    name, spec = read_definition_file(name_or_file, "split", "configs/tasks/zero_shot/")
    return register_zero_shot_split(name, spec)


# -------------------------------------------------------------------------------------------- built in
# PADing's panoptic split (repo heshuting555/PADing): 14 unseen of COCO panoptic's 133 classes.
COCO_PANOPTIC_UNSEEN = ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
                        "sky-other-merged", "grass-merged", "playingfield", "river", "road", "tree-merged"]
# PADing's COCO-Stuff split (ZegFormer's): 15 unseen of 171. PADing's "ids 156-170" are their positions in its own
# class list, reordered with the unseen classes last; by name, the split holds in any class order.
COCO_STUFF_UNSEEN = ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard", "clouds",
                     "grass", "playingfield", "river", "road", "tree", "wall-concrete"]
# Zero-shot instance segmentation (ZSI, Zheng et al. CVPR 2021, after Bansal et al.'s ZSD split): 48 seen and 17
# unseen of 65 classes (the other 15 excluded); and 65 seen / 15 unseen of all 80.
COCO_48_17_UNSEEN = ["airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard",
                     "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors"]
COCO_48_17_SEEN = ["person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep",
                   "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard",
                   "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
                   "pizza", "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven",
                   "toaster", "refrigerator", "book", "clock", "vase", "toothbrush"]
COCO_65_15_UNSEEN = ["airplane", "train", "parking meter", "cat", "bear", "suitcase", "frisbee", "snowboard", "fork",
                     "sandwich", "hot dog", "toilet", "mouse", "toaster", "hair drier"]


def builtin_split_table() -> dict[str, dict]:
    """The built-in splits, in the plain-data form of a YAML file."""
    return {
        # the synthetic world: 3 things (one per texture family) + 1 stuff unseen; trained on the 317 of 2000
        # training images that show none of them (chosen on val, docs/pading.md)
        "shapes_zs": {"train": "shapes_panoptic_train",
                      "val": {"val": "shapes_panoptic_val", "test": "shapes_panoptic_test"},
                      "unseen": ["star", "hexagon", "heart", "sand"], "train_images": "seen_only"},
        # trained on the images without unseen segments, as PADing's public code (its panoptic_train2017_seen.json)
        "coco_zs_panoptic": {"train": "coco_2017_train_panoptic", "val": "coco_2017_val_panoptic",
                             "unseen": COCO_PANOPTIC_UNSEEN, "train_images": "seen_only"},
        # PADing's semantic split on COCO-Stuff (171 classes); needs a registered COCO-Stuff (Mask2Former's names)
        "coco_zs_stuff": {"train": "coco_2017_train_stuff_sem_seg", "val": "coco_2017_test_stuff_sem_seg",
                          "unseen": COCO_STUFF_UNSEEN},
        "coco_zs_48-17": {"train": "coco_2017_train", "val": "coco_2017_val", "unseen": COCO_48_17_UNSEEN,
                          "seen": COCO_48_17_SEEN},
        "coco_zs_65-15": {"train": "coco_2017_train", "val": "coco_2017_val", "unseen": COCO_65_15_UNSEEN},
    }


def register_builtin_zero_shot_splits() -> None:
    """Registers the built-in splits whose base datasets are registered (absent real data is fine: nothing is read
    until loaded)."""
    from detectron2.data import DatasetCatalog

    registered = set(DatasetCatalog.list())
    for name, spec in builtin_split_table().items():
        val = spec["val"] if isinstance(spec["val"], dict) else {"val": spec["val"]}
        if {spec["train"], *val.values()} <= registered:
            register_zero_shot_split(name, spec)
