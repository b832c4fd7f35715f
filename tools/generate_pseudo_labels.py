#!/usr/bin/env python
"""Pseudo labels of a dataset split from any registered source (cached, resumable), measured against the masks.

    python tools/generate_pseudo_labels.py --config-file configs/shapes/mib_deeplabv3.yaml --source CoSegmentation \
        --split val INCREMENTAL.STEP 1
    python tools/generate_pseudo_labels.py --config-file CFG --source CLIPSource --split train INCREMENTAL.STEP 1
    python tools/generate_pseudo_labels.py --config-file CFG --source CoSegmentation --split val INCREMENTAL.STEP 1 \
        PSEUDO_LABELS.COSEG.USE_SEEDS False          # a setting of the source: its own cache folder

``--split train`` is the step's training set; ``val``/``test`` are those images as the step would train on them
(the step's image labels; old and future classes count as background), where the masks measure the pseudo labels.
An interrupted run computes only the images it had not finished. Prints a table (per-class IoU, mIoU, coverage)
and writes it as JSON (``--output``, default ``OUTPUT_DIR/pseudo_labels/<source>_<split>.json``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fmwiss_d2.pseudo_labels.generate import load_step_config, format_results, generate_pseudo_labels  # noqa: E402
from fmwiss_d2.utils.errors import run_cli  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--source", required=True, help="a registered pseudo-label source (CoSegmentation, CLIPSource, ...)")
    p.add_argument("--split", default="train", help="train (default), val or test")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-images", type=int, default=0, help="the split's first N images only (a quick look)")
    p.add_argument("--output", default="", help="result JSON (default OUTPUT_DIR/pseudo_labels/<source>_<split>.json)")
    p.add_argument("--cache-dir", default=None, help="cache root (default $FMWISS_CACHE or ~/.cache/fmwiss_d2)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    cfg = load_step_config(args.config_file, args.opts)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "pseudo_labels", f"{args.source}_{args.split}.json")
    result = generate_pseudo_labels(cfg, args.source, args.split, batch_size=args.batch_size, output=output,
                                    cache_root=args.cache_dir, max_images=args.max_images)
    print(format_results(result))
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    run_cli(main)
