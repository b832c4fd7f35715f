"""Command-line options shared by tools/pretrain_clip.py and tools/pretrain_dino.py."""
import argparse
import logging

import torch

from ...data.datasets.shapes import WorldSpec


def add_pretrain_args(p: argparse.ArgumentParser, defaults) -> None:
    """World (seed, sizes, cache) and training (steps, batch, lr, seed, threads) options; ``defaults`` is the
    tool's pretraining config dataclass."""
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--num-train", type=int, default=WorldSpec.num_train)
    p.add_argument("--num-val", type=int, default=WorldSpec.num_val)
    p.add_argument("--image-size", type=int, default=WorldSpec.image_size)
    p.add_argument("--cache-dir", default=None, help="cache root ($FMWISS_CACHE or ~/.cache/fmwiss_d2)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed, help="training seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def parse_pretrain_args(p: argparse.ArgumentParser, argv, config_cls):
    """Parses, sets up logging and threads; returns (args, world spec, pretraining config)."""
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = WorldSpec(seed=args.world_seed, image_size=args.image_size, num_train=args.num_train, num_val=args.num_val)
    config = config_cls(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    return args, spec, config
