#!/usr/bin/env python
"""Benchmark of multi-scale deformable attention: PyTorch reference vs compiled kernels.

Shapes are those of a Mask2Former pixel decoder on a 512x512 image: batch 2, levels at 1/8, 1/16, 1/32
(64x64, 32x32, 16x16), 8 heads of 32 channels, 4 points, one query per pixel of every level (5376), each
sampling around its own position with offsets of about 2 pixels (normal, std 2) on every level.

Every variant runs in its own subprocess so that its peak memory is its own: on the CPU the peak resident
set (``ru_maxrss``) and its growth while the op runs (``op_peak_mb``: peak during the timed runs minus the
resident set before the first full-size call); on a GPU ``torch.cuda.max_memory_allocated`` minus the memory
held by the inputs. Times are medians over ``--repeat`` runs after ``--warmup`` runs; forward is timed under
``torch.no_grad()``, forward+backward with gradients for value, sampling locations and attention weights.
Prints ONE JSON line.

    python tools/bench/ms_deform_attn.py [--repeat 10] [--warmup 3] [--threads 2]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPES = [(64, 64), (32, 32), (16, 16)]
BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4


def make_inputs(device, dtype, shapes=SHAPES, batch=BATCH, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S = int(areas.sum())
    L, Lq = len(shapes), S
    value = torch.randn(batch, S, HEADS, CHANNELS, generator=g)
    # as in a Mask2Former encoder layer: query i sits at the centre of its pixel (on its own level) and samples
    # every level around that normalized point, with offsets of a few pixels of the sampled level (the
    # paper's initial offsets are 1 to 4 pixels); points near the border fall partly outside the map
    centres = []
    for h, w in shapes:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        centres.append(torch.stack([xs, ys], -1).view(-1, 2))
    centres = torch.cat(centres)  # (Lq, 2) as (x, y)
    level_wh = spatial_shapes.flip(-1).to(torch.float32)  # (L, 2) as (W, H)
    offsets = torch.randn(batch, Lq, HEADS, L, POINTS, 2, generator=g) * 2.0 / level_wh[:, None, :]
    locations = centres[None, :, None, None, None, :] + offsets
    weights = torch.randn(batch, Lq, HEADS, L * POINTS, generator=g).softmax(-1).view(batch, Lq, HEADS, L, POINTS)
    to = dict(device=device, dtype=dtype)
    return (value.to(**to), spatial_shapes.to(device), level_start_index.to(device), locations.to(**to),
            weights.to(**to))


def variants(cuda: bool):
    names = ["cpu_reference_fp32", "cpu_kernel_fp32"]
    if cuda:
        names += ["cuda_reference_fp32", "cuda_kernel_fp32", "cuda_kernel_fp16", "cuda_kernel_bf16"]
    return names


def worker(name: str, repeat: int, warmup: int, threads: int) -> dict:
    from fmwiss_d2.modeling.ops import kernel_available, ms_deform_attn, ms_deform_attn_reference

    torch.set_num_threads(threads)
    device, impl, dtype_name = name.split("_")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    if impl == "kernel" and not kernel_available(device):
        return {"error": f"fmwiss_d2._C has no {device} kernel (not built?)"}
    fn = ms_deform_attn_reference if impl == "reference" else ms_deform_attn
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def fwd(inputs):
        with torch.no_grad():
            return fn(*inputs)

    def fwd_bwd(inputs, grad):
        value, ss, lsi, loc, w = inputs
        leaves = [t.detach().requires_grad_() for t in (value, loc, w)]
        out = fn(leaves[0], ss, lsi, leaves[1], leaves[2])
        out.backward(grad)
        return [t.grad for t in leaves]

    # load the code paths on tiny inputs so that the memory baseline below includes them
    small = make_inputs(device, dtype, shapes=[(4, 4), (2, 2)], batch=1)
    fwd_bwd(small, torch.ones(1, 20, HEADS * CHANNELS, device=device, dtype=dtype))
    inputs = make_inputs(device, dtype)
    grad = torch.randn(BATCH, inputs[3].shape[1], HEADS * CHANNELS, generator=torch.Generator().manual_seed(1))
    grad = grad.to(device=device, dtype=dtype)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def timed(f, *args):
        for _ in range(warmup):
            f(*args)
        sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            f(*args)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return round(statistics.median(times), 2)

    result = {"fwd_ms": timed(fwd, inputs), "fwd_bwd_ms": timed(fwd_bwd, inputs, grad)}
    if cuda:
        result["op_peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result["peak_rss_mb"] = round(peak / 1024, 1)
        result["op_peak_mb"] = round((peak - base) / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeat, args.warmup, args.threads)))
        return

    results = {}
    for name in variants(torch.cuda.is_available()):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--repeat", str(args.repeat),
               "--warmup", str(args.warmup), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        results[name] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
            "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}

    def ratio(a, b, key):
        try:
            return round(results[a][key] / results[b][key], 2)
        except (KeyError, ZeroDivisionError):
            return None

    report = {
        "bench": "ms_deform_attn",
        "shapes": {"batch": BATCH, "levels": SHAPES, "heads": HEADS, "channels_per_head": CHANNELS,
                   "points": POINTS, "queries": sum(h * w for h, w in SHAPES)},
        "torch": torch.__version__,
        "cpu_threads": args.threads,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "repeat": args.repeat,
        "results": results,
        "speedup": {
            "cpu_fwd": ratio("cpu_reference_fp32", "cpu_kernel_fp32", "fwd_ms"),
            "cpu_fwd_bwd": ratio("cpu_reference_fp32", "cpu_kernel_fp32", "fwd_bwd_ms"),
        },
    }
    if torch.cuda.is_available():
        for k in ("fp32", "fp16", "bf16"):
            report["speedup"][f"cuda_{k}_fwd_bwd"] = ratio("cuda_reference_fp32", f"cuda_kernel_{k}", "fwd_bwd_ms")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
