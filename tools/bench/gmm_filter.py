#!/usr/bin/env python
"""DuPL's noise filter: the batched torch EM (``fmwiss_d2.modeling.losses.gmm``) against scikit-learn's
``GaussianMixture`` fitted image by image (what the public DuPL code does); prints one JSON line.

    python tools/bench/gmm_filter.py                  # 16 images of 128x128 per-pixel losses, 1 thread
    python tools/bench/gmm_filter.py --images 32 --size 224

Each image's losses are a synthetic clean/noisy mixture (random weights and means per image, a third of the
images one cluster). Times are medians over ``--repeat`` runs; ``agreement`` is the share of pixels on which
both filters give the same noisy/clean answer (same gamma and eta). Needs scikit-learn (not a dependency of
the package: ``pip install scikit-learn``).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fmwiss_d2.modeling.losses.gmm import gmm_noise_filter  # noqa: E402


def synthetic_losses(images: int, pixels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(images):
        w_noise = 0.0 if i % 3 == 2 else float(torch.empty(1).uniform_(0.1, 0.4, generator=g))
        mu_c = float(torch.empty(1).uniform_(0.1, 0.6, generator=g))
        mu_n = float(torch.empty(1).uniform_(2, 5, generator=g))
        noisy = torch.rand(pixels, generator=g) < w_noise
        x = torch.where(noisy, mu_n + 0.5 * torch.randn(pixels, generator=g),
                        mu_c + 0.15 * torch.randn(pixels, generator=g))
        out.append(x.abs())
    return torch.stack(out)


def sklearn_filter(losses: np.ndarray, gamma: float, eta: float, iters: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    noisy = np.zeros(losses.shape, bool)
    for i, x in enumerate(losses):
        gmm = GaussianMixture(n_components=2, max_iter=iters, tol=1e-3, reg_covar=5e-4, random_state=0)
        gmm.fit(x[:, None])
        means = gmm.means_[:, 0]
        if means.max() - means.min() > eta:
            noisy[i] = gmm.predict_proba(x[:, None])[:, means.argmax()] > gamma
    return noisy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="images are size x size pixels")
    p.add_argument("--iters", type=int, default=20, help="EM iterations (ours; scikit-learn's max_iter)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    losses = synthetic_losses(args.images, args.size * args.size, args.seed)
    mask = torch.ones_like(losses, dtype=torch.bool)
    kw = dict(gamma=0.95, eta=1.0)

    def timed(fn):
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000, out

    gmm_noise_filter(losses, mask, iters=args.iters, **kw)  # warm-up
    ours_ms, ours = timed(lambda: gmm_noise_filter(losses, mask, iters=args.iters, **kw))
    sk_ms, sk = timed(lambda: sklearn_filter(losses.numpy(), iters=args.iters, **kw))
    print(json.dumps({
        "bench": "gmm_filter", "images": args.images, "pixels": args.size * args.size, "em_iters": args.iters,
        "threads": args.threads, "ours_ms": round(ours_ms, 2), "sklearn_ms": round(sk_ms, 2),
        "speedup": round(sk_ms / ours_ms, 1), "agreement": round(float((ours.numpy() == sk).mean()), 5),
        "device": "cpu", "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
