#!/usr/bin/env python
"""Times the generation of a synthetic world from scratch; prints one JSON line.

    python tools/bench/shapes_generation.py [--num-train 2000] [--num-val 0] [--size 128] [--workers N]
"""
import argparse
import json
import os
import shutil
import tempfile
import time

from fmwiss_d2.data.datasets.shapes import WorldSpec, ensure_world


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args()
    tmp = tempfile.mkdtemp()
    try:
        spec = WorldSpec(seed=0, image_size=a.size, num_train=a.num_train, num_val=a.num_val)
        t = time.perf_counter()
        ensure_world(spec, tmp, workers=a.workers)
        dt = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp)
    n = a.num_train + a.num_val
    print(json.dumps({"bench": "shapes_generation", "images": n, "size": a.size, "seconds": round(dt, 2),
                      "images_per_s": round(n / dt, 1), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
