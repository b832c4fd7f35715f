"""Datasets and mappers."""
from . import datasets  # noqa: F401
from . import dataset_mappers  # noqa: F401  (registers the dataset mappers)
