"""A training hook for resume tests: records every iteration's losses and can crash after a given one."""
from detectron2.engine import HookBase


class Crash(RuntimeError):
    """The simulated failure."""


class LossRecorder(HookBase):
    """``log[iteration] = {loss name: value}`` (``total_loss`` and every ``loss_*``); raises :class:`Crash` after
    iteration ``crash_after``."""

    def __init__(self, log, crash_after=None):
        self.log, self.crash_after = log, crash_after

    def after_step(self):
        self.log[self.trainer.iter] = {k: v.latest() for k, v in self.trainer.storage.histories().items()
                                       if k.startswith("loss") or k == "total_loss"}
        if self.trainer.iter == self.crash_after:
            raise Crash()
