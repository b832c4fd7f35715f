#!/usr/bin/env python
"""Cost of deterministic mode, and torch.compile of the MSDeformAttn pixel decoder; prints ONE JSON line.

1. ``determinism``: backward time of ``fmwiss_d2::ms_deform_attn`` with the default and the deterministic
   backward, at the Mask2Former shapes of ``tools/bench/ms_deform_attn.py`` (batch 2, levels 64x64, 32x32,
   16x16, 8 heads x 32 channels, 4 points, one query per pixel). On the CPU kernel both modes are the same
   code (it is always deterministic), so the ratio measures only noise; on a GPU (float32, float16 and
   bfloat16 with float32 locations, as under autocast) it compares atomicAdd with the sorted gather.
   ``bitwise_repeat`` says whether two deterministic backward passes gave identical bits. The two modes are
   timed alternately (A, B, A, B, ...) so that drifting load on a shared machine affects both alike.
2. ``compile``: the pixel decoder of a config (default: the shapes Mask2Former, ``MSDeformAttnPixelDecoder``)
   on random backbone features of a ``--size`` image, eager vs ``torch.compile`` (inductor): the largest
   difference of the outputs, graph breaks (and whether any is at the op), and the median times of the
   forward (eval, no_grad) and of forward+backward (train), eager and compiled timed alternately, with the
   median ratio of adjacent eager / compiled runs (``*_paired_speedup``).

    python tools/bench/ms_deform_attn_determinism.py [--only determinism|compile] [--repeat 10] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from ms_deform_attn import BATCH, CHANNELS, HEADS, make_inputs  # noqa: E402  (the op benchmark's shapes)

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "mask2former_semantic.yaml")


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _commit():
    """The checkout measured (``-dirty`` with uncommitted changes), for the README's tables."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def _median_ms(samples):
    return round(statistics.median(samples) * 1e3, 3)


def bench_determinism(device, dtype, loc_dtype, repeat, warmup):
    from fmwiss_d2.modeling.ops import functions

    value, ss, lsi, loc, w = make_inputs(device, dtype)
    loc, w = loc.to(loc_dtype), w.to(loc_dtype)
    grad = torch.randn(BATCH, loc.shape[1], HEADS * CHANNELS, generator=torch.Generator().manual_seed(1))
    grad = grad.to(device=device, dtype=dtype)
    backward = torch.ops.fmwiss_d2.ms_deform_attn_backward
    kernel = functions.describe_kernel(dtype, device, loc_dtype)

    def run(deterministic):
        previous = functions.set_deterministic(deterministic)
        try:
            _sync(device)
            t0 = time.perf_counter()
            out = backward(grad, value, ss, lsi, loc, w)
            _sync(device)
            return time.perf_counter() - t0, out
        finally:
            functions.set_deterministic(previous)

    for _ in range(warmup):
        run(False)
        run(True)
    times = {False: [], True: []}
    for _ in range(repeat):
        for mode in (False, True):
            times[mode].append(run(mode)[0])
    a, b = run(True)[1], run(True)[1]
    default_ms, det_ms = _median_ms(times[False]), _median_ms(times[True])
    return {
        "kernel": kernel,
        "default_bwd_ms": default_ms,
        "deterministic_bwd_ms": det_ms,
        "ratio": round(det_ms / default_ms, 3),
        "default_min_max_ms": [round(min(times[False]) * 1e3, 3), round(max(times[False]) * 1e3, 3)],
        "deterministic_min_max_ms": [round(min(times[True]) * 1e3, 3), round(max(times[True]) * 1e3, 3)],
        "bitwise_repeat": all(torch.equal(x, y) for x, y in zip(a, b)),
    }


def build_pixel_decoder_inputs(config, size, batch, device):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    import fmwiss_d2.modeling  # noqa: F401  (registers the pixel decoders)
    from fmwiss_d2 import add_fmwiss_config
    from fmwiss_d2.modeling.pixel_decoder import build_pixel_decoder

    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.merge_from_file(config)
    widths = list(cfg.MODEL.TINY.WIDTHS) if cfg.MODEL.BACKBONE.NAME == "build_tiny_backbone" else [256, 512, 1024, 2048]
    names = ["res2", "res3", "res4", "res5"]
    shapes = {n: ShapeSpec(channels=c, stride=4 * 2**i) for i, (n, c) in enumerate(zip(names, widths))}
    torch.manual_seed(0)
    decoder = build_pixel_decoder(cfg, shapes).to(device)
    g = torch.Generator().manual_seed(1)
    features = {n: torch.randn(batch, s.channels, size // s.stride, size // s.stride, generator=g).to(device)
                for n, s in shapes.items()}
    return decoder, features


def bench_compile(config, size, batch, device, repeat, warmup):
    from fmwiss_d2.modeling.ops import functions

    decoder, features = build_pixel_decoder_inputs(config, size, batch, device)

    def flat(outputs):
        mask_features, multi_scale = outputs
        return [mask_features] + list(multi_scale)

    def timed_pair(eager_fn, compiled_fn):
        """Median times of both, run alternately (shared machines drift; which one goes first alternates too),
        and the median of the ratios eager / compiled of adjacent runs (each pair saw about the same load)."""
        for _ in range(warmup):
            eager_fn()
            compiled_fn()
        samples = ([], [])
        for i in range(repeat):
            pairs = list(zip((eager_fn, compiled_fn), samples))
            for fn, out in pairs if i % 2 == 0 else pairs[::-1]:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                out.append(time.perf_counter() - t0)
        paired = round(statistics.median(e / c for e, c in zip(*samples)), 3)
        return _median_ms(samples[0]), _median_ms(samples[1]), paired

    def fwd(model):
        def run():
            with torch.no_grad():
                return flat(model(features))
        return run

    def fwd_bwd(model):
        def run():
            loss = sum(o.square().mean() for o in flat(model(features)))
            loss.backward()
            return loss
        return run

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(decoder.eval())(features)
    reasons = [str(getattr(r, "reason", r)) for r in explanation.break_reasons]
    result = {
        "config": os.path.relpath(config, ROOT),
        "image_size": size,
        "batch": batch,
        "kernel": functions.describe_kernel(torch.float32, device),
        "graph_count": explanation.graph_count,
        "graph_break_count": explanation.graph_break_count,
        "graph_break_at_op": any("ms_deform_attn" in r for r in reasons),
        "graph_break_reasons": sorted(set(r.splitlines()[0][:160] for r in reasons)),
    }
    torch._dynamo.reset()
    compiled = torch.compile(decoder)

    decoder.eval()
    eager_out = fwd(decoder)()
    t0 = time.perf_counter()
    compiled_out = fwd(compiled)()
    result["compile_fwd_s"] = round(time.perf_counter() - t0, 1)
    diffs = [(a - b).abs().max().item() for a, b in zip(eager_out, compiled_out)]
    scale = max(a.abs().max().item() for a in eager_out)
    result["fwd_max_abs_diff"] = max(diffs)
    result["fwd_max_abs_output"] = round(scale, 3)
    result["fwd_allclose_fp32"] = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(eager_out, compiled_out))
    result["eager_fwd_ms"], result["compiled_fwd_ms"], result["fwd_paired_speedup"] = timed_pair(
        fwd(decoder), fwd(compiled))
    result["fwd_speedup"] = round(result["eager_fwd_ms"] / result["compiled_fwd_ms"], 3)

    decoder.train()
    t0 = time.perf_counter()
    fwd_bwd(compiled)()
    result["compile_fwd_bwd_s"] = round(time.perf_counter() - t0, 1)
    decoder.zero_grad()
    fwd_bwd(decoder)()
    eager_grads = [p.grad.clone() for p in decoder.parameters() if p.grad is not None]
    decoder.zero_grad()
    fwd_bwd(compiled)()
    compiled_grads = [p.grad.clone() for p in decoder.parameters() if p.grad is not None]
    result["grad_max_rel_diff"] = max(
        ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(compiled_grads, eager_grads)
    )
    result["eager_fwd_bwd_ms"], result["compiled_fwd_bwd_ms"], result["fwd_bwd_paired_speedup"] = timed_pair(
        fwd_bwd(decoder), fwd_bwd(compiled))
    result["fwd_bwd_speedup"] = round(result["eager_fwd_bwd_ms"] / result["compiled_fwd_bwd_ms"], 3)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["determinism", "compile"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config of the pixel decoder (compile part)")
    parser.add_argument("--size", type=int, default=256, help="image size of the pixel decoder's features")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    report = {
        "bench": "ms_deform_attn_determinism",
        "commit": _commit(),
        "torch": torch.__version__,
        "cpu_threads": args.threads,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "repeat": args.repeat,
    }
    if args.only in (None, "determinism"):
        det = {"cpu_kernel_fp32": bench_determinism("cpu", torch.float32, torch.float32, args.repeat, args.warmup),
               # as under CPU autocast: bfloat16 value, float32 locations / weights, float32 accumulation
               "cpu_kernel_bf16": bench_determinism("cpu", torch.bfloat16, torch.float32, args.repeat, args.warmup)}
        if cuda:
            for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
                loc_dtype = torch.float32
                det[f"cuda_kernel_{name}"] = bench_determinism("cuda", dtype, loc_dtype, args.repeat, args.warmup)
        report["determinism"] = det
    if args.only in (None, "compile"):
        report["compile"] = {"cpu": bench_compile(args.config, args.size, args.batch, "cpu", args.repeat,
                                                  args.warmup)}
        if cuda:
            report["compile"]["cuda"] = bench_compile(args.config, args.size, args.batch, "cuda", args.repeat,
                                                      args.warmup)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
