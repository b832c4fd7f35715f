from .classifier import IncrementalClassifier

__all__ = ["IncrementalClassifier"]
