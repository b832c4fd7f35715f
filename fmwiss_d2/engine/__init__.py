"""Training: the Trainer, its deterministic data stream, hooks and solver."""
from .data_loader import DeterministicBatchStream, build_deterministic_train_loader
from .hooks import IterationSeedHook
from .trainer import Trainer, default_device_check

__all__ = ["Trainer", "DeterministicBatchStream", "build_deterministic_train_loader", "IterationSeedHook",
           "default_device_check"]
