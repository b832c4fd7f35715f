"""A training loader whose stream of batches depends only on (seed, iteration): resuming at iteration k
yields exactly the batches an uninterrupted run would have seen, and N processes with batch B/N see,
together, the same images (with the same augmentations) as one process with batch B."""
import contextlib
import random
from typing import Callable, Dict, List

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from detectron2.utils import comm

__all__ = ["DeterministicBatchStream", "build_deterministic_train_loader", "training_records"]


def training_records(cfg) -> List[Dict]:
    """The records of ``DATASETS.TRAIN``; with ``INPUT.SUPERVISION image`` each carries ``image_labels`` in
    model ids (kept when the dataset already gives them, e.g. an incremental step's; else read from the cached
    per-image class table), which is all a weakly supervised run may learn from."""
    from detectron2.data import DatasetCatalog, get_detection_dataset_dicts

    from ..data.datasets.tasks import dataset_image_labels

    supervision = cfg.INPUT.SUPERVISION
    if supervision not in ("pixel", "image"):
        raise ValueError(f"INPUT.SUPERVISION must be 'pixel' or 'image', not '{supervision}'")
    if supervision == "pixel":
        return get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    records = []
    for name in cfg.DATASETS.TRAIN:
        part = DatasetCatalog.get(name)
        if part and "image_labels" not in part[0]:
            part = dataset_image_labels(name, part)
        records.extend(part)
    return records


@contextlib.contextmanager
def _seeded(seed: int):
    """Seeds numpy's and Python's global generators (used by detectron2's augmentations), then restores them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _identity(x):
    return x


class DeterministicBatchStream(IterableDataset):
    """Infinite stream of mapped batches for this process.

    Global stream position ``p`` holds dataset index ``perm_e[p mod n]`` with ``e = p // n`` and ``perm_e`` a
    permutation drawn from ``seed + e``; it is mapped under the RNG seed ``(seed, p)``. Process ``r`` of ``W``
    takes positions ``r, r + W, r + 2W, ...``; its batch ``b`` holds its items ``b*B .. (b+1)*B - 1``.
    Loader workers take whole batches round robin, so the order never depends on the number of workers.
    """

    def __init__(self, dataset: List[Dict], mapper: Callable, batch_size: int, *, seed: int, start_iter: int = 0,
                 shuffle: bool = True):
        self.dataset = dataset
        self.mapper = mapper
        self.batch_size = batch_size
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.shuffle = shuffle
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        self._perm_cache = (None, None)

    def index(self, position: int) -> int:
        n = len(self.dataset)
        epoch, i = divmod(position, n)
        if not self.shuffle:
            return i
        if self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm_cache = (epoch, torch.randperm(n, generator=g).tolist())
        return self._perm_cache[1][i]

    def batch(self, b: int) -> List[Dict]:
        out = []
        for j in range(b * self.batch_size, (b + 1) * self.batch_size):
            p = self.rank + j * self.world_size
            with _seeded(self.seed * 1_000_003 + p):
                out.append(self.mapper(self.dataset[self.index(p)]))
        return out

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_iter + wid
        while True:
            yield self.batch(b)
            b += nw


def build_deterministic_train_loader(dataset: List[Dict], mapper: Callable, *, total_batch_size: int, seed: int,
                                     start_iter: int = 0, num_workers: int = 0) -> DataLoader:
    """Batches of ``total_batch_size / world_size`` mapped records (lists of dicts), starting at ``start_iter``."""
    world = comm.get_world_size()
    assert total_batch_size % world == 0, f"batch {total_batch_size} not divisible by {world} processes"
    stream = DeterministicBatchStream(dataset, mapper, total_batch_size // world, seed=seed, start_iter=start_iter)
    # A private generator: creating the iterator must not draw from torch's global generator, whose state
    # (seeded per iteration by IterationSeedHook) drives the model's own random choices.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
