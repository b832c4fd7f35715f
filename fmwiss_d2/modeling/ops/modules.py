"""``MSDeformAttn``: the multi-scale deformable attention layer of Deformable DETR (Zhu et al., ICLR 2021).

For a query feature ``z_q`` with reference point ``p_q`` (normalized, per level), eq. (3) of the paper::

    MSDeformAttn(z_q, p_q, {x_l}) = W_o [ sum_{l,p} A_{hqlp} * W_v x_l(phi_l(p_q) + Delta p_{hqlp}) ]_{h=1..H}

with offsets ``Delta p = Linear(z_q)`` and weights ``A = softmax_{l,p}(Linear(z_q))`` per head. Parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) follow the paper's public
release, so Deformable DETR / Mask2Former checkpoints load unchanged.
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .functions import log_kernel_once, ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        """
        Args:
            d_model: feature dimension of queries and values; divisible by ``n_heads``.
            n_levels: number of feature levels attended to.
            n_heads: number of attention heads.
            n_points: sampling points per head and level.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialization: offsets start as fixed patterns (head ``h`` looks along direction
        ``2*pi*h/n_heads``, its ``k``-th point ``k`` pixels away, the direction scaled so that its larger
        coordinate is 1, i.e. onto the pixel grid); attention weights start uniform over levels x points."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([theta.cos(), theta.sin()], dim=-1)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values  # (n_heads, 2)
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        bias = direction.view(self.n_heads, 1, 1, 2) * scale  # (n_heads, 1, n_points, 2)
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (N, Lq, d_model).
            reference_points: (N, Lq, n_levels, 2) normalized ``(x, y)`` in [0, 1], (0, 0) top-left; or
                (N, Lq, n_levels, 4) boxes ``(cx, cy, w, h)``, offsets then being in units of half the box
                size divided by ``n_points``.
            input_flatten: (N, S, d_model) features of all levels, S = sum_l H_l * W_l.
            input_spatial_shapes: (n_levels, 2) int64 ``(H_l, W_l)``.
            input_level_start_index: (n_levels,) int64.
            input_padding_mask: optional (N, S) bool, True at padded positions (their values are zeroed).

        Returns:
            (N, Lq, d_model).
        """
        N, Lq, _ = query.shape
        S = input_flatten.shape[1]
        H, L, P = self.n_heads, self.n_levels, self.n_points
        if input_spatial_shapes.shape != (L, 2):
            raise ValueError(
                f"input_spatial_shapes must have shape (n_levels, 2) = ({L}, 2), got {tuple(input_spatial_shapes.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, H, self.d_model // H)
        offsets = self.sampling_offsets(query).view(N, Lq, H, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, H, L * P).softmax(-1).view(N, Lq, H, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            centers, sizes = reference_points[:, :, None, :, None, :2], reference_points[:, :, None, :, None, 2:]
            locations = centers + offsets / P * sizes * 0.5
        else:
            raise ValueError(
                f"reference_points must have a last dimension of 2 or 4, got {tuple(reference_points.shape)}"
            )
        weights = weights.to(locations.dtype)  # float32 with the float32 reference points of a 16-bit model
        if not torch.compiler.is_compiling():  # once per process: AMP on/off and the kernel used
            log_kernel_once(value.device, value.dtype, locations.dtype)
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)
