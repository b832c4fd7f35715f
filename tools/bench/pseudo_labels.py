#!/usr/bin/env python
"""Times a pseudo-label source over the whole training set of a weakly supervised step; prints one JSON line.

    python tools/bench/pseudo_labels.py                       # CoSegmentation as FMWISS's shapes config sets it,
                                                              # shapes_6-4 step 1 training set
    python tools/bench/pseudo_labels.py --source Localizer --threads 1

``first_s``: prepare + every image computed, into a fresh cache folder (removed afterwards); ``cached_s``: the
same command again, every image found in the cache. The foundation models are built (and, for "auto:shapes",
pretrained if absent) before the clock starts.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

from fmwiss_d2.pseudo_labels.generate import load_step_config, generate_pseudo_labels  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default="configs/shapes/fmwiss_deeplabv3.yaml")
    p.add_argument("--source", default="CoSegmentation")
    p.add_argument("--step", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_step_config(args.config_file, ["INCREMENTAL.STEP", str(args.step)] + list(args.opts))
    if args.source in ("CoSegmentation", "CLIPSource"):  # build (or pretrain) the foundation models off the clock
        from fmwiss_d2.modeling.foundation import build_clip_from_cfg, build_dino_from_cfg

        build_clip_from_cfg(cfg)
        if args.source == "CoSegmentation":
            build_dino_from_cfg(cfg)
    root = tempfile.mkdtemp(prefix="pseudo_label_bench_")
    try:
        times = []
        for _ in range(2):
            t0 = time.time()
            r = generate_pseudo_labels(cfg, args.source, "train", batch_size=args.batch_size, cache_root=root,
                                       measure_labels=False)
            times.append(round(time.time() - t0, 2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"source": args.source, "dataset": r["dataset"], "images": r["images"], "first_s": times[0],
                      "cached_s": times[1], "prepare_s": r["prepare_s"], "batch_size": args.batch_size,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
