"""Incremental-learning methods: strategies that turn (current model, frozen old model, batch) into losses.

A method is registered in ``METHOD_REGISTRY`` and chosen with ``INCREMENTAL.METHOD``; it never modifies the
models' code: it reuses their ``forward_outputs`` / ``prepare_targets`` / ``losses`` and the classifier.
"""
from .base import JOINT, METHOD_REGISTRY, IncrementalMethod, build_method  # noqa: F401
from . import mib  # noqa: F401  (registers "mib")
