from .classifier import IncrementalClassifier
from .teacher import PluginTeacher

__all__ = ["IncrementalClassifier", "PluginTeacher"]
