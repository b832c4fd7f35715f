"""Datasets and mappers."""
from . import datasets  # noqa: F401
