"""Incremental tasks: defined once, as data, and registered as detectron2 datasets per (setting, step, split).

A task is a base semantic-segmentation dataset plus ordered class groups, one per step; the model's class
ids follow the order of the groups (step 0 starts with the background, unless the task has none). A COCO-format
panoptic dataset is a base too: its masks are converted to semantic ones once (``panoptic_to_semantic.py``).
Every registered step dataset carries, in its metadata, the lookup table that turns the base dataset's mask
values into the step's labels, so mappers and evaluators apply one ``lut[mask]`` and never remap pixels in
Python loops.

The protocol follows MiB (Cermelli et al., CVPR 2020; read from the MiB repository's ``tasks.py``,
``dataset/utils.py::filter_images`` and ``dataset/voc.py``):

* training images of step t: *overlap* keeps an image if it shows at least one class of step t;
  *disjoint* additionally drops images showing any class of a future step (all present classes must be
  background, old or current);
* training labels of step t: current classes keep their id, every other class (old or future) becomes
  background, 255 stays 255 — the "background shift" MiB models;
* evaluation after step t: images showing at least one class seen so far (steps 0..t, background
  excluded) are kept; pixels of unseen classes become 255 (ignored).

A task *without* a background class (``background: None``; e.g. on a panoptic dataset, where every pixel is a
thing, a stuff class or unlabeled) has nothing to shift labels to: in training, old and future classes become
255 (ignored) instead, model class 0 is the first class of step 0, and no background IoU is reported. Methods
built on the background shift (MiB) refuse such a task.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
from detectron2.utils.registry import Registry

from ...utils.errors import DamagedCacheError, UnknownNameError, UserError, registry_get
from ...utils.io import atomic_open, atomic_write_json

logger = logging.getLogger(__name__)

SETTINGS = ("overlap", "disjoint")
IGNORE_LABEL = 255


class TaskDefinitionError(UserError, ValueError):
    """A task definition is malformed; the message names the offending entry."""


@dataclass(frozen=True)
class TaskStep:
    classes: tuple[str, ...]  # class names added at this step (step 0 begins with the background, if any)
    train: str  # registered base dataset used for training at this step
    val: tuple[tuple[str, str], ...]  # (suffix, base dataset) pairs evaluated after this step


@dataclass(frozen=True)
class IncrementalTask:
    name: str
    steps: tuple[TaskStep, ...]
    settings: tuple[str, ...] = SETTINGS
    aliases: tuple[tuple[str, str], ...] = ()  # dataset class name -> task class name (e.g. VOC -> COCO)
    background: str | None = "background"  # None: a task without a background class (module docstring)

    # ---------------------------------------------------------------------------- class bookkeeping
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def class_order(self) -> list[str]:
        """All classes in model order: the model's class id is the index in this list."""
        return [c for s in self.steps for c in s.classes]

    def seen_classes(self, step: int) -> list[str]:
        self.check_step(step)
        return [c for s in self.steps[: step + 1] for c in s.classes]

    @property
    def first_class_id(self) -> int:
        """Model id of the first non-background class: 1, or 0 for a task without a background."""
        return 0 if self.background is None else 1

    def new_class_ids(self, step: int) -> list[int]:
        """Model ids of the classes learned at ``step`` (background excluded)."""
        start = len(self.seen_classes(step)) - len(self.steps[step].classes)
        return list(range(max(start, self.first_class_id), len(self.seen_classes(step))))

    def old_class_ids(self, step: int) -> list[int]:
        """Model ids of the classes learned before ``step`` (background excluded)."""
        return list(range(self.first_class_id, len(self.seen_classes(step)) - len(self.steps[step].classes)))

    def check_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise IndexError(
                f"Step {step} is out of range for task '{self.name}', which has steps 0..{self.num_steps - 1}."
            )

    def canonical(self, dataset_class_name: str) -> str:
        return dict(self.aliases).get(dataset_class_name, dataset_class_name)

    # --------------------------------------------------------------------------------- the protocol
    def label_lut(self, step: int, split: str, dataset_classes: list[str]) -> np.ndarray:
        """uint8[256] mapping a base dataset's mask values to this step's labels (see module docstring)."""
        self.check_step(step)
        order = {c: i for i, c in enumerate(self.class_order)}
        keep = set(self.steps[step].classes) if split == "train" else set(self.seen_classes(step))
        lut = np.full(256, IGNORE_LABEL, np.uint8)
        for raw, name in enumerate(dataset_classes):
            name = self.canonical(name)
            if name in keep:
                lut[raw] = order[name]
            elif split == "train" and self.background is not None:
                lut[raw] = order[self.background]  # old and future classes are background while training (MiB)
        return lut

    def keep_image(self, present: set[str], step: int, split: str, setting: str) -> bool:
        """Whether an image whose masks show the classes ``present`` (task names) is used (module docstring)."""
        present = set(present) - {self.background}
        if split != "train":
            return bool(present & set(self.seen_classes(step)))
        if not present & set(self.steps[step].classes):
            return False
        if setting == "disjoint":
            return present <= set(self.seen_classes(step))
        return True

    def dataset_name(self, setting: str, step: int, split: str = "train") -> str:
        return f"{self.name}_{setting}_step{step}_{split}"


# --------------------------------------------------------------------------------- definition as data
def task_from_dict(name: str, spec: dict, dataset_classes=None) -> IncrementalTask:
    """Builds a task from its plain-data form (the same form as ``configs/tasks/*.yaml``)::

        {"train": "shapes_sem_seg_train", "val": "shapes_sem_seg_val", "settings": ["overlap", "disjoint"],
         "steps": [["background", "disc", ...], ["diamond", ...]],     # names or ids of the train dataset
         "aliases": {"aeroplane": "airplane"},                         # optional
         "background": None}                  # optional: no background class (default "background")

    A step may also be a mapping ``{"classes": [...], "train": ..., "val": ...}`` to use other datasets;
    ``val`` is a dataset name or a mapping ``{suffix: dataset}``. ``dataset_classes(dataset_name)`` returns
    a dataset's class names (default: its ``MetadataCatalog`` ``stuff_classes``, or the classes of a panoptic
    dataset's semantic version).
    """
    dataset_classes = dataset_classes or _catalog_classes
    where = f"task '{name}'"
    unknown = set(spec) - {"train", "val", "steps", "settings", "aliases", "background"}
    if unknown:
        raise TaskDefinitionError(f"{where}: unknown keys {sorted(unknown)}; allowed: train, val, steps, settings, aliases, background")
    for key in ("train", "val", "steps"):
        if key not in spec:
            raise TaskDefinitionError(f"{where}: missing key '{key}'")

    def as_list(value, key: str, example: str) -> list:
        """``value`` if it is a list; a string (which would be iterated letter by letter) or another scalar is
        refused, naming the key."""
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TaskDefinitionError(f"{where}: {key} expects a list, e.g. {example}, not {type(value).__name__} "
                                  f"{value!r}")

    settings = tuple(as_list(spec.get("settings", SETTINGS), "'settings'", "[overlap, disjoint]"))
    for s in settings:
        if s not in SETTINGS:
            raise TaskDefinitionError(f"{where}: unknown setting '{s}'; known: {', '.join(SETTINGS)}")
    aliases = spec.get("aliases", {})
    if not isinstance(aliases, dict):
        raise TaskDefinitionError(f"{where}: 'aliases' expects a mapping {{dataset class: task class}}, e.g. "
                                  f"{{aeroplane: airplane}}, not {type(aliases).__name__} {aliases!r}")
    aliases = dict(aliases)
    background = spec.get("background", "background")
    if background is not None and not isinstance(background, str):
        raise TaskDefinitionError(f"{where}: 'background' must be a class name or null (no background class), "
                                  f"not {background!r}")
    base_classes = [aliases.get(c, c) for c in dataset_classes(spec["train"])]
    if not as_list(spec["steps"], "'steps'", "[[background, disc], [square]]"):
        raise TaskDefinitionError(f"{where}: 'steps' is empty")

    steps, seen = [], {}
    for k, raw in enumerate(spec["steps"]):
        entry = raw if isinstance(raw, dict) else {"classes": as_list(raw, f"step {k}", "[disc, square]")}
        train = entry.get("train", spec["train"])
        val = entry.get("val", spec["val"])
        val = tuple(sorted(val.items())) if isinstance(val, dict) else (("val", val),)
        if not entry.get("classes"):
            raise TaskDefinitionError(f"{where}: step {k} has no classes")
        as_list(entry["classes"], f"'classes' of step {k}", "[disc, square]")
        names = []
        for c in entry["classes"]:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                if not 0 <= c < len(base_classes):
                    raise TaskDefinitionError(
                        f"{where}: step {k}: class id {c} is out of range for '{spec['train']}' "
                        f"(ids 0..{len(base_classes) - 1})"
                    )
                c = base_classes[c]
            c = aliases.get(c, c)
            if c not in base_classes:
                raise TaskDefinitionError(
                    f"{where}: step {k}: unknown class '{c}' (not a class of '{spec['train']}')"
                )
            if c in seen:
                raise TaskDefinitionError(f"{where}: class '{c}' appears in step {seen[c]} and step {k}")
            seen[c] = k
            names.append(c)
        steps.append(TaskStep(tuple(names), train, val))
    missing = [c for c in base_classes if c not in seen]
    if missing:
        raise TaskDefinitionError(f"{where}: classes in no step: {missing} (every class of '{spec['train']}' must be assigned)")
    if background is not None and steps[0].classes[0] != background:
        raise TaskDefinitionError(f"{where}: step 0 must begin with the background class '{background}' "
                                  "(or set background: null for a task without a background class)")
    return IncrementalTask(name, tuple(steps), settings, tuple(sorted(aliases.items())), background)


def _catalog_classes(dataset_name: str) -> list[str]:
    """Class names by mask value: ``stuff_classes``, or those of a panoptic dataset's semantic version."""
    from detectron2.data import MetadataCatalog

    from .panoptic_to_semantic import is_panoptic, semantic_classes

    if is_panoptic(dataset_name):
        return semantic_classes(dataset_name)
    classes = MetadataCatalog.get(dataset_name).get("stuff_classes")
    if not classes:
        raise TaskDefinitionError(
            f"dataset '{dataset_name}' is not registered as a semantic-segmentation dataset "
            "(its MetadataCatalog entry has no stuff_classes)"
        )
    return list(classes)


def _catalog_colors(dataset_name: str) -> list:
    """Colours matching :func:`_catalog_classes` (possibly fewer, or none)."""
    from detectron2.data import MetadataCatalog

    from .panoptic_to_semantic import is_panoptic, semantic_colors

    if is_panoptic(dataset_name):
        return semantic_colors(dataset_name)
    return list(MetadataCatalog.get(dataset_name).get("stuff_colors", []))


def _range(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


def builtin_task_table() -> dict[str, dict]:
    """The built-in tasks, in the same plain-data form a user's YAML file uses (ids as in MiB's tasks.py)."""
    voc = {"train": "voc_2012_sem_seg_train_aug", "val": "voc_2012_sem_seg_val"}
    ade = {"train": "ade20k_151_sem_seg_train", "val": "ade20k_151_sem_seg_val", "settings": ["overlap"]}
    # the synthetic world has a held-out test split: recipes are chosen on val, results reported on test
    shapes = {"train": "shapes_sem_seg_train", "val": {"val": "shapes_sem_seg_val", "test": "shapes_sem_seg_test"}}
    table = {
        "voc_19-1": {**voc, "steps": [_range(0, 19), [20]]},
        "voc_15-5": {**voc, "steps": [_range(0, 15), _range(16, 20)]},
        "voc_15-1": {**voc, "steps": [_range(0, 15)] + [[c] for c in range(16, 21)]},
        "voc_10-10": {**voc, "steps": [_range(0, 10), _range(11, 20)]},
        "ade_100-50": {**ade, "steps": [_range(0, 100), _range(101, 150)]},
        "ade_100-10": {**ade, "steps": [_range(0, 100)] + [_range(a, a + 9) for a in range(101, 151, 10)]},
        "ade_50-50": {**ade, "steps": [_range(0, 50), _range(51, 100), _range(101, 150)]},
        "shapes_6-4": {**shapes, "steps": [_range(0, 6), _range(7, 10)]},
        "shapes_6-2-2": {**shapes, "steps": [_range(0, 6), [7, 8], [9, 10]]},
        "shapes_6-1": {**shapes, "steps": [_range(0, 6)] + [[c] for c in range(7, 11)]},
    }
    try:
        from .class_names import COCO_THING_CLASSES, VOC_TO_COCO
    except ImportError:  # pragma: no cover - the COCO tables ship with the package
        return table
    voc_in_coco = list(VOC_TO_COCO.values())
    coco_val = "coco_2017_things_sem_seg_val"
    table["coco-to-voc"] = {
        # WILSON/FMWISS: step 0 learns COCO's 60 non-VOC classes on COCO; step 1 the 20 VOC classes on VOC,
        # evaluated on COCO (all 80) and on VOC.
        "train": "coco_2017_things_sem_seg_train", "val": coco_val, "settings": ["overlap"],
        "aliases": dict(VOC_TO_COCO),
        "steps": [
            ["background"] + [c for c in COCO_THING_CLASSES if c not in voc_in_coco],
            {"classes": voc_in_coco, "train": "voc_2012_sem_seg_train_aug",
             "val": {"val": coco_val, "val_voc": "voc_2012_sem_seg_val"}},
        ],
    }
    return table


# ------------------------------------------------------------------------ per-image classes (cached)
def image_class_table(dataset_name: str, records: list[dict], cache_dir: str | None = None) -> list[list[int]]:
    """Sorted mask values (255 excluded) of every record, read once from the masks and cached on disk.

    The cache key is the dataset name and the list of mask files, so a changed file list recomputes.
    """
    from PIL import Image
    from tqdm import tqdm

    from .shapes import default_cache_dir

    files = [r["sem_seg_file_name"] for r in records]
    key = hashlib.sha1("\n".join([dataset_name] + files).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir or default_cache_dir(), "splits", f"{dataset_name}-{key}.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                table = json.load(f)
        except ValueError as e:
            raise DamagedCacheError(f"the per-image class cache {path!r} is unreadable ({e}); delete it and rerun: "
                                    "it is read again from the masks") from e
        if len(table) != len(files):
            raise DamagedCacheError(f"the per-image class cache {path!r} has {len(table)} entries for {len(files)} "
                                    "images; delete it and rerun: it is read again from the masks")
        return table
    table = []
    for fn in tqdm(files, desc=f"classes of {dataset_name}", leave=False, disable=None):
        values = np.unique(np.asarray(Image.open(fn)))
        table.append([int(v) for v in values if v != IGNORE_LABEL])
    atomic_write_json(path, table)
    return table


def image_labels(values, lut: np.ndarray, background: int | None) -> list[int]:
    """An image's labels in model ids: its mask values mapped by ``lut``, without ignored pixels (255) and the
    background (implicit in every weakly supervised method). At a training step ``lut`` keeps only the
    step's classes, so old and future classes never appear in its image labels."""
    ids = {int(lut[v]) for v in values} - {IGNORE_LABEL}
    return sorted(ids - ({background} if background is not None else set()))


def dataset_image_labels(dataset_name: str, records: list[dict]) -> list[dict]:
    """Records of any registered semantic dataset with ``image_labels`` (model ids), read from the cached
    per-image class table (never from the mask files again); the dataset's ``label_lut`` applies when its
    metadata has one, and class 0 is the background when the dataset calls it "background"."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    lut = np.asarray(meta.get("label_lut") or np.arange(256), dtype=np.int64)
    classes = list(meta.get("stuff_classes") or [])
    background = 0 if classes[:1] == ["background"] else None
    table = image_class_table(dataset_name, records)
    return [{**r, "image_labels": image_labels(v, lut, background)} for r, v in zip(records, table)]


# ------------------------------------------------------------------------------------- registration
TASKS: dict[str, IncrementalTask] = {}


def get_task(name: str) -> IncrementalTask:
    if name not in TASKS:
        raise UnknownNameError(f"Unknown incremental task '{name}' (INCREMENTAL.TASK). Registered tasks: "
                               f"{', '.join(sorted(TASKS))}; or give a task YAML file (configs/tasks/)")
    return TASKS[name]


def _load_step(task: IncrementalTask, setting: str, step: int, split: str, base: str) -> list[dict]:
    from detectron2.data import DatasetCatalog

    from .panoptic_to_semantic import is_panoptic, semantic_records

    records = DatasetCatalog.get(base)
    if is_panoptic(base):
        records = semantic_records(base, records)
    elif records and "sem_seg_file_name" not in records[0]:
        raise TaskDefinitionError(
            f"dataset '{base}' of task '{task.name}' has no sem_seg_file_name in its records; a task's base must be a "
            "semantic-segmentation dataset (e.g. register_sem_seg) or a COCO panoptic one (register_coco_panoptic)")
    classes = [task.canonical(c) for c in _catalog_classes(base)]
    table = image_class_table(base, records)
    lut = task.label_lut(step, "train" if split == "train" else "val", _catalog_classes(base))
    background = None if task.background is None else task.class_order.index(task.background)
    kept = []
    for record, values in zip(records, table):
        present = {classes[v] for v in values if v < len(classes)}
        if task.keep_image(present, step, split, setting):
            kept.append({**record, "image_labels": image_labels(values, lut, background)})
    logger.info("%s: kept %d of %d images of %s", task.dataset_name(setting, step, split), len(kept), len(records), base)
    return kept


def step_training_view(task: IncrementalTask, setting: str, step: int, base: str) -> tuple[list[dict], np.ndarray]:
    """The images of ``base`` as step ``step`` trains on them: the kept records (with the step's image labels)
    and the lookup table to the step's training labels. Measures pseudo labels on a split with masks (val) under
    exactly the labels they stand in for at training."""
    task.check_step(step)
    return _load_step(task, setting, step, "train", base), task.label_lut(step, "train", _catalog_classes(base))


def register_incremental_task(name: str, spec: dict | IncrementalTask, dataset_classes=None) -> IncrementalTask:
    """Registers a task and its datasets ``{name}_{setting}_step{k}_{train|val[...]}``; returns the task."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    task = spec if isinstance(spec, IncrementalTask) else task_from_dict(name, spec, dataset_classes)
    TASKS[name] = task
    for setting in task.settings:
        for k, step in enumerate(task.steps):
            splits = [("train", step.train)] + list(step.val)
            for split, base in splits:
                ds_name = task.dataset_name(setting, k, split)
                if ds_name in DatasetCatalog.list():
                    DatasetCatalog.remove(ds_name)
                    MetadataCatalog.remove(ds_name)
                DatasetCatalog.register(ds_name, lambda t=task, s=setting, k=k, sp=split, b=base: _load_step(t, s, k, sp, b))
                lut_split = "train" if split == "train" else "val"
                colors = dict(zip((task.canonical(c) for c in _catalog_classes(base)), _catalog_colors(base)))
                seen = task.seen_classes(k)
                MetadataCatalog.get(ds_name).set(
                    stuff_classes=seen,
                    stuff_colors=[tuple(colors.get(c, (128, 128, 128))) for c in seen],
                    ignore_label=IGNORE_LABEL,
                    evaluator_type="incremental_sem_seg",
                    label_lut=task.label_lut(k, lut_split, _catalog_classes(base)).tolist(),
                    task=name, step=k, setting=setting, base_dataset=base,
                    old_classes=task.old_class_ids(k), new_classes=task.new_class_ids(k),
                )
    return task


def read_definition_file(path: str, what: str, examples: str) -> tuple:
    """``(name, spec)`` of a task or split YAML file: a mapping with a top-level ``name:``. Why shared: incremental
    tasks and zero-shot splits are both data files, refused the same way when missing or malformed."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what.capitalize()} file '{path}' does not exist (see {examples} for examples)")
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TaskDefinitionError(f"{path}: a {what} file needs a top-level 'name:' and the {what} keys")
    spec = dict(spec)
    return spec.pop("name"), spec


def load_task_file(path: str) -> IncrementalTask:
    """Registers the task defined in a YAML file (``name:`` plus the keys of :func:`task_from_dict`)."""
    name, spec = read_definition_file(path, "task", "configs/tasks/")
    if "unseen" in spec:
        raise TaskDefinitionError(f"{path} defines a zero-shot split (it has 'unseen:'), not an incremental task; "
                                  "give it to METHOD.PADING.SPLIT")
    return register_incremental_task(name, spec)


def resolve_task(name_or_file: str) -> IncrementalTask:
    """``INCREMENTAL.TASK`` may name a registered task or a YAML task file; returns the task."""
    if name_or_file.endswith((".yaml", ".yml")):
        return load_task_file(name_or_file)
    return get_task(name_or_file)


# ------------------------------------------------------------------------------------ task transforms
TASK_TRANSFORM_REGISTRY = Registry("TASK_TRANSFORM")
TASK_TRANSFORM_REGISTRY.__doc__ = "Transforms of a task (what a run trains), chosen by INCREMENTAL.TRANSFORM."


class TaskTransform:
    """The identity: a run trains step k of the task and is evaluated after step k.

    A transform changes what is trained while keeping what it is compared on; ``method`` names the method it
    trains with (None: ``METHOD.NAME``)."""

    method: str | None = None

    def train_task(self, task: IncrementalTask) -> IncrementalTask:
        return task

    def train_step(self, task: IncrementalTask, step: int) -> int:
        return step

    def steps(self, task: IncrementalTask) -> list[int]:
        """The steps of ``task`` a protocol runs (each is trained, then evaluated like that step)."""
        return list(range(task.num_steps))

    def folder(self, step: int) -> str:
        return f"step{step}"


@TASK_TRANSFORM_REGISTRY.register()
class Joint(TaskTransform):
    """The offline upper bound: every class of the task learned in one step (registered as ``{name}-joint``),
    with fine-tuning, evaluated like the task's last step."""

    method = "Finetune"

    def train_task(self, task):
        name = f"{task.name}-joint"
        if name not in TASKS:
            first, last = task.steps[0], task.steps[-1]
            register_incremental_task(name, IncrementalTask(name, (TaskStep(tuple(task.class_order), first.train,
                                                                            last.val),), task.settings,
                                                                task.aliases, task.background))
        return TASKS[name]

    def train_step(self, task, step):
        return 0

    def steps(self, task):
        return [task.num_steps - 1]

    def folder(self, step):
        return "joint"


def get_task_transform(name: str) -> TaskTransform:
    """The transform named ``name`` (``""``: the identity)."""
    if not name:
        return TaskTransform()
    return registry_get(TASK_TRANSFORM_REGISTRY, name, "INCREMENTAL.TRANSFORM")()


def export_split(task: IncrementalTask, setting: str, step: int, split: str, path: str) -> int:
    """Writes the image list of one step dataset as plain text (one image file per line, atomically);
    returns the number of images."""
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get(task.dataset_name(setting, step, split))
    with atomic_open(path) as f:
        f.writelines(r["file_name"] + "\n" for r in records)
    return len(records)


def register_builtin_tasks() -> None:
    """Registers the built-in tasks whose base datasets are registered (absent real data is fine)."""
    from detectron2.data import DatasetCatalog

    registered = set(DatasetCatalog.list())
    for name, spec in builtin_task_table().items():
        bases = {spec["train"]} | {s["train"] for s in spec["steps"] if isinstance(s, dict) and "train" in s}
        if bases <= registered:
            register_incremental_task(name, spec)
