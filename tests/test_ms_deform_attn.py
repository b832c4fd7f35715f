"""Multi-scale deformable attention: compiled kernels vs the grid_sample reference vs hand computations.

Kernel tests are skipped when fmwiss_d2._C is not built; CUDA tests when no GPU is visible.
"""
import math
import warnings

import pytest
import torch

from fmwiss_d2.modeling.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference
from fmwiss_d2.modeling.ops import functions
from fmwiss_d2.modeling.ops.reference import ms_deform_attn_reference_backward

_C = functions._extension()
needs_kernel = pytest.mark.skipif(_C is None, reason="fmwiss_d2._C is not built (pip install --no-build-isolation -e .)")
needs_cuda_kernel = pytest.mark.skipif(
    not torch.cuda.is_available() or _C is None or not _C.with_cuda,
    reason="needs a GPU and fmwiss_d2._C built with CUDA",
)


def level_tables(shapes, device="cpu"):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def make_inputs(shapes=((5, 7), (3, 2), (1, 4)), N=2, H=3, C=4, Lq=6, P=2, dtype=torch.float64, seed=0,
                device="cpu"):
    """Random inputs on non-square levels; sampling locations in [-0.25, 1.25] so that some points fall
    partly or entirely outside the map."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tables(shapes)
    S, L = int(spatial_shapes.prod(1).sum()), len(shapes)
    value = torch.randn(N, S, H, C, generator=g, dtype=torch.float64)
    loc = torch.rand(N, Lq, H, L, P, 2, generator=g, dtype=torch.float64) * 1.5 - 0.25
    weights = torch.rand(N, Lq, H, L, P, generator=g, dtype=torch.float64)
    cast = dict(dtype=dtype, device=device)
    return (value.to(**cast), spatial_shapes.to(device), level_start_index.to(device), loc.to(**cast),
            weights.to(**cast))


def naive_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Eq. (3) of Deformable DETR as plain loops, bilinear weights written as (1-|x-x_k|)(1-|y-y_k|)."""
    N, S, H, C = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist()
    starts = [sum(h * w for h, w in shapes[:l]) for l in range(L)]
    out = torch.zeros(N, Lq, H, C, dtype=torch.float64)
    for n in range(N):
        for q in range(Lq):
            for h in range(H):
                for l, (Hl, Wl) in enumerate(shapes):
                    for p in range(P):
                        x = sampling_locations[n, q, h, l, p, 0].item() * Wl - 0.5
                        y = sampling_locations[n, q, h, l, p, 1].item() * Hl - 0.5
                        a = attention_weights[n, q, h, l, p].item()
                        x0, y0 = math.floor(x), math.floor(y)
                        for yy in (y0, y0 + 1):
                            for xx in (x0, x0 + 1):
                                if 0 <= yy < Hl and 0 <= xx < Wl:
                                    w = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                    out[n, q, h] += a * w * value[n, starts[l] + yy * Wl + xx, h].double()
    return out.view(N, Lq, H * C)


@pytest.fixture
def without_extension(monkeypatch):
    """Simulates a tree where fmwiss_d2._C was never built."""

    def missing():
        raise ImportError("No module named 'fmwiss_d2._C'")

    monkeypatch.setattr(functions, "_import_extension", missing)
    functions._reset_extension_cache()
    yield
    monkeypatch.undo()
    functions._reset_extension_cache()


# ---------------------------------------------------------------------------------------------------------
# the reference and the kernels against hand computations


def test_hand_computed_bilinear_samples():
    """One 2x2 level [[1, 2], [3, 4]]: pixel centres sit at normalized (0.25, 0.25), (0.75, 0.25), ...;
    (0.5, 0.5) is the mean of the four; (0, 0) sees a quarter of the top-left value (zero padding);
    (1, 0.25) half of the top-right one; (1.2, 0.5) is pixel (1.9, 0.5): 0.1 of the right column's mean;
    (1.3, 0.5) is pixel (2.1, 0.5), beyond the last column: nothing."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    spatial_shapes, start = level_tables([(2, 2)])
    points = torch.tensor([[0.25, 0.25], [0.75, 0.75], [0.5, 0.5], [0.0, 0.0], [1.0, 0.25], [1.2, 0.5],
                           [1.3, 0.5]],
                          dtype=torch.float64)
    expected = torch.tensor([1.0, 4.0, 2.5, 0.25, 1.0, 0.3, 0.0], dtype=torch.float64)
    loc = points.view(1, 7, 1, 1, 1, 2)
    weights = torch.full((1, 7, 1, 1, 1), 2.0, dtype=torch.float64)
    impls = [ms_deform_attn_reference] + ([_C.ms_deform_attn_forward] if _C is not None else [])
    for impl in impls:
        out = impl(value, spatial_shapes, start, loc, weights)
        torch.testing.assert_close(out.view(7), 2.0 * expected, rtol=0, atol=1e-12)


def test_reference_matches_naive_loops():
    inputs = make_inputs(N=1, H=2, Lq=3)
    value, ss, _, loc, w = inputs
    torch.testing.assert_close(ms_deform_attn_reference(*inputs), naive_ms_deform_attn(value, ss, loc, w),
                               rtol=0, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("C", [5, 16, 32, 64])  # the kernel has unrolled paths for 16, 32 and 64 channels
def test_cpu_kernel_forward_matches_reference_float64(C):
    inputs = make_inputs(N=2, H=3, C=C, Lq=40, P=3, seed=1)
    out = _C.ms_deform_attn_forward(*inputs)
    assert out.shape == (2, 40, 3 * C) and out.dtype == torch.float64
    torch.testing.assert_close(out, ms_deform_attn_reference(*inputs), rtol=0, atol=1e-10)
    value, ss, _, loc, w = make_inputs(N=1, H=2, Lq=3, seed=2)
    torch.testing.assert_close(_C.ms_deform_attn_forward(value, ss, _, loc, w),
                               naive_ms_deform_attn(value, ss, loc, w), rtol=0, atol=1e-10)


@needs_kernel
def test_cpu_kernel_forward_float32_and_noncontiguous():
    value, ss, lsi, loc, w = make_inputs(Lq=30, dtype=torch.float32, seed=3)
    ref = ms_deform_attn_reference(value.double(), ss, lsi, loc.double(), w.double())
    # a non-contiguous view of the same numbers must give the same result
    w_t = w.transpose(0, 1).contiguous().transpose(0, 1)
    assert not w_t.is_contiguous()
    out = ms_deform_attn(value, ss, lsi, loc, w_t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_cpu_kernel_gradcheck():
    value, ss, lsi, loc, w = make_inputs(shapes=((3, 4), (2, 1)), N=1, H=2, C=2, Lq=3, P=2, seed=4)
    leaves = [t.clone().requires_grad_() for t in (value, loc, w)]

    def f(v, l, a):
        return ms_deform_attn(v, ss, lsi, l, a)

    assert functions.kernel_available("cpu")
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


@needs_kernel
@pytest.mark.parametrize("C", [5, 16, 32, 64])
def test_cpu_kernel_backward_matches_reference_autograd(C):
    inputs = make_inputs(N=2, H=3, C=C, Lq=25, P=3, seed=5)
    value, ss, lsi, loc, w = inputs
    grad = torch.randn(2, 25, 3 * C, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
    expected = torch.autograd.grad(ms_deform_attn_reference(leaves[0], ss, lsi, leaves[1], leaves[2]), leaves, grad)
    got = _C.ms_deform_attn_backward(value, ss, lsi, loc, w, grad)
    for name, g, e in zip(("value", "sampling_locations", "attention_weights"), got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
    # the op's autograd uses the kernel's backward
    leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
    ms_deform_attn(leaves[0], ss, lsi, leaves[1], leaves[2]).backward(grad)
    for leaf, e in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, e, rtol=0, atol=1e-10)


@needs_kernel
def test_cpu_kernel_backward_is_deterministic_across_thread_counts():
    inputs = make_inputs(N=2, H=4, C=8, Lq=200, P=4, dtype=torch.float32, seed=7)
    grad = torch.randn(2, 200, 32, generator=torch.Generator().manual_seed(8))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_C.ms_deform_attn_backward(*inputs, grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_reference_explicit_backward_matches_autograd():
    """The fallback path's backward (grid_sampler_2d_backward written out) equals autograd's."""
    value, ss, lsi, loc, w = make_inputs(N=2, H=2, C=3, Lq=10, seed=9)
    grad = torch.randn(2, 10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
    expected = torch.autograd.grad(ms_deform_attn_reference(leaves[0], ss, lsi, leaves[1], leaves[2]), leaves, grad)
    got = ms_deform_attn_reference_backward(grad, value, ss, lsi, loc, w)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_op_is_registered_for_compile_and_export():
    """Schema, fake (meta) implementation and autograd registration are consistent (torch.library.opcheck)."""
    value, ss, lsi, loc, w = make_inputs(shapes=((3, 4), (2, 2)), N=1, H=2, C=2, Lq=3, seed=11)
    args = (value.requires_grad_(), ss, lsi, loc.requires_grad_(), w.requires_grad_())
    result = torch.library.opcheck(torch.ops.fmwiss_d2.ms_deform_attn.default, args,
                                   test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    assert result == {"test_schema": "SUCCESS", "test_faketensor": "SUCCESS", "test_autograd_registration": "SUCCESS"}


# ---------------------------------------------------------------------------------------------------------
# fallback and errors


def test_fallback_without_extension_warns_once_and_matches(without_extension):
    inputs = make_inputs(N=1, H=2, C=3, Lq=8, seed=12)
    value, ss, lsi, loc, w = inputs
    grad = torch.randn(1, 8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
        out = ms_deform_attn(leaves[0], ss, lsi, leaves[1], leaves[2])
        out.backward(grad)
        ms_deform_attn(*inputs)
    messages = [str(c.message) for c in caught if "fmwiss_d2._C" in str(c.message)]
    assert len(messages) == 1, messages
    assert "pip install --no-build-isolation -e ." in messages[0]
    assert not functions.kernel_available("cpu")
    # identical to the hand-written loops, and to the kernel when there is one
    torch.testing.assert_close(out.detach(), naive_ms_deform_attn(value, ss, loc, w), rtol=0, atol=1e-12)
    ref_leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
    expected = torch.autograd.grad(ms_deform_attn_reference(ref_leaves[0], ss, lsi, ref_leaves[1], ref_leaves[2]),
                                   ref_leaves, grad)
    for leaf, e in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, e, rtol=0, atol=1e-12)
    if _C is not None:
        torch.testing.assert_close(out.detach(), _C.ms_deform_attn_forward(*inputs), rtol=0, atol=1e-12)


def test_package_imports_without_extension(without_extension):
    m = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    ss, lsi = level_tables([(2, 3)])
    with pytest.warns(RuntimeWarning, match="fmwiss_d2._C is not built"):
        out = m(torch.randn(1, 4, 8), torch.rand(1, 4, 1, 2), torch.randn(1, 6, 8), ss, lsi)
    assert out.shape == (1, 4, 8)


def test_bad_inputs_name_the_argument():
    value, ss, lsi, loc, w = make_inputs()
    with pytest.raises(TypeError, match="spatial_shapes must be int64"):
        ms_deform_attn(value, ss.int(), lsi, loc, w)
    with pytest.raises(ValueError, match="attention_weights must have shape"):
        ms_deform_attn(value, ss, lsi, loc, w[:, :, :, :, :1])
    with pytest.raises(ValueError, match="sampling_locations must have shape"):
        ms_deform_attn(value, ss, lsi, loc[..., :1], w)
    with pytest.raises(TypeError, match="attention_weights has dtype torch.float32"):
        ms_deform_attn(value, ss, lsi, loc, w.float())
    with pytest.raises(ValueError, match="value must have shape"):
        ms_deform_attn(value.flatten(2), ss, lsi, loc, w)
    # the level tables are read on the device, by the kernel (RuntimeError) or the reference (ValueError)
    with pytest.raises((ValueError, RuntimeError), match="spatial_shapes sums to"):
        ms_deform_attn(value[:, :-1], ss, lsi, loc, w)


@needs_kernel
def test_extension_checks_name_the_argument():
    value, ss, lsi, loc, w = make_inputs()
    with pytest.raises(RuntimeError, match="attention_weights has dtype Float"):
        _C.ms_deform_attn_forward(value, ss, lsi, loc, w.float())
    with pytest.raises(RuntimeError, match="level_start_index must be int64"):
        _C.ms_deform_attn_forward(value, ss, lsi.int(), loc, w)
    with pytest.raises(RuntimeError, match="spatial_shapes sums to"):
        _C.ms_deform_attn_forward(value[:, :-1], ss, lsi, loc, w)
    shifted = lsi.clone()
    shifted[1] += 1
    with pytest.raises(RuntimeError, match=r"level_start_index\[1\] = 36"):
        _C.ms_deform_attn_forward(value, ss, shifted, loc, w)
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        _C.ms_deform_attn_backward(value, ss, lsi, loc, w, torch.zeros(2, 6, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="CPU kernel.*float32 or float64"):
        _C.ms_deform_attn_forward(value.half(), ss, lsi, loc.half(), w.half())


# ---------------------------------------------------------------------------------------------------------
# the module


def _module_inputs(d_model=16, shapes=((4, 6), (2, 3)), N=2, Lq=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ss, lsi = level_tables(shapes)
    S = int(ss.prod(1).sum())
    return (torch.randn(N, Lq, d_model, generator=g), torch.rand(N, Lq, len(shapes), 2, generator=g),
            torch.randn(N, S, d_model, generator=g), ss, lsi)


def test_module_output_shape_for_point_and_box_references():
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, ref, x, ss, lsi = _module_inputs()
    assert m(query, ref, x, ss, lsi).shape == (2, 5, 16)
    boxes = torch.cat([ref, torch.full_like(ref, 0.3)], dim=-1)
    assert m(query, boxes, x, ss, lsi).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="reference_points"):
        m(query, ref[..., :1], x, ss, lsi)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)


def test_module_initialization_follows_the_paper():
    H, L, P = 8, 2, 3
    m = MSDeformAttn(d_model=16, n_levels=L, n_heads=H, n_points=P)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    bias = m.sampling_offsets.bias.view(H, L, P, 2)
    # head h looks along angle 2*pi*h/8, scaled so that the larger coordinate is 1; point k is k+1 away
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
                              dtype=torch.float32)
    for k in range(P):
        for l in range(L):
            torch.testing.assert_close(bias[:, l, k], (k + 1) * directions, rtol=0, atol=1e-6)
    # attention weights are uniform over levels x points: with a constant value map per level the output
    # is the mean of the level constants (value/output projections set to the identity)
    with torch.no_grad():
        for lin in (m.value_proj, m.output_proj):
            lin.weight.copy_(torch.eye(16))
            lin.bias.zero_()
    ss, lsi = level_tables([(20, 20), (10, 10)])
    x = torch.cat([torch.full((1, 400, 16), 1.0), torch.full((1, 100, 16), 4.0)], dim=1)
    query = torch.randn(1, 3, 16)
    ref = torch.full((1, 3, L, 2), 0.5)  # the centre: every initial point lies inside both maps
    torch.testing.assert_close(m(query, ref, x, ss, lsi), torch.full((1, 3, 16), 2.5), rtol=0, atol=1e-5)


def test_module_offsets_are_in_pixels_of_each_level():
    """At init head 0 samples k+1 pixels to the right of the reference point: on a map whose value is the
    pixel column, a one-point, one-head layer returns column(ref) + 1 (bilinear interpolation is exact on a
    linear ramp)."""
    m = MSDeformAttn(d_model=2, n_levels=1, n_heads=1, n_points=1)
    with torch.no_grad():
        for lin in (m.value_proj, m.output_proj):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    Hl, Wl = 6, 10
    ss, lsi = level_tables([(Hl, Wl)])
    ys, xs = torch.meshgrid(torch.arange(Hl, dtype=torch.float32), torch.arange(Wl, dtype=torch.float32),
                            indexing="ij")
    x = torch.stack([xs, ys], dim=-1).view(1, Hl * Wl, 2)  # channel 0 = column, channel 1 = row
    ref = torch.tensor([[[[0.35, 0.5]]]])  # column 0.35*10 - 0.5 = 3.0, row 0.5*6 - 0.5 = 2.5
    out = m(torch.randn(1, 1, 2), ref, x, ss, lsi)
    torch.testing.assert_close(out.view(2), torch.tensor([4.0, 2.5]), rtol=0, atol=1e-5)


def test_module_padding_mask_hides_masked_values():
    torch.manual_seed(1)
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    with torch.no_grad():  # spread the points so that they reach the padded area
        m.sampling_offsets.weight.normal_(0, 0.5)
    query, ref, x, ss, lsi = _module_inputs(seed=2)
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[0, 10:18] = True  # part of level 0 of image 0
    mask[1, 24:] = True  # all of level 1 of image 1
    perturbed = x.clone()
    perturbed[mask] += 100 * torch.randn(int(mask.sum()), 16)
    out = m(query, ref, x, ss, lsi, mask)
    torch.testing.assert_close(m(query, ref, perturbed, ss, lsi, mask), out, rtol=0, atol=1e-6)
    # without the mask the same perturbation changes the output: the test has teeth
    assert not torch.allclose(m(query, ref, perturbed, ss, lsi), m(query, ref, x, ss, lsi), atol=1e-3)
    # masked positions behave exactly like zero values
    value = m.value_proj(x).masked_fill(mask[..., None], 0.0).view(2, -1, 4, 4)
    offsets = m.sampling_offsets(query).view(2, 5, 4, 2, 3, 2)
    weights = m.attention_weights(query).view(2, 5, 4, 6).softmax(-1).view(2, 5, 4, 2, 3)
    loc = ref[:, :, None, :, None, :] + offsets / ss.flip(-1)[None, None, None, :, None, :]
    expected = m.output_proj(ms_deform_attn_reference(value, ss, lsi, loc, weights))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_module_backward_reaches_all_parameters():
    torch.manual_seed(3)
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, ref, x, ss, lsi = _module_inputs(seed=4)
    m(query, ref, x, ss, lsi).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.sampling_offsets.weight.grad.abs().sum() > 0


def test_module_compiles_without_graph_breaks_and_exports():
    """The op is opaque to torch.compile / torch.export (a custom op with a fake implementation and an
    autograd formula), so the whole layer traces as one graph, forward and backward."""
    torch.manual_seed(5)
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, ref, x, ss, lsi = _module_inputs(seed=6)
    x = x.requires_grad_()
    eager = m(query, ref, x, ss, lsi)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out = compiled(query, ref, x, ss, lsi)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-6, atol=1e-6)
    exported = torch.export.export(m, (query, ref, x.detach(), ss, lsi))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert torch.ops.fmwiss_d2.ms_deform_attn.default in targets
    torch.testing.assert_close(exported.module()(query, ref, x.detach(), ss, lsi), eager, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)

CUDA_TOLERANCES = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_kernel_matches_reference(dtype):
    """The kernel on rounded inputs vs the float64 reference on the same rounded inputs: fp32 tightly,
    fp16/bf16 within the rounding of the output and of the stored gradients (accumulation is in fp32)."""
    inputs = make_inputs(shapes=((13, 17), (7, 9), (3, 5)), N=2, H=4, C=40, Lq=50, P=4, dtype=dtype, seed=20,
                         device="cuda")
    value, ss, lsi, loc, w = inputs
    tol = CUDA_TOLERANCES[dtype]
    as64 = [t.double() for t in (value, loc, w)]
    ref = ms_deform_attn_reference(as64[0], ss, lsi, as64[1], as64[2])
    out = _C.ms_deform_attn_forward(*inputs)
    assert out.dtype == dtype and out.is_cuda
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = torch.randn(2, 50, 160, device="cuda", dtype=torch.float64, generator=None).to(dtype)
    leaves = [t.clone().requires_grad_() for t in as64]
    expected = torch.autograd.grad(ms_deform_attn_reference(leaves[0], ss, lsi, leaves[1], leaves[2]), leaves,
                                   grad.double())
    got = _C.ms_deform_attn_backward(*inputs, grad)
    for name, g, e in zip(("value", "sampling_locations", "attention_weights"), got, expected):
        assert g.dtype == dtype
        scale = e.abs().max().item()  # location gradients are large (they carry a factor W_l)
        torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * max(1.0, scale),
                                   msg=lambda m: f"grad of {name}: {m}")


@needs_cuda_kernel
def test_cuda_kernel_gradcheck_float64_and_module():
    value, ss, lsi, loc, w = make_inputs(shapes=((3, 4), (2, 1)), N=1, H=2, C=35, Lq=3, P=2, seed=21, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, ss, lsi, l, a), leaves, eps=1e-6, atol=1e-6)
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, ref, x, ss, lsi = _module_inputs(seed=22)
    cpu_out = m(query, ref, x, ss, lsi)
    m = m.cuda()
    gpu_out = m(*(t.cuda() for t in (query, ref, x, ss, lsi)))
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=1e-5, atol=1e-5)
