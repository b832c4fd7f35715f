"""FMWISS's memory-based copy-paste: a bank of foreground instances per class, and pasting old ones.

While a step trains, :class:`MemoryBank` keeps up to ``B`` instances (an image crop and its mask, resized to
``S x S``) of every class it sees: from the ground truth at step 0, from the (refined) pseudo labels later.
Each class's slots are a reservoir sample of every instance offered, so the bank is a uniform draw from the
whole step, not its last batches. The bank is an ``nn.Module`` of buffers, so it is saved with the method in
every checkpoint (and restored on resume); it carries its step's identity (task, step, classes). At step t
:func:`paste_instances` pastes instances of randomly chosen *old* classes into the new-class images, with
their labels, so old classes keep appearing, labelled, while the step's own labels know nothing of them.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..utils.errors import UserError
from ..utils.io import atomic_open

__all__ = ["MemoryBank", "MemoryBankMismatchError", "paste_instances"]

BANK_FILE = "memory_bank.pth"  # a bank saved beside a step's final checkpoint (when that step kept none itself)


def _resize_masked(image: torch.Tensor, mask: torch.Tensor, size) -> Tuple[torch.Tensor, torch.Tensor]:
    """``image`` (3, h, w) and ``mask`` (h, w) resized to ``size``: the mask bilinearly (kept where >= 0.5), the
    image as ``resize(image * mask) / resize(mask)``, so the instance's colours never mix with what surrounded it."""
    m = mask[None, None].float()
    num = F.interpolate(image[None].float() * m, size=tuple(size), mode="bilinear", align_corners=False)[0]
    den = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)[0]
    return num / den.clamp_min(1e-6), den[0] >= 0.5


class MemoryBankMismatchError(UserError, ValueError):
    """A memory bank of another task or step was offered; the message names the file and the fix."""


class MemoryBank(nn.Module):
    """Up to ``size`` instances per class of ``num_classes`` classes, each a ``crop`` x ``crop`` uint8 image
    and a bool mask. ``identity``: ``{"task", "step", "classes"}`` of the step the bank belongs to."""

    def __init__(self, num_classes: int, size: int, crop: int, identity: Dict | None = None, min_area: int = 16):
        super().__init__()
        self.size, self.crop, self.min_area = int(size), int(crop), int(min_area)
        self.identity = dict(identity or {})
        self.register_buffer("images", torch.zeros(num_classes, size, 3, crop, crop, dtype=torch.uint8))
        self.register_buffer("masks", torch.zeros(num_classes, size, crop, crop, dtype=torch.bool))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))  # filled slots
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.long))  # instances offered so far

    @property
    def num_classes(self) -> int:
        return self.count.numel()

    def get_extra_state(self):
        return {"identity": self.identity}

    def set_extra_state(self, state):
        self.identity = dict(state.get("identity", {}))

    # ------------------------------------------------------------------------------------------ filling
    @torch.no_grad()
    def add(self, cls: int, image: torch.Tensor, mask: torch.Tensor) -> bool:
        """Offers the instance of class ``cls`` at ``mask`` (H, W) bool in ``image`` (3, H, W) in [0, 255]:
        its bounding box is cropped and resized; kept with reservoir probability size / seen. Instances smaller
        than ``min_area`` pixels are not offered. Returns whether it was stored."""
        if int(mask.sum()) < self.min_area:
            return False
        ys, xs = torch.nonzero(mask, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        crop, m = _resize_masked(image[:, y0:y1, x0:x1], mask[y0:y1, x0:x1], (self.crop, self.crop))
        if not m.any():
            return False
        self.seen[cls] += 1
        if self.count[cls] < self.size:
            slot = int(self.count[cls])
            self.count[cls] += 1
        else:
            slot = int(torch.randint(int(self.seen[cls]), (1,)))
            if slot >= self.size:
                return False
        self.images[cls, slot] = crop.round().clamp(0, 255).to(torch.uint8).to(self.images.device)
        self.masks[cls, slot] = m.to(self.masks.device)
        return True

    @torch.no_grad()
    def add_from_labels(self, image: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> int:
        """Offers, for every class of ``classes`` present in ``labels`` (H, W), its region of ``image``."""
        stored = 0
        for c in classes:
            region = labels == int(c)
            if region.any():
                stored += int(self.add(int(c), image, region))
        return stored

    def available(self, classes: Sequence[int]) -> List[int]:
        """The classes of ``classes`` with at least one instance."""
        return [int(c) for c in classes if int(c) < self.num_classes and int(self.count[int(c)]) > 0]

    # ------------------------------------------------------------------------------- saving, adopting
    def file_state(self) -> Dict:
        return {"identity": self.identity, "images": self.images.cpu(), "masks": self.masks.cpu(),
                "count": self.count.cpu(), "seen": self.seen.cpu()}

    def save(self, path: str) -> None:
        """Written atomically (a kill leaves the old file or the new one)."""
        with atomic_open(path, "wb", fsync=True) as f:
            torch.save(self.file_state(), f)

    @staticmethod
    def read(path: str) -> Dict:
        """The state saved by :meth:`save` at ``path``, or the bank inside a method checkpoint's ``"method"``
        entry (keys ``<prefix>memory_bank.*``); None when the file holds no bank."""
        data = torch.load(path, map_location="cpu", weights_only=False)
        if "images" in data and "identity" in data:
            return data
        method = data.get("method", {}) if isinstance(data, dict) else {}
        keys = {k.rsplit("memory_bank.", 1)[1]: v for k, v in method.items() if "memory_bank." in k}
        if "images" not in keys:
            return None
        return {"identity": keys.get("_extra_state", {}).get("identity", {}), **keys}

    @torch.no_grad()
    def adopt(self, state: Dict, *, expect: Dict, where: str) -> None:
        """Takes over the classes of a saved bank of step ``expect["step"]`` of task ``expect["task"]``, whose
        classes must begin ``expect["classes"]``'s; anything else raises :class:`MemoryBankMismatchError`."""
        have = state.get("identity", {})
        if have.get("task") != expect["task"] or have.get("step") != expect["step"]:
            raise MemoryBankMismatchError(
                f"memory bank {where} belongs to task '{have.get('task')}' step {have.get('step')}, but task "
                f"'{expect['task']}' step {expect['step'] + 1} needs the bank of its step {expect['step']}: point "
                "INCREMENTAL.PREVIOUS_WEIGHTS to that step's final model, or delete the stale bank file")
        classes = list(have.get("classes", []))
        if classes != list(expect["classes"][: len(classes)]) or len(classes) > self.num_classes:
            raise MemoryBankMismatchError(f"memory bank {where} holds classes {classes}, which are not the first "
                                          f"classes of this task's order {list(expect['classes'])}")
        n = state["count"].numel()
        if state["images"].shape[1:] != self.images.shape[1:]:
            raise MemoryBankMismatchError(
                f"memory bank {where} keeps {tuple(state['images'].shape[1:])} (slots, 3, crop, crop) per class, "
                f"this run {tuple(self.images.shape[1:])}: use the same METHOD.FMWISS.BANK_SIZE and BANK_CROP")
        for name in ("images", "masks", "count", "seen"):
            getattr(self, name)[:n] = state[name].to(getattr(self, name).device)


@torch.no_grad()
def paste_instances(images: torch.Tensor, bank: MemoryBank, classes: Sequence[int], num: int,
                    scale: Tuple[float, float] = (0.25, 0.5), sizes: Sequence[Tuple[int, int]] | None = None,
                    avoid: torch.Tensor | None = None, tries: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pastes ``num`` instances per image, each of a class drawn uniformly from the bank's ``classes`` (only
    those may ever be pasted), resized to ``scale`` x the image's shorter side, at a random place inside the
    image's ``sizes`` (h, w) (default: the whole tensor). Returns ``(images, labels)``: ``images`` (N, 3, H, W)
    with the pasted pixels replaced, ``labels`` (N, H, W) int64 the pasted class at every pasted pixel (a
    later paste covers an earlier one), -1 elsewhere. Random draws use torch's global generator.

    ``avoid`` (N, H, W) bool, optional: pixels a paste should not cover (e.g. the new classes' pseudo masks,
    the only supervision those objects have). Of ``tries`` random places the first that covers none of them is
    taken, else the one covering fewest."""
    images = images.clone()
    n, _, h_all, w_all = images.shape
    labels = torch.full((n, h_all, w_all), -1, dtype=torch.long, device=images.device)
    pool = bank.available(classes)
    if not pool or num <= 0:
        return images, labels
    for b in range(n):
        h, w = sizes[b] if sizes is not None else (h_all, w_all)
        for _ in range(num):
            c = pool[int(torch.randint(len(pool), (1,)))]
            slot = int(torch.randint(int(bank.count[c]), (1,)))
            frac = scale[0] + (scale[1] - scale[0]) * float(torch.rand(()))
            side = max(2, min(h, w, int(round(frac * min(h, w)))))
            crop, m = _resize_masked(bank.images[c, slot], bank.masks[c, slot], (side, side))
            crop, m = crop.to(images), m.to(images.device)
            y, x = _place(m, h, w, None if avoid is None else avoid[b], tries)
            region = images[b, :, y: y + side, x: x + side]
            images[b, :, y: y + side, x: x + side] = torch.where(m[None], crop, region)
            lab = labels[b, y: y + side, x: x + side]
            labels[b, y: y + side, x: x + side] = torch.where(m, torch.full_like(lab, c), lab)
    return images, labels


def _place(mask: torch.Tensor, h: int, w: int, avoid: torch.Tensor | None, tries: int) -> Tuple[int, int]:
    """Top-left corner for a ``mask``-shaped paste inside (h, w): random, or the least-covering of ``tries``
    random ones (stopping at the first that covers no ``avoid`` pixel)."""
    side_h, side_w = mask.shape
    best, best_cover = None, None
    for _ in range(1 if avoid is None else max(1, int(tries))):
        y = int(torch.randint(h - side_h + 1, (1,)))
        x = int(torch.randint(w - side_w + 1, (1,)))
        if avoid is None:
            return y, x
        cover = int((avoid[y: y + side_h, x: x + side_w] & mask).sum())
        if best_cover is None or cover < best_cover:
            best, best_cover = (y, x), cover
        if cover == 0:
            break
    return best


def bank_from_ground_truth(bank: MemoryBank, records: Sequence[Dict], classes: Sequence[int], label_lut=None,
                           seed: int = 0) -> int:
    """Fills ``bank`` with the ``classes`` of a *pixel-labelled* step's records (its masks, through the step's
    ``label_lut``), in a seeded random order, stopping once every class is full. Returns the images read.
    For a step 0 trained without the bank (e.g. the runner's shared step 0): the same masks that step learnt from."""
    import numpy as np
    from detectron2.data import detection_utils as utils
    from tqdm import tqdm

    from .dataset_mappers.base import read_label_map

    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    lut = None if label_lut is None else np.asarray(label_lut)
    read = 0
    for i in tqdm(order, desc="memory bank from step-0 masks", disable=None):
        if all(int(bank.count[c]) >= bank.size for c in classes):
            break
        r = records[i]
        labels = read_label_map(r["sem_seg_file_name"], r.get("image_id"))
        if lut is not None:
            full = np.full(256, 255, dtype=np.int64)
            full[: len(lut)] = lut
            labels = full[np.clip(labels, 0, 255)]
        image = torch.as_tensor(np.ascontiguousarray(utils.read_image(r["file_name"], format="RGB").transpose(2, 0, 1)))
        bank.add_from_labels(image, torch.as_tensor(labels), classes)
        read += 1
    return read


def bank_path_beside(checkpoint: str) -> str:
    return os.path.join(os.path.dirname(checkpoint), BANK_FILE)
