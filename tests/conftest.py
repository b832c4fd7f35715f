"""Shared fixtures: a tiny synthetic world generated once per test session in a temporary cache."""
import os

import pytest

os.environ.setdefault("FMWISS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "tests"))


@pytest.fixture(scope="session")
def tiny_spec():
    from fmwiss_d2.data.datasets.shapes import WorldSpec

    return WorldSpec(seed=3, image_size=64, num_train=24, num_val=8)


@pytest.fixture(scope="session")
def tiny_world(tiny_spec, tmp_path_factory):
    """(spec, cache_dir, root) of a tiny world registered as ``tiny_shapes_*``."""
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.datasets.shapes import ensure_world, register_shapes

    cache = str(tmp_path_factory.mktemp("world"))
    root = ensure_world(tiny_spec, cache, workers=1)
    if "tiny_shapes_sem_seg_train" not in DatasetCatalog.list():
        register_shapes("tiny_shapes", tiny_spec, cache)
    return tiny_spec, cache, root
