"""The built-in synthetic world ("shapes"): a deterministic, procedurally generated segmentation dataset.

Why: nothing can be downloaded on the machines this project is built on, yet every code path (incremental
steps, weak labels, zero-shot classes, panoptic and instance evaluation, foundation-model pretraining) must
run end to end on a CPU in minutes. The world is built so that the problems of the field are real here:
several objects per image with occlusion (instance separation), cluttered textured backgrounds made of
"stuff" regions (background shift), co-occurring classes, and a caption per image (image-text pretraining).

Layout of a generated world (all under one folder, named by seed, size and counts)::

    images/{train,val}/000123.jpg         RGB images
    sem_seg/{train,val}/000123.png         VOC-style semantic masks: 0 background, 1..10 objects, 255 border
    panoptic/{train,val}/000123.png        COCO panoptic PNGs (id = R + 256 G + 256^2 B)
    annotations/instances_{split}.json     COCO instance annotations (RLE masks)
    annotations/panoptic_{split}.json      COCO panoptic annotations (things 1..10, stuff 11..14)
    annotations/labels_{split}.json        image-level labels and one caption per image
    world.json                             the generator's parameters and version
    manifest.json                          every other file with its size (see check_world)

Every image is drawn from its own random stream (seed, split, index), so the files are byte-identical for
the same parameters and a validation image does not change when the training-set size does.

The held-out *test* split (:func:`ensure_split`, registered as ``{prefix}_*_test``) has the same layout with
``split = test`` in a sibling folder of its own, named by what its images depend on and by its size
(``...-test500-...``). It is kept out of the train/val folder and out of :class:`WorldSpec` on purpose: the
train/val files, the folder name and every cache key derived from the spec (the tiny CLIP and DINO checkpoints)
stay exactly what they were before the split existed, and its size can change without touching them.
"""
from __future__ import annotations

import colorsys
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ...utils.errors import DamagedCacheError
from ...utils.io import atomic_directory, atomic_write_json
from ...utils.manifest import MANIFEST, check_manifest, damaged, manifest_problems, read_manifest, write_manifest

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
# Image ``i`` of split ``s`` is drawn from the random stream SeedSequence([seed, SPLIT_STREAMS[s], i]).
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
DEFAULT_NUM_TEST = 500  # images of the held-out test split (its own folder: module docstring)

THING_CLASSES = [
    "disc", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon", "crescent", "heart",
]
STUFF_CLASSES = ["sky", "wall", "grass", "sand"]
SEM_SEG_CLASSES = ["background"] + THING_CLASSES  # VOC-style: background first, objects 1..10
PANOPTIC_CLASSES = THING_CLASSES + STUFF_CLASSES  # contiguous panoptic ids: things 0..9, stuff 10..13
PLURALS = {name: name + ("es" if name.endswith("ss") else "s") for name in THING_CLASSES}

# One hue family and one texture per class: colour and texture are cues, shape is the defining one.
_THING_HUES = [0.0, 0.08, 0.15, 0.25, 0.35, 0.47, 0.58, 0.68, 0.78, 0.9]
_THING_TEXTURES = ["solid", "stripes", "checker", "solid", "gradient", "stripes", "dots", "noise", "solid", "gradient"]
THING_COLORS = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.9)) for h in _THING_HUES]
STUFF_COLORS = [(135, 190, 235), (150, 110, 100), (70, 150, 60), (215, 195, 140)]
SEM_SEG_COLORS = [(0, 0, 0)] + THING_COLORS

# What each class looks like, in words that do not name it: (texture, colour, outline) of a thing, (texture,
# colour) of a stuff class. Each word is shared by several classes (star: "solid" like the disc and the crescent,
# "yellow green" between the yellow triangle and the green ring), so a text model trained on captions that use
# them places a class next to the classes that look like it -- the structure zero-shot methods transfer from
# seen to unseen classes (real CLIP learns it from web captions; docs/pading.md). Written from the generator's
# hues, textures and shapes above.
CLASS_ATTRIBUTES = {
    "disc": ("solid", "red", "round"),
    "square": ("striped", "orange", "angular"),
    "triangle": ("checkered", "yellow", "angular pointed"),
    "star": ("solid", "yellow green", "pointed"),
    "ring": ("shaded", "green", "round hollow"),
    "cross": ("striped", "cyan", "angular"),
    "diamond": ("dotted", "cyan blue", "angular pointed"),
    "hexagon": ("noisy", "blue", "angular"),
    "crescent": ("solid", "purple", "round pointed"),
    "heart": ("shaded", "purple red", "round pointed"),
    "sky": ("shaded", "blue"),
    "wall": ("bricked", "red"),
    "grass": ("grainy", "green"),
    "sand": ("grainy", "yellow"),
}


def class_description(name: str) -> str:
    """The class's attribute words and its name, e.g. ``"solid yellow green pointed star"``: the text a
    zero-shot classifier embeds for a class of this world when it is set to describe classes."""
    return " ".join((*CLASS_ATTRIBUTES[name], name))


# Object placement of a world. "scene": objects of radius 0.1-0.22 of the side anywhere (the default world, a
# VOC-like scene). "object_centric": ImageNet-like photos -- large objects (radius 0.35-0.5) placed near the
# centre (offset at most 0.15 of the side) -- the kind of data DINO is pretrained on, whose photographer bias
# is what makes its CLS attention find objects (see pretrain_dino.py).
LAYOUTS = {
    "scene": {"radius": (0.1, 0.22), "centre_offset": None},
    "object_centric": {"radius": (0.35, 0.5), "centre_offset": 0.15},
}

MIN_VISIBLE_INTERIOR = 24  # pixels an object must keep outside the ignore border, else it is re-placed
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass(frozen=True)
class WorldSpec:
    """Parameters that fully determine a world; its folder name is derived from them."""

    seed: int = 0
    image_size: int = 128
    num_train: int = 2000
    num_val: int = 500
    min_objects: int = 2
    max_objects: int = 5
    layout: str = "scene"  # a key of LAYOUTS: where objects go and how large they are

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown world layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects} and {self.max_objects}")

    @property
    def folder_name(self) -> str:
        return self._folder(f"train{self.num_train}-val{self.num_val}")

    def test_folder_name(self, num_test: int) -> str:
        """Folder of the test split: independent of ``num_train``/``num_val``, which its images do not depend on."""
        return self._folder(f"test{num_test}")

    def _folder(self, counts: str) -> str:
        layout = "" if self.layout == "scene" else f"-{self.layout}"  # the default keeps its historical name
        return (
            f"shapes-v{GENERATOR_VERSION}-seed{self.seed}-size{self.image_size}"
            f"-{counts}-obj{self.min_objects}to{self.max_objects}{layout}"
        )

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


def default_cache_dir() -> str:
    return os.environ.get("FMWISS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fmwiss_d2")


def world_root(spec: WorldSpec, cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or default_cache_dir(), spec.folder_name)


def split_root(spec: WorldSpec, split: str, cache_dir: str | None = None, num_test: int = DEFAULT_NUM_TEST) -> str:
    """The folder holding ``split``: the world's for train/val, the test split's own otherwise."""
    if split == "test":
        return os.path.join(cache_dir or default_cache_dir(), spec.test_folder_name(num_test))
    return world_root(spec, cache_dir)


def split_size(spec: WorldSpec, split: str, num_test: int = DEFAULT_NUM_TEST) -> int:
    return num_test if split == "test" else spec.num_images(split)


# ----------------------------------------------------------------------------------------------- drawing
def _shape_mask(name: str, xx: np.ndarray, yy: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one shape centred at the origin of (xx, yy) (already rotated), radius ``r``."""
    rho = np.hypot(xx, yy)
    if name == "disc":
        return rho <= r
    if name == "square":
        return np.maximum(np.abs(xx), np.abs(yy)) <= 0.8 * r
    if name == "triangle":  # equilateral, circumradius r
        c = 0.5 * r
        return (yy <= c) & (np.sqrt(3) * xx - yy <= r) & (-np.sqrt(3) * xx - yy <= r)
    if name == "star":  # five points: radius interpolates between inner and outer along the angle
        theta = np.arctan2(yy, xx)
        frac = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
        return rho <= r * (0.42 + 0.58 * frac)
    if name == "ring":
        return (rho <= r) & (rho >= 0.55 * r)
    if name == "cross":
        w = 0.3 * r
        return ((np.abs(xx) <= w) & (np.abs(yy) <= r)) | ((np.abs(yy) <= w) & (np.abs(xx) <= r))
    if name == "diamond":
        return np.abs(xx) / (0.6 * r) + np.abs(yy) / r <= 1
    if name == "hexagon":
        ax, ay = np.abs(xx), np.abs(yy)
        return (ay <= r * np.sqrt(3) / 2) & (np.sqrt(3) * ax + ay <= r * np.sqrt(3))
    if name == "crescent":
        shift = 0.45 * r
        return (rho <= r) & (np.hypot(xx - shift, yy) > 0.8 * r)
    if name == "heart":  # implicit heart curve, scaled so it spans about 2r
        x, y = xx / (0.85 * r), -yy / (0.85 * r) + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    raise KeyError(name)


def _texture(kind: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] mixing an object's two colours."""
    if kind == "solid":
        return np.zeros_like(xx)
    if kind == "stripes":
        period = rng.uniform(4, 7)
        return ((xx + yy) / period % 1.0 < 0.5).astype(np.float32)
    if kind == "checker":
        period = rng.uniform(5, 8)
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(5, 7)
        return ((np.hypot(xx / period % 1.0 - 0.5, yy / period % 1.0 - 0.5)) < 0.25).astype(np.float32)
    if kind == "gradient":
        return np.clip(0.5 + (xx - yy) / (4 * max(np.abs(xx).max(), 1)), 0, 1).astype(np.float32)
    if kind == "noise":
        return (rng.random(xx.shape) < 0.35).astype(np.float32)
    raise KeyError(kind)


def _jitter_color(rgb, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    h = (h + rng.uniform(-amount, amount)) % 1.0
    s = float(np.clip(s + rng.uniform(-0.2, 0.1), 0.2, 1))
    v = float(np.clip(v + rng.uniform(-0.25, 0.1), 0.25, 1))
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _background(size: int, rng: np.random.Generator):
    """Two stuff regions split by a wavy horizon, with textures and clutter. Returns (rgb, stuff_map)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = size * rng.uniform(0.3, 0.7) + size * 0.06 * np.sin(xx / size * rng.uniform(2, 8) + rng.uniform(0, 6))
    top, bottom = int(rng.integers(0, 2)), int(rng.integers(2, 4))  # sky|wall above, grass|sand below
    stuff = np.where(yy < horizon, top, bottom).astype(np.int64)
    rgb = np.empty((size, size, 3), np.float32)
    for s in (top, bottom):
        base = _jitter_color(STUFF_COLORS[s], rng, 0.03)
        region = stuff == s
        if STUFF_CLASSES[s] == "sky":
            shade = 1.0 - 0.25 * yy / size
            tex = shade[..., None] * base
        elif STUFF_CLASSES[s] == "wall":
            row = np.floor(yy / 8)
            mortar = ((yy % 8) < 1) | (((xx + 8 * (row % 2)) % 16) < 1)
            tex = np.where(mortar[..., None], base * 1.4, base)
        else:  # grass and sand: grainy
            tex = base * (0.8 + 0.4 * rng.random((size, size, 1), dtype=np.float32))
        rgb[region] = tex[region]
    # clutter: blobs and strokes of random colours that belong to no class
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(1.5, size * 0.06, 2)
        blob = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        rgb[blob] = rng.uniform(30, 230, 3)
    return rgb, stuff


def _border(ids: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different segment id: the VOC-style 'void' band around objects."""
    b = np.zeros(ids.shape, bool)
    dv = ids[1:, :] != ids[:-1, :]
    dh = ids[:, 1:] != ids[:, :-1]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


def render_image(spec: WorldSpec, split: str, index: int):
    """Draws one image. Returns (rgb uint8 HxWx3, instance_ids HxW int, objects, stuff_map).

    ``instance_ids`` is 0 on background and k+1 on the visible pixels of ``objects[k]`` (a class index
    into THING_CLASSES). Objects are painted in order, so later ones occlude earlier ones.
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, SPLIT_STREAMS[split], index]))
    size = spec.image_size
    rgb, stuff = _background(size, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ids = np.zeros((size, size), np.int64)
    objects: list[int] = []
    layout = LAYOUTS[spec.layout]
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        cls = int(rng.integers(0, len(THING_CLASSES)))
        for _attempt in range(8):
            r = size * rng.uniform(*layout["radius"])
            if layout["centre_offset"] is None:
                cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
            else:
                cx, cy = size / 2 + size * rng.uniform(-layout["centre_offset"], layout["centre_offset"], 2)
            angle = rng.uniform(0, 2 * np.pi)
            ca, sa = np.cos(angle), np.sin(angle)
            lx = (xx - cx) * ca + (yy - cy) * sa
            ly = -(xx - cx) * sa + (yy - cy) * ca
            mask = _shape_mask(THING_CLASSES[cls], lx, ly, r, rng)
            candidate = np.where(mask, len(objects) + 1, ids)
            interior = ~_border(candidate)
            counts = np.bincount(candidate[interior], minlength=len(objects) + 2)[1:]
            if counts.min() >= MIN_VISIBLE_INTERIOR:  # the new object and every earlier one stay visible
                break
        else:
            continue  # no placement keeps everything visible: skip this object
        c1 = _jitter_color(THING_COLORS[cls], rng, 0.025)
        c2 = c1 * rng.uniform(0.45, 0.7)
        pattern = _texture(_THING_TEXTURES[cls], lx, ly, rng)[..., None]
        rgb = np.where(mask[..., None], c1 * (1 - pattern) + c2 * pattern, rgb)
        ids = candidate
        objects.append(cls)
    # the first object is always placeable (nothing to occlude), so every image has one or more
    # global photometric noise
    rgb = rgb * rng.uniform(0.85, 1.15) + rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), ids, objects, stuff


def semantic_mask(ids: np.ndarray, objects: list[int]) -> np.ndarray:
    """VOC-style mask: 0 background, 1 + class for objects, 255 on the border band."""
    lut = np.array([0] + [c + 1 for c in objects], np.uint8)
    sem = lut[ids]
    sem[_border(ids)] = 255
    return sem


def caption_for(objects: list[int], stuff_drawn: list[int], rng: np.random.Generator) -> str:
    """One sentence naming every object class in the image (with counts) and the stuff regions."""
    counts: dict[int, int] = {}
    for c in objects:
        counts[c] = counts.get(c, 0) + 1
    order = sorted(counts, key=lambda c: objects.index(c))
    parts = []
    for c in order:
        n = counts[c]
        parts.append(f"a {THING_CLASSES[c]}" if n == 1 else f"{_COUNT_WORDS.get(n, str(n))} {PLURALS[THING_CLASSES[c]]}")
    things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    top, bottom = (STUFF_CLASSES[s] for s in sorted(stuff_drawn))
    template = ["a picture of {t} on {b} under the {a}.", "{t} in front of the {a}, on {b}.",
                "a scene with {t} over {b}."][int(rng.integers(0, 3))]
    return template.format(t=things, a=top, b=bottom)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _generate_one(args):
    """Renders and writes one image's files; returns its annotation entries (picklable, for workers)."""
    spec, split, index, root = args
    rgb, ids, objects, stuff = render_image(spec, split, index)
    stem = f"{index:06d}"
    Image.fromarray(rgb).save(os.path.join(root, "images", split, stem + ".jpg"), quality=95)
    sem = semantic_mask(ids, objects)
    Image.fromarray(sem).save(os.path.join(root, "sem_seg", split, stem + ".png"))

    size = spec.image_size
    image_id = index
    instances, segments = [], []
    for k, cls in enumerate(objects):
        m = ids == k + 1
        seg_id = (k + 1) * 1000 + cls + 1  # unique per image, readable
        area = int(m.sum())
        instances.append({"image_id": image_id, "category_id": cls + 1, "segmentation": _rle(m),
                          "area": area, "bbox": _bbox(m), "iscrowd": 0})
        segments.append({"id": seg_id, "category_id": cls + 1, "area": area, "bbox": _bbox(m), "iscrowd": 0})
    pan = np.zeros((size, size), np.int64)
    for k, seg in enumerate(segments):
        pan[ids == k + 1] = seg["id"]
    stuff_present = sorted(int(s) for s in np.unique(stuff[ids == 0]))
    for s in stuff_present:
        m = (ids == 0) & (stuff == s)
        seg_id = 100 + s  # below every thing id (>= 1000)
        pan[m] = seg_id
        segments.append({"id": seg_id, "category_id": len(THING_CLASSES) + s + 1, "area": int(m.sum()),
                         "bbox": _bbox(m), "iscrowd": 0})
    pan_rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(pan_rgb).save(os.path.join(root, "panoptic", split, stem + ".png"))

    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 7, SPLIT_STREAMS[split], index]))
    drawn_stuff = sorted(int(s) for s in np.unique(stuff))  # the horizon always crosses the image: two regions
    image = {"id": image_id, "file_name": stem + ".jpg", "height": size, "width": size}
    labels = {"image_id": image_id, "file_name": stem + ".jpg",
              "labels": sorted({c + 1 for c in objects}),
              "caption": caption_for(objects, drawn_stuff, rng)}
    panoptic = {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
    return image, instances, panoptic, labels


def _categories():
    things = [{"id": i + 1, "name": n, "isthing": 1, "color": list(THING_COLORS[i]), "supercategory": "shape"}
              for i, n in enumerate(THING_CLASSES)]
    stuff = [{"id": len(THING_CLASSES) + i + 1, "name": n, "isthing": 0, "color": list(STUFF_COLORS[i]),
              "supercategory": "stuff"} for i, n in enumerate(STUFF_CLASSES)]
    return things, stuff


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, sort_keys=True, separators=(",", ":"))


def _generate_split(spec: WorldSpec, split: str, root: str, workers: int, count: int | None = None) -> None:
    for sub in ("images", "sem_seg", "panoptic"):
        os.makedirs(os.path.join(root, sub, split), exist_ok=True)
    count = spec.num_images(split) if count is None else count
    jobs = [(spec, split, i, root) for i in range(count)]
    from tqdm import tqdm

    if workers > 1 and len(jobs) >= 64:
        with ProcessPoolExecutor(workers) as ex:
            results = list(tqdm(ex.map(_generate_one, jobs, chunksize=32), total=len(jobs),
                                desc=f"shapes {split}", leave=False, disable=None))
    else:
        results = [_generate_one(j) for j in tqdm(jobs, desc=f"shapes {split}", leave=False, disable=None)]
    things, stuff = _categories()
    images, anns, pans, labels = [], [], [], []
    for image, inst, pan, lab in results:
        images.append(image)
        for a in inst:
            a["id"] = len(anns) + 1
            anns.append(a)
        pans.append(pan)
        labels.append(lab)
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    _write_json(os.path.join(ann_dir, f"instances_{split}.json"),
                {"images": images, "annotations": anns, "categories": things})
    _write_json(os.path.join(ann_dir, f"panoptic_{split}.json"),
                {"images": images, "annotations": pans, "categories": things + stuff})
    _write_json(os.path.join(ann_dir, f"labels_{split}.json"), {"images": labels, "classes": SEM_SEG_CLASSES})


def ensure_world(spec: WorldSpec, cache_dir: str | None = None, workers: int | None = None) -> str:
    """Returns the folder of the world described by ``spec``, generating it first if it is absent.

    Generation happens in a temporary sibling folder that is renamed into place at the end, so an
    interrupted run never leaves a half-written world behind, and concurrent callers agree on the result.
    An existing world is checked first (:func:`check_world`): a damaged one raises :class:`DamagedCacheError`.
    """
    root = world_root(spec, cache_dir)
    if os.path.isfile(os.path.join(root, "world.json")):
        check_world(spec, root)
        return root
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    logger.info("Generating the synthetic world %s (one-time, cached in %s)", spec.folder_name, os.path.dirname(root))
    with atomic_directory(root, is_complete=lambda r: os.path.isfile(os.path.join(r, "world.json"))) as tmp:
        for split in ("train", "val"):
            _generate_split(spec, split, tmp, workers)
        _write_json(os.path.join(tmp, "world.json"), {"version": GENERATOR_VERSION, **asdict(spec)})
        write_manifest(tmp)
    check_world(spec, root)
    return root


# ---------------------------------------------------------------------------------------- self-check
def _expected_files(spec: WorldSpec) -> list[str]:
    """Every file the generator writes for ``spec``."""
    files = ["world.json"]
    for split in ("train", "val"):
        files += [f"annotations/{kind}_{split}.json" for kind in ("instances", "panoptic", "labels")]
        for i in range(spec.num_images(split)):
            files += [f"images/{split}/{i:06d}.jpg", f"sem_seg/{split}/{i:06d}.png", f"panoptic/{split}/{i:06d}.png"]
    return files


def _unreadable(path: str) -> str | None:
    """Why a world file cannot be read in full (None if it can): images are decoded, JSON files parsed."""
    try:
        if path.endswith(".json"):
            with open(path) as f:
                json.load(f)
        else:
            with Image.open(path) as im:
                im.load()
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError) as e:
        return f"unreadable: {e}"
    return None


def _damaged(spec: WorldSpec, root: str, problems: list[str]) -> DamagedCacheError:
    return damaged("the synthetic world", root, problems, f"it is generated again, byte-identical ({spec.folder_name})")


def check_world(spec: WorldSpec, root: str) -> None:
    """Raises :class:`DamagedCacheError` naming the first missing or resized files of a generated world.

    Cheap (one ``os.stat`` per file, no decoding), so it runs every time a world is used. A world generated
    before manifests existed is checked once in full (every file present and decodable) and then given its
    manifest; one that fails is reported as damaged, never blessed.
    """
    try:
        sizes = read_manifest(root)
    except DamagedCacheError as e:
        raise _damaged(spec, root, [str(e)]) from e
    if sizes is None:
        return _adopt(spec, root)
    problems = manifest_problems(root, sizes)
    if problems:
        raise _damaged(spec, root, problems)


def _adopt(spec: WorldSpec, root: str) -> None:
    logger.info("Checking the synthetic world %s once in full (it predates manifests)", root)
    problems = []
    for rel in _expected_files(spec):
        why = _unreadable(os.path.join(root, rel))
        if why is not None:
            problems.append(f"{rel} {why}")
    if problems:
        raise _damaged(spec, root, problems)
    try:
        write_manifest(root)
    except OSError as e:  # a read-only cache: the full check runs again next time
        logger.warning("Cannot write %s in %s (%s)", MANIFEST, root, e)


def ensure_split(spec: WorldSpec, split: str, cache_dir: str | None = None, num_test: int = DEFAULT_NUM_TEST,
                 workers: int | None = None) -> str:
    """Returns the folder holding ``split`` (see :func:`split_root`), generating it first if it is absent."""
    if split != "test":
        return ensure_world(spec, cache_dir, workers)
    root = split_root(spec, split, cache_dir, num_test)
    fix = f"it is generated again, byte-identical ({os.path.basename(root)})"
    if os.path.isfile(os.path.join(root, "world.json")):
        if not check_manifest("the synthetic world's test split", root, fix):
            write_manifest(root)  # generated before manifests existed (its folder was renamed into place whole)
        return root
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    logger.info("Generating the test split %s (one-time)", os.path.basename(root))
    with atomic_directory(root, is_complete=lambda r: os.path.isfile(os.path.join(r, "world.json"))) as tmp:
        _generate_split(spec, split, tmp, workers, count=num_test)
        params = {k: v for k, v in asdict(spec).items() if k not in ("num_train", "num_val")}
        _write_json(os.path.join(tmp, "world.json"), {"version": GENERATOR_VERSION, **params, "num_test": num_test})
        write_manifest(tmp)
    return root


# ------------------------------------------------------------------------------------------ registration
def _load_labels(root: str, split: str) -> dict:
    with open(os.path.join(root, "annotations", f"labels_{split}.json")) as f:
        return {e["file_name"]: e for e in json.load(f)["images"]}


def load_shapes_sem_seg(spec: WorldSpec, split: str, cache_dir: str | None = None,
                        num_test: int = DEFAULT_NUM_TEST) -> list[dict]:
    """Semantic records in detectron2's format, plus ``image_labels`` (class ids) and ``caption``."""
    root = ensure_split(spec, split, cache_dir, num_test)
    labels = _load_labels(root, split)
    records = []
    for i in range(split_size(spec, split, num_test)):
        stem = f"{i:06d}"
        lab = labels[stem + ".jpg"]
        records.append({
            "file_name": os.path.join(root, "images", split, stem + ".jpg"),
            "sem_seg_file_name": os.path.join(root, "sem_seg", split, stem + ".png"),
            "height": spec.image_size, "width": spec.image_size, "image_id": i,
            "image_labels": list(lab["labels"]), "caption": lab["caption"],
        })
    return records


def _panoptic_metadata() -> dict:
    n_things = len(THING_CLASSES)
    return {
        "thing_classes": list(THING_CLASSES),
        "thing_colors": list(THING_COLORS),
        "stuff_classes": list(PANOPTIC_CLASSES),
        "stuff_colors": list(THING_COLORS) + list(STUFF_COLORS),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(n_things)},
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(PANOPTIC_CLASSES))},
        "label_divisor": 1000,
    }


def register_shapes(prefix: str = "shapes", spec: WorldSpec = WorldSpec(), cache_dir: str | None = None,
                    num_test: int = DEFAULT_NUM_TEST) -> None:
    """Registers ``{prefix}_{sem_seg,instance,panoptic}_{train,val,test}``; nothing is generated until loaded."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.coco import load_coco_json
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    for split in SPLIT_STREAMS:
        root = split_root(spec, split, cache_dir, num_test)
        common = {"world_spec": asdict(spec), "world_root": root, "num_test": num_test,
                  "class_descriptions": {n: class_description(n) for n in PANOPTIC_CLASSES}}
        name = f"{prefix}_sem_seg_{split}"
        DatasetCatalog.register(name, lambda s=split: load_shapes_sem_seg(spec, s, cache_dir, num_test))
        MetadataCatalog.get(name).set(
            stuff_classes=list(SEM_SEG_CLASSES), stuff_colors=list(SEM_SEG_COLORS), ignore_label=255,
            evaluator_type="sem_seg", image_root=os.path.join(root, "images", split),
            sem_seg_root=os.path.join(root, "sem_seg", split), **common,
        )

        image_root = os.path.join(root, "images", split)
        inst_json = os.path.join(root, "annotations", f"instances_{split}.json")
        name = f"{prefix}_instance_{split}"

        def _load_instances(s=split, n=name, j=inst_json, r=image_root):
            ensure_split(spec, s, cache_dir, num_test)
            return load_coco_json(j, r, n)

        DatasetCatalog.register(name, _load_instances)
        MetadataCatalog.get(name).set(
            thing_classes=list(THING_CLASSES), thing_colors=list(THING_COLORS),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(THING_CLASSES))},
            json_file=inst_json, image_root=image_root, evaluator_type="coco", **common,
        )

        pan_json = os.path.join(root, "annotations", f"panoptic_{split}.json")
        pan_root = os.path.join(root, "panoptic", split)
        name = f"{prefix}_panoptic_{split}"
        meta = _panoptic_metadata()

        def _load_panoptic(s=split, j=pan_json, r=image_root, p=pan_root, m=meta):
            ensure_split(spec, s, cache_dir, num_test)
            return load_coco_panoptic_json(j, r, p, m)

        DatasetCatalog.register(name, _load_panoptic)
        MetadataCatalog.get(name).set(
            panoptic_root=pan_root, panoptic_json=pan_json, image_root=image_root, ignore_label=255,
            evaluator_type="coco_panoptic_seg", **meta, **common,
        )


def register_shapes_from_cfg(cfg, prefix: str = "shapes") -> WorldSpec:
    """Re-registers ``{prefix}_*`` for the world described by ``cfg.SHAPES`` (the defaults are registered at
    import). Tasks built on ``shapes_sem_seg_*`` follow automatically: they look their base up by name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    spec = WorldSpec(seed=cfg.SHAPES.SEED, image_size=cfg.SHAPES.IMAGE_SIZE, num_train=cfg.SHAPES.NUM_TRAIN,
                     num_val=cfg.SHAPES.NUM_VAL)
    cache_dir = cfg.SHAPES.CACHE_DIR or None
    num_test = cfg.SHAPES.NUM_TEST
    current = [MetadataCatalog.get(f"{prefix}_sem_seg_{s}").get("world_root") for s in ("train", "test")]
    if current == [world_root(spec, cache_dir), split_root(spec, "test", cache_dir, num_test)]:
        return spec
    for kind in ("sem_seg", "instance", "panoptic"):
        for split in SPLIT_STREAMS:
            name = f"{prefix}_{kind}_{split}"
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
    register_shapes(prefix, spec, cache_dir, num_test)
    from .zero_shot import reregister_splits_on

    reregister_splits_on(prefix)  # zero-shot splits copy their bases' metadata (paths of this world)
    return spec
