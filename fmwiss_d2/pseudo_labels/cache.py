"""A source's pseudo labels for a whole dataset, computed once and reused.

The cache folder is keyed by the source (its :meth:`cache_key`), the dataset's name and its files (name, size,
modification time) and image labels, so a changed source setting or a regenerated dataset gets a new folder.
Each image's labels are one ``.npz`` written atomically; a fill that is interrupted leaves only whole files
and the next fill computes the missing ones only. A finished fill writes the folder's manifest (every file with
its size), checked at each use: a damaged file is named, with how to recompute it.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Dict, List, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..utils.errors import DamagedCacheError
from ..utils.io import atomic_open
from ..utils.manifest import check_manifest, write_manifest
from .base import PseudoLabelContext, PseudoLabels, PseudoLabelSource


def _file_identity(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


class PseudoLabelCache:
    """Pseudo labels of ``source`` for the records of ``dataset_name`` (see module docstring).

    Stored per image: ``classes`` (the channels with any non-zero score), their ``scores`` quantised to uint8
    and ``valid``; :meth:`load` gives back a :class:`PseudoLabels` with K channels for one image.
    """

    def __init__(self, source: PseudoLabelSource, dataset_name: str, records: Sequence[Dict], cache_root: str,
                 num_classes: int):
        self.source = source
        self.records = list(records)
        self.num_classes = int(num_classes)
        ident = {
            "source": source.cache_key(), "dataset": dataset_name, "num_classes": self.num_classes,
            "files": [_file_identity(r["file_name"]) + [list(map(int, r.get("image_labels", [])))]
                      for r in self.records],
        }
        key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        name = ident["source"].get("source", type(source).__name__)
        self.folder = os.path.join(cache_root, "pseudo_labels", f"{dataset_name}-{name}-{key}")

    def path(self, index: int) -> str:
        return os.path.join(self.folder, f"{index:07d}.npz")

    @property
    def complete(self) -> bool:
        """A finished fill whose files all match its manifest (a damaged one raises, naming the files)."""
        return os.path.isdir(self.folder) and check_manifest("the pseudo-label cache", self.folder)

    def missing(self) -> List[int]:
        if self.complete:
            return []
        return [i for i in range(len(self.records)) if not os.path.isfile(self.path(i))]

    def fill(self, context: PseudoLabelContext, *, batch_size: int = 8, device: str = "cpu",
             read_image=None) -> int:
        """Computes the images not yet cached, in batches of images of one size; returns how many it computed."""
        from detectron2.data import detection_utils as utils

        read_image = read_image or (lambda fn: utils.read_image(fn, format="RGB"))
        todo = self.missing()
        by_size: Dict[tuple, List[int]] = {}
        for i in todo:
            r = self.records[i]
            by_size.setdefault((r.get("height"), r.get("width")), []).append(i)
        bar = tqdm(total=len(todo), desc=f"pseudo labels ({os.path.basename(self.folder)})", disable=None)
        done = 0
        for group in by_size.values():
            for start in range(0, len(group), batch_size):
                idx = group[start: start + batch_size]
                images = torch.stack([torch.from_numpy(np.array(read_image(self.records[i]["file_name"])))
                                      .permute(2, 0, 1).float() for i in idx]).to(device)
                labels = [torch.as_tensor(self.records[i].get("image_labels", []), dtype=torch.long) for i in idx]
                out = self.source(images, labels, context)
                for j, i in enumerate(idx):
                    self._write(i, out.scores[j].cpu(), out.valid[j].cpu())
                done += len(idx)
                bar.update(len(idx))
        bar.close()
        write_manifest(self.folder)
        return done

    def _write(self, index: int, scores: torch.Tensor, valid: torch.Tensor) -> None:
        classes = torch.nonzero(scores.flatten(1).amax(1) > 0).flatten()
        q = (scores[classes].clamp(0, 1) * 255).round().to(torch.uint8)
        with atomic_open(self.path(index), "wb") as f:
            np.savez_compressed(f, classes=classes.numpy().astype(np.int16), scores=q.numpy(),
                                valid=np.packbits(valid.numpy().astype(bool)), shape=np.asarray(valid.shape))

    def load(self, index: int) -> PseudoLabels:
        """One image's pseudo labels, (1, K, H, W) scores (quantised to 1/255) and (1, H, W) valid."""
        path = self.path(index)
        try:
            with np.load(path) as z:
                h, w = (int(v) for v in z["shape"])
                scores = torch.zeros(self.num_classes, h, w)
                scores[torch.as_tensor(z["classes"]).long()] = torch.as_tensor(z["scores"]).float() / 255
                valid = torch.as_tensor(np.unpackbits(z["valid"])[: h * w].reshape(h, w).astype(bool))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DamagedCacheError(f"pseudo-label file {path!r} (image {self.records[index]['file_name']}) cannot "
                                    f"be read ({e}); delete it (or its folder) and fill the cache again") from e
        return PseudoLabels(scores[None], valid[None])
