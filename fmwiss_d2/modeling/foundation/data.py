"""In-memory synthetic-world data and batched augmentations for the tiny foundation-model pretraining.

The whole training split of the default world (2000 images of 128x128) is 98 MB of uint8, so it is read once
and every augmentation runs batched on tensors: random-resized crops are one ``roi_align`` call for the batch.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fmwiss_d2.data.datasets.coco import rgb_to_panoptic_id
from fmwiss_d2.data.datasets.shapes import (_COUNT_WORDS, CLASS_ATTRIBUTES, PLURALS, STUFF_CLASSES, THING_CLASSES,
                                            WorldSpec, ensure_split, load_shapes_sem_seg)

__all__ = ["load_world_split", "random_resized_crops", "flip_horizontal", "color_jitter", "gaussian_blur",
           "instance_crops", "load_world_segments", "crop_captions"]


def load_world_split(spec: WorldSpec, split: str, cache_dir: str | None = None, with_masks: bool = False):
    """``(images uint8 (N, 3, S, S), records)`` (and masks uint8 (N, S, S) when ``with_masks``)."""
    records = load_shapes_sem_seg(spec, split, cache_dir)
    images = np.stack([np.asarray(Image.open(r["file_name"]).convert("RGB")) for r in records])
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    if not with_masks:
        return images, records
    masks = torch.from_numpy(np.stack([np.asarray(Image.open(r["sem_seg_file_name"])) for r in records]))
    return images, records, masks


def random_resized_crops(
    images: torch.Tensor,
    out_size: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    return_boxes: bool = False,
):
    """One random crop per image (area share in ``scale``, aspect in ``ratio``), resized to ``out_size``.

    ``images`` float ``(B, C, H, W)``; returns ``(B, C, out_size, out_size)`` (and the ``(B, 4)`` boxes
    ``x0, y0, x1, y1`` in pixels when ``return_boxes``).
    """
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator) * h * w
    log_r = torch.empty(b).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(4, w)
    ch = torch.sqrt(area / r).clamp(4, h)
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    crops = roi_align(images, boxes.to(images), output_size=out_size, spatial_scale=1.0, sampling_ratio=2,
                      aligned=True)
    return (crops, boxes[:, 1:]) if return_boxes else crops


def flip_horizontal(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator) < p
    out = images.clone()
    out[flip] = out[flip].flip(-1)
    return out


def hue_rotation_matrices(turns: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` rotations of RGB space about the gray axis by ``turns * 360`` degrees (a hue shift that
    keeps gray levels; Rodrigues' formula with the unit axis (1, 1, 1) / sqrt(3))."""
    theta = turns * 2 * math.pi
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    u = torch.full((3,), 3 ** -0.5)
    cross = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(u, u)


def color_jitter(images: torch.Tensor, generator: torch.Generator, brightness=0.3, contrast=0.3,
                 saturation=0.3, hue=0.0, p: float = 1.0) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in ``1 +- amount`` and a hue shift in
    ``+- hue`` turns, applied to a share ``p`` of the images; images in [0, 255]."""
    b = images.shape[0]

    def _f(a):
        return (1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * a).to(images)

    x = images * _f(brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _f(contrast) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * _f(saturation) + gray
    if hue:
        rot = hue_rotation_matrices((torch.rand(b, generator=generator) * 2 - 1) * hue).to(images)
        x = torch.einsum("bij,bjhw->bihw", rot, x)
    x = x.clamp(0, 255)
    if p < 1.0:
        apply = (torch.rand(b, generator=generator) < p).to(images.device).view(-1, 1, 1, 1)
        x = torch.where(apply, x, images)
    return x


def gaussian_blur(images: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                  sigma: tuple[float, float] = (0.1, 1.5), radius: int = 3) -> torch.Tensor:
    """Blurs a share ``p`` of the images with a separable Gaussian of per-image ``sigma`` (uniform in the range),
    kernel ``2 * radius + 1`` taps, reflect padding. ``images`` ``(B, C, H, W)`` float."""
    b, c, h, w = images.shape
    sig = torch.empty(b).uniform_(sigma[0], sigma[1], generator=generator)
    apply = torch.rand(b, generator=generator) < p
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sig[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0).to(images)  # (B * C, taps)
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return torch.where(apply.to(images.device).view(-1, 1, 1, 1), x.reshape_as(images), images)


def instance_crops(spec: WorldSpec, split: str, cache_dir: str | None, out_size: int, context: float = 1.0,
                   max_crops: int | None = None):
    """Single-object crops of ``shapes_instance_{split}``: a square around each bbox, side ``context * max(w, h)``,
    shifted inside the image, resized to ``out_size`` with ``roi_align``.

    Returns ``(crops float (M, 3, out_size, out_size) in [0, 255], labels (M,) in 0..9)``.
    """
    from torchvision.ops import roi_align

    root = ensure_split(spec, split, cache_dir)
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        coco = json.load(f)
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    anns = coco["annotations"][:max_crops] if max_crops else coco["annotations"]
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    crops, labels = [], []
    for image_id, group in sorted(by_image.items()):
        img = np.asarray(Image.open(os.path.join(root, "images", split, files[image_id])).convert("RGB"))
        img = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        boxes = []
        for a in group:
            x, y, w, h = a["bbox"]
            side = min(context * max(w, h), float(min(img.shape[-2:])))
            # the square is shifted inside the image (it still holds the whole box): no padding is sampled
            cx = min(max(x + w / 2, side / 2), img.shape[-1] - side / 2)
            cy = min(max(y + h / 2, side / 2), img.shape[-2] - side / 2)
            boxes.append([0, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
            labels.append(a["category_id"] - 1)
        crops.append(roi_align(img, torch.tensor(boxes, dtype=torch.float32), output_size=out_size,
                               sampling_ratio=2, aligned=True))
    return torch.cat(crops), torch.tensor(labels)


def load_world_segments(spec: WorldSpec, split: str, cache_dir: str | None = None):
    """Panoptic segments of a split: ``(seg (N, S, S) int16 segment index per pixel, categories)``, where
    ``categories[i][j]`` is segment ``j``'s class in ``THING_CLASSES + STUFF_CLASSES`` order (0..9 things,
    10..13 stuff), read from the world's panoptic PNGs and JSON."""
    root = ensure_split(spec, split, cache_dir)
    with open(os.path.join(root, "annotations", f"panoptic_{split}.json")) as f:
        anns = json.load(f)["annotations"]
    segs, cats = [], []
    for ann in anns:
        ids = rgb_to_panoptic_id(Image.open(os.path.join(root, "panoptic", split, ann["file_name"])).convert("RGB"))
        index = np.zeros(ids.shape, np.int16)
        for j, info in enumerate(ann["segments_info"]):
            index[ids == info["id"]] = j
        segs.append(index)
        cats.append([info["category_id"] - 1 for info in ann["segments_info"]])
    return torch.from_numpy(np.stack(segs)), cats


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def crop_captions(seg: torch.Tensor, categories: list[list[int]], boxes: torch.Tensor,
                  min_inside: float = 0.5, *, attributes: bool = False,
                  generator: torch.Generator | None = None) -> list[str]:
    """A caption per crop naming what it shows, in the world's caption words: every object with at least
    ``min_inside`` of its visible pixels inside the box (with counts), then the stuff regions in it.

    ``seg`` ``(B, S, S)`` and ``categories`` from :func:`load_world_segments` (the crops' images); ``boxes``
    ``(B, 4)`` ``x0, y0, x1, y1`` in pixels. Why: a zoomed-in crop paired with the whole image's caption
    names objects it does not show, which blurs which words go with which shape.

    ``attributes``: each mention also says what the class looks like (:data:`CLASS_ATTRIBUTES`), each word group
    kept with probability 1/2 and a thing's name replaced by "shape" with probability 1/4 (at least one word
    left), drawn from ``generator``. Why: words that always come together are learnt as one; dropping them at
    random makes each word stand for what it shows, across the classes that share it.
    """
    n_things = len(THING_CLASSES)
    out = []
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        cats = categories[i]
        total = torch.bincount(seg[i].flatten().long(), minlength=len(cats))
        xa, ya = int(x0), int(y0)
        xb, yb = max(int(math.ceil(x1)), xa + 1), max(int(math.ceil(y1)), ya + 1)
        inside = torch.bincount(seg[i, ya:yb, xa:xb].flatten().long(), minlength=len(cats))
        counts: dict[int, int] = {}
        stuff = set()
        for j, c in enumerate(cats):
            if c < n_things and inside[j] >= min_inside * total[j]:
                counts[c] = counts.get(c, 0) + 1
            elif c >= n_things and inside[j] > 0:
                stuff.add(c - n_things)
        things = []
        for c, k in sorted(counts.items()):
            name = THING_CLASSES[c] if k == 1 else PLURALS[THING_CLASSES[c]]
            if attributes:
                name = _describe(THING_CLASSES[c], name, "shape" if k == 1 else "shapes", generator)
            things.append(f"a {name}" if k == 1 else f"{_COUNT_WORDS.get(k, k)} {name}")
        places = [STUFF_CLASSES[s] for s in sorted(stuff)]
        if attributes:
            places = [_describe(p, p, None, generator) for p in places]
        where = _join(places) if places else "the background"
        out.append(f"a picture of {_join(things)} on {where}." if things else f"a picture of {where}.")
    return out


def _describe(cls: str, name: str, generic: str | None, generator: torch.Generator | None) -> str:
    """``name`` preceded by a random subset of ``cls``'s attribute words; replaced by ``generic`` (when given)
    with probability 1/4 unless no attribute word was kept."""
    words = [w for w in CLASS_ATTRIBUTES[cls] if torch.rand((), generator=generator).item() < 0.5]
    drop_name = generic is not None and torch.rand((), generator=generator).item() < 0.25
    return " ".join(words + [generic if drop_name and words else name])
