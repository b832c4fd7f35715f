"""Multi-scale deformable attention beyond correctness: reproducible gradients, torch.compile / export,
autocast (bfloat16 CPU kernel, float16/bfloat16 CUDA kernels) and the build checks (versions, GPU
architectures) with their fallback.

CPU tests always run (kernel tests are skipped when fmwiss_d2._C is not built); CUDA tests need a GPU.
"""
import logging
import sys
import warnings

import pytest
import torch

from fmwiss_d2.modeling.ops import MSDeformAttn, cuda_archs, functions, ms_deform_attn, ms_deform_attn_reference
from fmwiss_d2.modeling.ops.reference import (
    ms_deform_attn_reference_backward,
    ms_deform_attn_reference_backward_deterministic,
)

_C = functions._extension()
needs_kernel = pytest.mark.skipif(_C is None, reason="fmwiss_d2._C is not built (pip install --no-build-isolation -e .)")
needs_cuda_kernel = pytest.mark.skipif(
    not torch.cuda.is_available() or _C is None or not _C.with_cuda,
    reason="needs a GPU and fmwiss_d2._C built with CUDA",
)

# bfloat16 keeps 8 significant bits: one rounding of a result is within 2^-9 relative; the kernels compute in
# float32 on the rounded inputs, so their bfloat16 outputs are within one rounding of the exact result.
BF16_RTOL = 2.0**-8


def level_tables(shapes, device="cpu"):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def make_inputs(shapes=((9, 11), (5, 6), (3, 2)), N=2, H=4, C=16, Lq=60, P=4, dtype=torch.float32,
                loc_dtype=None, seed=0, device="cpu"):
    """Random inputs; locations in [-0.2, 1.2] so that some points fall partly or wholly outside the map."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tables(shapes)
    S, L = int(spatial_shapes.prod(1).sum()), len(shapes)
    value = torch.randn(N, S, H, C, generator=g, dtype=torch.float64)
    loc = torch.rand(N, Lq, H, L, P, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(N, Lq, H, L, P, generator=g, dtype=torch.float64)
    loc_dtype = loc_dtype or dtype
    return (value.to(device=device, dtype=dtype), spatial_shapes.to(device), level_start_index.to(device),
            loc.to(device=device, dtype=loc_dtype), weights.to(device=device, dtype=loc_dtype))


def grads_of(fn, inputs, grad):
    value, ss, lsi, loc, w = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, w)]
    out = fn(leaves[0], ss, lsi, leaves[1], leaves[2])
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.fixture
def restore_state():
    """Restores the deterministic switches and the loader's caches after a test."""
    previous = functions.set_deterministic(False)
    torch_flag = torch.are_deterministic_algorithms_enabled()
    yield
    functions.set_deterministic(previous)
    torch.use_deterministic_algorithms(torch_flag)
    functions._reset_extension_cache()


# ---------------------------------------------------------------------------------------------------------
# deterministic gradients


@needs_kernel
def test_cpu_backward_is_bitwise_reproducible(restore_state):
    """Two backward passes with the same inputs give identical bits on the CPU kernel, in default and in
    deterministic mode (which are the same code on the CPU)."""
    inputs = make_inputs(N=2, H=8, C=32, Lq=300, P=4, seed=1)
    grad = torch.randn(2, 300, 256, generator=torch.Generator().manual_seed(2))
    assert functions.describe_kernel(torch.float32, "cpu").startswith("fmwiss_d2._C CPU kernel")
    first = grads_of(ms_deform_attn, inputs, grad)
    second = grads_of(ms_deform_attn, inputs, grad)
    torch.use_deterministic_algorithms(True)
    assert functions.is_deterministic()
    third = grads_of(ms_deform_attn, inputs, grad)
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b) and torch.equal(a, c)
    # the flag reaches the kernel and changes nothing there
    for a, b in zip(_C.ms_deform_attn_backward(*inputs, grad, deterministic=False),
                    _C.ms_deform_attn_backward(*inputs, grad, deterministic=True)):
        assert torch.equal(a, b)


def test_deterministic_switches(restore_state, monkeypatch):
    monkeypatch.delenv(functions.DETERMINISTIC_ENV, raising=False)
    torch.use_deterministic_algorithms(False)
    assert not functions.is_deterministic()
    torch.use_deterministic_algorithms(True)
    assert functions.is_deterministic()
    torch.use_deterministic_algorithms(False)
    assert functions.set_deterministic(True) is False  # returns the previous setting
    assert functions.is_deterministic()
    functions.set_deterministic(False)
    monkeypatch.setenv(functions.DETERMINISTIC_ENV, "1")
    assert functions.is_deterministic()


def test_reference_deterministic_backward_matches_grid_sample_backward():
    """The fallback's index_put_-based backward (used on GPUs in deterministic mode) equals the
    grid_sampler_2d_backward one; at a NaN location it gives zero gradients, like the kernels."""
    value, ss, lsi, loc, w = make_inputs(N=2, H=3, C=5, Lq=40, P=3, dtype=torch.float64, seed=3)
    grad = torch.randn(2, 40, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = ms_deform_attn_reference_backward(grad, value, ss, lsi, loc, w)
    got = ms_deform_attn_reference_backward_deterministic(grad, value, ss, lsi, loc, w)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)
    loc[1, 2, 0, 1, 0, 0] = float("nan")
    _, grad_loc, grad_w = ms_deform_attn_reference_backward_deterministic(grad, value, ss, lsi, loc, w)
    assert grad_loc[1, 2, 0, 1, 0].eq(0).all() and grad_w[1, 2, 0, 1, 0] == 0
    assert torch.isfinite(grad_loc).all()


# ---------------------------------------------------------------------------------------------------------
# torch.compile and torch.export


class TinyEncoder(torch.nn.Module):
    """Two MSDeformAttn layers with residuals over two levels: the pixel decoder's pattern, in small."""

    def __init__(self, d_model=16, n_levels=2, n_heads=4, n_points=2, layers=2):
        super().__init__()
        self.layers = torch.nn.ModuleList(MSDeformAttn(d_model, n_levels, n_heads, n_points) for _ in range(layers))
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(d_model) for _ in range(layers))

    def forward(self, src, reference_points, spatial_shapes, level_start_index):
        for attn, norm in zip(self.layers, self.norms):
            src = norm(src + attn(src, reference_points, src, spatial_shapes, level_start_index))
        return src


def encoder_inputs(shapes=((6, 8), (3, 4)), N=2, d_model=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ss, lsi = level_tables(shapes, device)
    S = int(ss.prod(1).sum())
    src = torch.randn(N, S, d_model, generator=g).to(device)
    ref = torch.rand(N, S, len(shapes), 2, generator=g).to(device)
    return src, ref, ss, lsi


def test_compile_matches_eager_without_graph_breaks():
    torch.manual_seed(0)
    model = TinyEncoder()
    with torch.no_grad():  # spread the sampling points so that gradients reach every path
        for layer in model.layers:
            layer.sampling_offsets.weight.normal_(0, 0.3)
    src, ref, ss, lsi = encoder_inputs()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(src, ref, ss, lsi)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    ops = [n.target for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("ms_deform_attn" in str(t) for t in ops) == 2  # both layers call the op inside the graph

    leaf = src.clone().requires_grad_()
    eager = model(leaf, ref, ss, lsi)
    eager_grads = torch.autograd.grad(eager.square().sum(), [leaf] + list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    leaf = src.clone().requires_grad_()
    out = compiled(leaf, ref, ss, lsi)
    grads = torch.autograd.grad(out.square().sum(), [leaf] + list(model.parameters()))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_export_runs_the_op():
    torch.manual_seed(1)
    model = TinyEncoder().eval()
    src, ref, ss, lsi = encoder_inputs(seed=1)
    exported = torch.export.export(model, (src, ref, ss, lsi))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.fmwiss_d2.ms_deform_attn.default) == 2
    src2, ref2, _, _ = encoder_inputs(seed=2)  # new inputs of the same shapes
    torch.testing.assert_close(exported.module()(src2, ref2, ss, lsi), model(src2, ref2, ss, lsi), rtol=1e-6,
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# autocast and the bfloat16 CPU kernel


@needs_kernel
@pytest.mark.parametrize("loc_dtype", [torch.bfloat16, torch.float32], ids=["bf16_locations", "fp32_locations"])
def test_bf16_cpu_kernel_matches_float32(loc_dtype):
    """The bfloat16 kernel (float32 accumulation) on bfloat16-rounded inputs equals the float64 reference on
    the same rounded inputs within one bfloat16 rounding of each result (rtol 2^-8); float32 locations give
    float32 location / weight gradients, accurate to float32 accumulation (rtol 1e-4)."""
    inputs = make_inputs(dtype=torch.bfloat16, loc_dtype=loc_dtype, seed=5)
    value, ss, lsi, loc, w = inputs
    assert functions.describe_kernel(torch.bfloat16, "cpu", loc_dtype).startswith("fmwiss_d2._C CPU kernel")
    grad = torch.randn(2, 60, 64, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    before = functions.dispatch_counts()
    out, g_value, g_loc, g_w = grads_of(ms_deform_attn, inputs, grad)
    after = functions.dispatch_counts()
    for op in ("forward", "backward"):  # the kernel ran, not the reference
        key = (op, "kernel", "cpu", "torch.bfloat16")
        assert after.get(key, 0) == before.get(key, 0) + 1
    assert (out.dtype, g_value.dtype, g_loc.dtype, g_w.dtype) == (torch.bfloat16, torch.bfloat16, loc_dtype, loc_dtype)

    ref_inputs = [t.double() for t in (value, loc, w)]
    ref = grads_of(ms_deform_attn_reference, (ref_inputs[0], ss, lsi, ref_inputs[1], ref_inputs[2]), grad.double())
    # the float32 kernel on the same rounded inputs: the path bfloat16 must match
    f32 = grads_of(ms_deform_attn, (value.float(), ss, lsi, loc.float(), w.float()), grad.float())
    loc_rtol = BF16_RTOL if loc_dtype == torch.bfloat16 else 1e-4
    for name, got, exp, exp32, rtol in zip(("output", "value", "locations", "weights"), (out, g_value, g_loc, g_w),
                                           ref, f32, (BF16_RTOL, BF16_RTOL, loc_rtol, loc_rtol)):
        atol = 1e-4 * exp.abs().max().item()  # cancellation: a few results are sums of large opposite terms
        torch.testing.assert_close(got.double(), exp, rtol=rtol, atol=atol, msg=lambda m: f"{name} vs float64: {m}")
        torch.testing.assert_close(got.double(), exp32.double(), rtol=2 * rtol, atol=2 * atol,
                                   msg=lambda m: f"{name} vs float32 kernel: {m}")


@needs_kernel
def test_cpu_autocast_runs_bf16_kernel_and_logs_once(caplog):
    """Under CPU autocast the layer runs the bfloat16 kernel with float32 locations (the op's autocast rule),
    stays within bfloat16 tolerance of float32, and the first forward logs AMP state and kernel once."""
    torch.manual_seed(2)
    m = MSDeformAttn(d_model=32, n_levels=2, n_heads=2, n_points=3)
    src, ref, ss, lsi = encoder_inputs(d_model=32, seed=3)
    functions._logged = False
    before = functions.dispatch_counts()
    with caplog.at_level(logging.INFO, logger="fmwiss_d2.modeling.ops.functions"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(src, ref, src, ss, lsi)
            m(src, ref, src, ss, lsi)
    key = ("forward", "kernel", "cpu", "torch.bfloat16")
    assert functions.dispatch_counts().get(key, 0) == before.get(key, 0) + 2
    lines = [r.getMessage() for r in caplog.records if "multi-scale deformable attention uses" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "AMP on (autocast cpu, bfloat16)" in lines[0] and "CPU kernel for value bfloat16" in lines[0]
    assert "locations/weights float32" in lines[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), m(src, ref, src, ss, lsi), rtol=0, atol=3e-2)
    # the op called directly: value to bfloat16, float32 locations and weights kept (no up-cast of value)
    value, ss2, lsi2, loc, w = make_inputs(seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        direct = ms_deform_attn(value, ss2, lsi2, loc, w)
    assert direct.dtype == torch.bfloat16
    torch.testing.assert_close(direct, _C.ms_deform_attn_forward(value.bfloat16(), ss2, lsi2, loc, w), rtol=0, atol=0)


def test_autocast_compiles_without_graph_breaks():
    torch.manual_seed(3)
    model = TinyEncoder()
    src, ref, ss, lsi = encoder_inputs(seed=4)

    def run(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(src, ref, ss, lsi)

    eager = run(model)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(run)(model)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = run(torch.compile(model, backend="aot_eager", fullgraph=True))
    assert compiled.dtype == eager.dtype
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_mixed_dtypes_fall_back_to_reference(monkeypatch):
    """Without the extension, bfloat16 values with float32 locations run the reference in float32 and return
    bfloat16 (gradients in the dtypes of their inputs)."""
    def missing():
        raise ImportError("No module named 'fmwiss_d2._C'")

    monkeypatch.setattr(functions, "_import_extension", missing)
    functions._reset_extension_cache()
    try:
        inputs = make_inputs(dtype=torch.bfloat16, loc_dtype=torch.float32, Lq=20, seed=8)
        value, ss, lsi, loc, w = inputs
        grad = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, g_value, g_loc, g_w = grads_of(ms_deform_attn, inputs, grad)
        assert (out.dtype, g_value.dtype, g_loc.dtype, g_w.dtype) == (torch.bfloat16, torch.bfloat16) + (torch.float32,) * 2
        expected = ms_deform_attn_reference(value.float(), ss, lsi, loc, w).bfloat16()
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert "PyTorch reference" in functions.describe_kernel(torch.bfloat16, "cpu", torch.float32)
    finally:
        monkeypatch.undo()
        functions._reset_extension_cache()


# ---------------------------------------------------------------------------------------------------------
# the Mask2Former pixel decoder: whole-module compile, autocast


def tiny_mask2former():
    from detectron2.modeling import build_model

    import fmwiss_d2.modeling  # noqa: F401  (registers the meta-architectures)
    from _model_cfg import tiny_cfg

    torch.manual_seed(0)
    return build_model(tiny_cfg("shapes/mask2former_semantic.yaml"))


def decoder_outputs(outputs):
    mask_features, multi_scale = outputs
    return [mask_features] + list(multi_scale)


def test_pixel_decoder_compiles_whole_without_graph_breaks():
    """The whole MSDeformAttnPixelDecoder is one graph (the level shapes are python ints, no ``.tolist()``),
    with the op of every encoder layer inside it; compiled outputs and gradients match eager."""
    model = tiny_mask2former()
    decoder = model.pixel_decoder
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, 64, 64, generator=g))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(decoder)(features)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    ops = [n.target for gr in explanation.graphs for n in gr.graph.nodes if n.op == "call_function"]
    assert sum("ms_deform_attn" in str(t) for t in ops) == len(decoder.encoder.layers)

    def run(module):
        decoder.zero_grad()
        outs = decoder_outputs(module(features))
        sum(o.square().mean() for o in outs).backward()
        return [o.detach() for o in outs], [p.grad.clone() for p in decoder.parameters()]

    eager_outs, eager_grads = run(decoder)
    torch._dynamo.reset()
    outs, grads = run(torch.compile(decoder, backend="aot_eager", fullgraph=True))
    for o, e in zip(outs, eager_outs):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)
    for gr, e in zip(grads, eager_grads):
        torch.testing.assert_close(gr, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_decoder_upsample_equals_interpolate(channels_last):
    """The decoder's bilinear upsampling (backward = aten's kernel as an op, see its comment) gives
    F.interpolate's values and gradients, passes float64 gradcheck, its backward op torch.library.opcheck (fake
    kernel = real shapes), and
    under inductor (which picks the input layout itself, here channels-last) still matches eager."""
    from fmwiss_d2.modeling.pixel_decoder.msdeform_pixel_decoder import upsample_bilinear

    def interpolate(t):
        return torch.nn.functional.interpolate(t, size=(11, 13), mode="bilinear", align_corners=False)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 4, 11, 13, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = upsample_bilinear(a, (11, 13)), interpolate(b)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: upsample_bilinear(t, (11, 13)), (x.clone().requires_grad_(),))
    torch.library.opcheck(torch.ops.fmwiss_d2.upsample_bilinear_backward.default, (grad.float(), [2, 4, 5, 7], [11, 13]))

    x32 = x.float().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: upsample_bilinear(t.transpose(2, 3).exp(), (11, 13)), fullgraph=True)
    out = compiled(x32)
    out.backward(grad.float())
    ref_x = x.float().requires_grad_()
    ref = interpolate(ref_x.transpose(2, 3).exp())
    ref.backward(grad.float())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x32.grad, ref_x.grad, rtol=1e-5, atol=1e-6)


def test_decoder_relu_equals_torch_relu():
    """The decoder's ReLU (backward from its output, see its docstring) gives F.relu's values and gradients
    bitwise, including at exact zeros and at negative zero."""
    from fmwiss_d2.modeling.pixel_decoder.msdeform_pixel_decoder import relu

    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    x[:10] = 0.0
    x[10:20] = -0.0
    grad = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = relu(a), torch.nn.functional.relu(b)
    ours.backward(grad)
    theirs.backward(grad)
    assert torch.equal(ours, theirs) and torch.equal(a.grad, b.grad)
    assert a.grad[:20].eq(0).all()


def test_bf16_pixel_decoder_samples_at_float32_locations(monkeypatch):
    """A decoder converted to bfloat16 (no autocast) gives the op bfloat16 values but float32 sampling
    locations and weights (float32 reference points), and stays within bfloat16 tolerance of float32."""
    from fmwiss_d2.modeling.ops import modules

    model = tiny_mask2former()
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
        expected = decoder_outputs(model.pixel_decoder(features))
    seen = []

    def recording_op(value, spatial_shapes, level_start_index, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype))
        return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)

    monkeypatch.setattr(modules, "ms_deform_attn", recording_op)
    decoder = model.pixel_decoder.to(torch.bfloat16)
    with torch.no_grad():
        got = decoder_outputs(decoder({k: v.bfloat16() for k, v in features.items()}))
    assert seen == [(torch.bfloat16, torch.float32, torch.float32)] * len(decoder.encoder.layers)
    for g, e in zip(got, expected):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e, rtol=0, atol=2e-2 * e.abs().max().item())  # measured: <= 0.9%


def test_mask2former_trains_under_cpu_bf16_autocast():
    """A few training steps of the tiny Mask2Former under CPU bfloat16 autocast: the pixel decoder is no
    float32 island (its encoder's projections and its outputs are bfloat16, the op runs on bfloat16 values),
    the first losses are within bfloat16 tolerance of float32 ones, and every loss and gradient is finite."""
    from test_mask2former import _inputs

    batch = _inputs()
    torch.manual_seed(1)  # the point sampling of the losses
    reference = tiny_mask2former().train()(batch)

    model = tiny_mask2former().train()
    decoder = model.pixel_decoder
    dtypes = {}

    def record(name, dtypes_of):
        def hook(module, inputs, output):  # returns None: the output is kept
            dtypes.setdefault(name, dtypes_of(output))
        return hook

    hooks = [
        decoder.encoder.layers[0].self_attn.value_proj.register_forward_hook(record("value_proj", lambda o: o.dtype)),
        decoder.register_forward_hook(record("outputs", lambda o: {t.dtype for t in decoder_outputs(o)})),
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = functions.dispatch_counts()
    steps = 3
    torch.manual_seed(1)
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        if step == 0:
            for name, value in reference.items():
                torch.testing.assert_close(losses[name], value, rtol=5e-2, atol=1e-3, msg=lambda m: f"{name}: {m}")
        optimizer.zero_grad()
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    for h in hooks:
        h.remove()
    assert dtypes == {"value_proj": torch.bfloat16, "outputs": {torch.bfloat16}}
    after = functions.dispatch_counts()

    def calls(op, dtype):
        return sum(n - before.get(k, 0) for k, n in after.items() if k[0] == op and k[3] == str(dtype))

    layers = len(decoder.encoder.layers)
    assert calls("forward", torch.bfloat16) == calls("backward", torch.bfloat16) == steps * layers
    assert calls("forward", torch.float32) == 0


# ---------------------------------------------------------------------------------------------------------
# build checks: versions and GPU architectures


def test_default_arch_lists_and_coverage():
    assert cuda_archs.default_arch_list((13, 0)) == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert cuda_archs.default_arch_list((12, 4)) == "7.0;7.5;8.0;8.6;9.0+PTX"
    assert cuda_archs.default_arch_list((12, 8)) == "7.0;7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert cuda_archs.default_arch_list((13, 0), visible=[(8, 9), (11, 0)]) == "7.5;8.0;8.6;9.0;10.0;11.0;12.0+PTX"
    assert cuda_archs.default_arch_list((13, 0), visible=[(7, 0)]) == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"  # not buildable
    default = "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    for cap, ok in [((7, 0), False), ((7, 5), True), ((8, 9), True), ((9, 0), True), ((10, 3), True),
                    ((11, 0), False), ((12, 1), True), ((13, 0), True)]:
        assert cuda_archs.covers(default, cap) is ok, cap
    assert cuda_archs.covers("9.0", (9, 0)) and not cuda_archs.covers("9.0", (10, 0))
    assert not cuda_archs.covers("9.0a", (9, 1)) and cuda_archs.covers("9.0a", (9, 0))
    assert cuda_archs.covers("Hopper", (9, 0)) is None  # names cannot be checked
    assert cuda_archs.describe_arch_list("8.6;9.0+PTX") == "sm_86, sm_90, compute_90 (PTX)"


@needs_kernel
def test_build_records_versions():
    assert _C.torch_version == torch.__version__
    assert _C.torch_cuda_version == (torch.version.cuda or "")
    assert _C.build_info.startswith("FMWISS_D2_BUILD_INFO{torch=" + torch.__version__)
    if _C.with_cuda:
        assert cuda_archs.parse_arch_list(_C.cuda_arch_list) and _C.cuda_toolkit_version >= 11000


@needs_kernel
def test_version_mismatch_warns_once_and_falls_back(monkeypatch, restore_state):
    """A build recorded for another torch: one message naming both versions and the rebuild command, and
    the reference's results (bitwise)."""
    monkeypatch.setattr(_C, "torch_version", "2.3.1+cu118")
    monkeypatch.setattr(_C, "torch_cuda_version", "11.8")
    functions._reset_extension_cache()
    inputs = make_inputs(dtype=torch.float64, Lq=10, seed=10)
    value, ss, lsi, loc, w = inputs
    grad = torch.randn(2, 10, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, *grads = grads_of(ms_deform_attn, inputs, grad)
        ms_deform_attn(*inputs)
    messages = [str(c.message) for c in caught if "fmwiss_d2._C" in str(c.message)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert "built with torch 2.3.1+cu118 (CUDA 11.8)" in message
    assert f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'no CUDA'}) is running" in message
    assert "pip install --no-build-isolation -e ." in message and "falls back to the PyTorch reference" in message
    assert not functions.kernel_available("cpu")
    assert "PyTorch reference" in functions.describe_kernel(torch.float64, "cpu")
    assert torch.equal(out, ms_deform_attn_reference(*inputs))
    expected = ms_deform_attn_reference_backward(grad, value, ss, lsi, loc, w)
    for g, e in zip(grads, expected):
        assert torch.equal(g, e)
    print(message, file=sys.stderr)


@needs_kernel
def test_unloadable_build_names_its_versions(monkeypatch, restore_state):
    """When the library cannot even be imported (e.g. "undefined symbol" after a torch upgrade), the
    versions are read from the record in the file."""
    def broken():
        raise ImportError("/x/fmwiss_d2/_C.so: undefined symbol: _ZN3c1015SmallVectorBase")

    monkeypatch.setattr(functions, "_import_extension", broken)
    monkeypatch.setattr(functions, "_running_versions", lambda: {"torch": "2.99.0+cu140", "torch_cuda": "14.0"})
    functions._reset_extension_cache()
    assert functions._extension() is None
    message = functions._unavailable_message
    assert f"built with torch {_C.torch_version}" in message and "torch 2.99.0+cu140 (CUDA 14.0) is running" in message
    assert "undefined symbol" in message and "FORCE_CUDA=1 CUDA_HOME=<the CUDA 14.0 toolkit>" in message
    with pytest.warns(RuntimeWarning, match="built with torch"):
        ms_deform_attn(*make_inputs(Lq=4, seed=12))


def test_gpu_without_code_in_the_build_gets_one_message_and_the_reference(monkeypatch, restore_state):
    """A GPU of compute capability 7.0 with a CUDA 13 build for the default list (simulated: no GPU needed)."""

    class FakeBuild:
        with_cuda = True
        torch_version, torch_cuda_version = torch.__version__, torch.version.cuda or ""
        cuda_arch_list = "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
        cuda_toolkit_version = 13000

    monkeypatch.setattr(functions, "_import_extension", lambda: FakeBuild)
    monkeypatch.setattr(functions, "_device_capability", lambda index: (7, 0))
    monkeypatch.setattr(functions, "_device_name", lambda index: "Tesla V100-SXM2-16GB")
    functions._reset_extension_cache()
    device = torch.device("cuda", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ext = functions._select_kernel(device, torch.float16, torch.float32)[0]
            assert ext is None
            functions._warn_once(*functions._select_kernel(device, torch.float16, torch.float32)[1])
    messages = [str(c.message) for c in caught if "no CUDA code" in str(c.message)]
    assert len(messages) == 1
    message = messages[0]
    for part in ("GPU 0 (Tesla V100-SXM2-16GB, compute capability 7.0 = sm_70)",
                 "sm_75, sm_80, sm_86, sm_90, sm_100, sm_120, compute_120 (PTX)",
                 'TORCH_CUDA_ARCH_LIST="7.0" FORCE_CUDA=1 pip install --no-build-isolation -e .',
                 "needs a CUDA 12 toolkit", "falls back to the PyTorch reference"):
        assert part in message, part
    assert "no code for this GPU" in functions.describe_kernel(torch.float16, device, torch.float32)
    # a GPU the build covers (Ada runs the sm_86 code) gets the kernel
    functions._reset_extension_cache()
    monkeypatch.setattr(functions, "_device_capability", lambda index: (8, 9))
    assert functions._select_kernel(device, torch.float16, torch.float32)[0] is FakeBuild
    assert functions.describe_kernel(torch.float16, device, torch.float32).startswith(
        "fmwiss_d2._C CUDA kernel for value float16, locations/weights float32, float32 accumulation, atomic")
    functions.set_deterministic(True)
    assert "deterministic backward (sorted gather" in functions.describe_kernel(torch.float16, device)


# ---------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_deterministic_backward_is_bitwise_reproducible(dtype, restore_state):
    """With torch.use_deterministic_algorithms(True) the gradients are identical across runs, and close to
    the atomic ones (the same products, summed in another order)."""
    loc_dtype = torch.float32 if dtype != torch.float32 else None
    inputs = make_inputs(shapes=((32, 48), (16, 24), (8, 12)), N=2, H=8, C=32, Lq=2000, P=4, dtype=dtype,
                         loc_dtype=loc_dtype, seed=20, device="cuda")
    # concentrate the points so that many corners share value rows (where atomics race)
    value, ss, lsi, loc, w = inputs
    loc = 0.45 + 0.1 * loc
    inputs = (value, ss, lsi, loc, w)
    grad = torch.randn(2, 2000, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(21)).to(dtype)
    atomic = grads_of(ms_deform_attn, inputs, grad)
    torch.use_deterministic_algorithms(True)
    runs = [grads_of(ms_deform_attn, inputs, grad) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for a, b in zip(runs[0][1:], atomic[1:]):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.abs().max().item())


@needs_cuda_kernel
def test_cuda_reference_fallback_is_deterministic(restore_state):
    """The fallback on a GPU in deterministic mode runs the index_put_ backward (no grid_sample atomics)."""
    inputs = make_inputs(dtype=torch.float32, seed=22, device="cuda")
    grad = torch.randn(2, 60, 64, device="cuda")
    torch.use_deterministic_algorithms(True)
    a = ms_deform_attn_reference_backward_deterministic(grad, *inputs)
    b = ms_deform_attn_reference_backward_deterministic(grad, *inputs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_autocast_trains_tiny_stack_without_nan(dtype):
    """A few optimizer steps of a two-layer MSDeformAttn stack under CUDA autocast: the op runs the half
    kernel with float32 locations, the loss stays finite and decreases."""
    torch.manual_seed(4)
    model = TinyEncoder(d_model=64, n_levels=3, n_heads=4, n_points=4).cuda()
    head = torch.nn.Linear(64, 1).cuda()
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    src, ref, ss, lsi = encoder_inputs(shapes=((24, 32), (12, 16), (6, 8)), d_model=64, seed=5, device="cuda")
    target = src[..., :1].detach().sin()
    before = functions.dispatch_counts()
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=dtype):
            out = head(model(src, ref, ss, lsi))
            loss = torch.nn.functional.mse_loss(out.float(), target)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    key = ("forward", "kernel", "cuda", str(dtype))
    assert functions.dispatch_counts().get(key, 0) >= before.get(key, 0) + 16
    assert functions.describe_kernel(dtype, "cuda", torch.float32).startswith("fmwiss_d2._C CUDA kernel")


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_mixed_precision_kernel_matches_reference(dtype):
    """Half values with float32 locations / weights vs the float64 reference on the same rounded values."""
    inputs = make_inputs(shapes=((13, 17), (7, 9)), N=2, H=4, C=32, Lq=50, P=4, dtype=dtype,
                         loc_dtype=torch.float32, seed=23, device="cuda")
    value, ss, lsi, loc, w = inputs
    grad = torch.randn(2, 50, 128, device="cuda").to(dtype)
    got = grads_of(ms_deform_attn, inputs, grad)
    ref = grads_of(ms_deform_attn_reference, (value.double(), ss, lsi, loc.double(), w.double()), grad.double())
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for name, g, e in zip(("output", "value", "locations", "weights"), got, ref):
        torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * max(1.0, e.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")
    assert got[2].dtype == torch.float32 and got[0].dtype == dtype
