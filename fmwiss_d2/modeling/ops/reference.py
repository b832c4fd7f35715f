"""Pure-PyTorch multi-scale deformable attention, the reference the compiled kernels are checked against.

Deformable DETR (Zhu et al., ICLR 2021), eq. (3), for one query ``q`` and head ``h``::

    out[q, h] = sum_{l=1..L} sum_{p=1..P} A[q, h, l, p] * V_l[h](phi_l(loc[q, h, l, p]))

``V_l[h]`` is level ``l`` of the (already projected) value map of head ``h`` and ``V(phi(.))`` its bilinear
interpolation at a normalized location ``(x, y)`` in ``[0, 1]^2``, read as the pixel coordinate
``(x * W_l - 0.5, y * H_l - 0.5)`` with zeros outside the map. That is exactly
``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` at grid ``2 * loc - 1``, which
is what this module uses. It is slow and memory hungry (it materializes every sampled vector) but
obviously right; :func:`ms_deform_attn_reference` is differentiable through PyTorch's autograd.

Layouts (N batch, S = sum_l H_l * W_l positions, H heads, C channels per head, Lq queries, L levels,
P points): value ``(N, S, H, C)``, spatial_shapes ``(L, 2)`` int64 ``(H_l, W_l)``, level_start_index ``(L,)``,
sampling_locations ``(N, Lq, H, L, P, 2)`` as ``(x, y)``, attention_weights ``(N, Lq, H, L, P)``;
the output is ``(N, Lq, H * C)``.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "ms_deform_attn_reference",
    "ms_deform_attn_reference_backward",
    "ms_deform_attn_reference_backward_deterministic",
]


def _level_shapes(spatial_shapes: torch.Tensor, num_positions: int) -> List[Tuple[int, int]]:
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    total = sum(h * w for h, w in shapes)
    if total != num_positions:
        raise ValueError(
            f"ms_deform_attn: value has S = {num_positions} positions but spatial_shapes sums to "
            f"sum(H*W) = {total}"
        )
    return shapes


def _level_maps(value: torch.Tensor, shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
    """Splits ``value`` (N, S, H, C) into one ``(N*H, C, H_l, W_l)`` image batch per level."""
    N, _, H, C = value.shape
    maps = []
    for v, (h, w) in zip(value.split([h * w for h, w in shapes], dim=1), shapes):
        maps.append(v.permute(0, 2, 3, 1).reshape(N * H, C, h, w))
    return maps


def _level_grid(sampling_locations: torch.Tensor, level: int) -> torch.Tensor:
    """(N, Lq, H, L, P, 2) locations in [0, 1] -> grid_sample grid (N*H, Lq, P, 2) in [-1, 1]."""
    loc = sampling_locations[:, :, :, level]  # (N, Lq, H, P, 2)
    return (2 * loc - 1).transpose(1, 2).flatten(0, 1)


def _sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with ``grid_sample``; see the module docstring for the layouts.

    ``level_start_index`` is accepted for signature compatibility with the kernels; the levels are cut
    from ``spatial_shapes`` (which must sum to ``S``).
    """
    N, S, H, C = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    shapes = _level_shapes(spatial_shapes, S)
    sampled = [
        _sample(image, _level_grid(sampling_locations, l))  # (N*H, C, Lq, P)
        for l, image in enumerate(_level_maps(value, shapes))
    ]
    weights = attention_weights.transpose(1, 2).reshape(N * H, 1, Lq, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (N*H, C, Lq)
    return out.view(N, H * C, Lq).transpose(1, 2).contiguous()


def ms_deform_attn_reference_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients autograd computes through :func:`ms_deform_attn_reference`, written out explicitly.

    Needs no autograd graph (so it can run inside a custom op's backward and be traced by
    ``torch.compile``): ``grid_sampler_2d_backward`` is the very function autograd calls for
    ``grid_sample``; the rest is the product rule of ``out = sum_{l,p} A * s``.
    Returns ``(grad_value, grad_sampling_locations, grad_attention_weights)``.
    """
    N, S, H, C = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    shapes = _level_shapes(spatial_shapes, S)
    grad_out = grad_output.reshape(N, Lq, H, C).permute(0, 2, 3, 1).reshape(N * H, C, Lq, 1)
    weights = attention_weights.transpose(1, 2).reshape(N * H, 1, Lq, L, P)
    grad_values, grad_locs, grad_weights = [], [], []
    for l, image in enumerate(_level_maps(value, shapes)):
        grid = _level_grid(sampling_locations, l)
        sampled = _sample(image, grid)  # (N*H, C, Lq, P)
        grad_weights.append((sampled * grad_out).sum(1))  # (N*H, Lq, P)
        grad_image, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_out * weights[..., l, :], image, grid, 0, 0, False, [True, True]
        )  # modes: 0 = bilinear, 0 = zeros padding; align_corners=False
        h, w = shapes[l]
        grad_values.append(grad_image.view(N, H, C, h * w).permute(0, 3, 1, 2))  # (N, S_l, H, C)
        grad_locs.append(2 * grad_grid.view(N, H, Lq, P, 2))  # d grid / d loc = 2
    grad_value = torch.cat(grad_values, dim=1)
    grad_loc = torch.stack(grad_locs, dim=3).transpose(1, 2).contiguous()  # (N, Lq, H, L, P, 2)
    grad_weight = torch.stack(grad_weights, dim=-2).view(N, H, Lq, L, P).transpose(1, 2).contiguous()
    return grad_value, grad_loc, grad_weight


def ms_deform_attn_reference_backward_deterministic(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same gradients as :func:`ms_deform_attn_reference_backward`, written with gathers and one
    ``index_put_(accumulate=True)`` per bilinear corner instead of ``grid_sampler_2d_backward`` (whose CUDA
    version adds with atomics and refuses to run under ``torch.use_deterministic_algorithms(True)``).
    ``index_put_`` with ``accumulate=True`` sorts the indices on the GPU and adds serially on the CPU, so
    the result is reproducible. Used by the fallback on GPUs in deterministic mode; it materializes
    (N, Lq, n_heads, n_levels, n_points, C) per corner.

    With ``p = (x * W_l - 0.5, y * H_l - 0.5)``, corner ``k`` at integer ``(x_k, y_k)`` and bilinear weight
    ``w_k = (1 - |p_x - x_k|)(1 - |p_y - y_k|)`` (zero outside the map):
    ``dL/dV[k] += A * w_k * g``, ``dL/dA = sum_k w_k <g, V[k]>``, ``dL/dx = A * W_l * sum_k dw_k/dp_x <g, V[k]>``
    (same for y), where ``g`` is the gradient of the output of that query and head.
    """
    N, S, H, C = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    shapes = _level_shapes(spatial_shapes, S)
    device, dtype = value.device, value.dtype
    heights = torch.tensor([h for h, _ in shapes], device=device).view(1, 1, 1, L, 1)
    widths = torch.tensor([w for _, w in shapes], device=device).view(1, 1, 1, L, 1)
    starts = torch.tensor([0] + [h * w for h, w in shapes][:-1], device=device).cumsum(0).view(1, 1, 1, L, 1)
    size = torch.stack([widths, heights], -1).to(dtype)  # (1, 1, 1, L, 1, 2) as (W, H)
    pix = sampling_locations * size - 0.5
    px, py = pix.unbind(-1)
    # points whose four corners are all outside (or NaN) contribute nothing: move them far out
    valid = (px > -1) & (py > -1) & (px < widths) & (py < heights)
    px, py = torch.where(valid, px, -2.0), torch.where(valid, py, -2.0)
    x0, y0 = px.floor(), py.floor()
    lx, ly = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    g = grad_output.view(N, Lq, H, 1, 1, C)
    rows_value = value.reshape(N * S * H, C)
    batch = torch.arange(N, device=device).view(N, 1, 1, 1, 1)
    head = torch.arange(H, device=device).view(1, 1, H, 1, 1)
    grad_value = torch.zeros(N * S * H, C, device=device, dtype=dtype)
    grad_weight = torch.zeros_like(attention_weights)
    grad_px, grad_py = torch.zeros_like(px), torch.zeros_like(py)
    for dy in (0, 1):
        for dx in (0, 1):
            xk, yk = x0 + dx, y0 + dy
            inside = (xk >= 0) & (xk < widths) & (yk >= 0) & (yk < heights)
            position = starts + yk.clamp(min=0) * widths + xk.clamp(min=0)
            row = torch.where(inside, (batch * S + position) * H + head, 0)  # (N, Lq, H, L, P)
            wx, wy = (lx if dx else 1 - lx), (ly if dy else 1 - ly)
            w = torch.where(inside, wx * wy, 0.0)
            dot = torch.where(inside, (rows_value[row] * g).sum(-1), 0.0)  # <g, V[k]>
            grad_weight += w * dot
            grad_px += torch.where(inside, wy if dx else -wy, 0.0) * dot
            grad_py += torch.where(inside, wx if dy else -wx, 0.0) * dot
            contribution = (attention_weights * w)[..., None] * g  # (N, Lq, H, L, P, C)
            grad_value.index_put_((row.reshape(-1),), contribution.reshape(-1, C), accumulate=True)
    grad_loc = attention_weights[..., None] * torch.stack([grad_px, grad_py], -1) * size
    return grad_value.view(N, S, H, C), grad_loc, grad_weight
