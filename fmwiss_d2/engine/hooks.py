"""Training hooks."""
import torch

from detectron2.engine import HookBase
from detectron2.utils import comm


class IterationSeedHook(HookBase):
    """Seeds torch's generator before every step from (seed, iteration, rank), so random choices inside the
    model (point sampling, dropout) are the same in a resumed run as in an uninterrupted one."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self):
        it = self.trainer.iter
        torch.manual_seed((self.seed * 1_000_003 + it * comm.get_world_size() + comm.get_rank()) % 2**62)
