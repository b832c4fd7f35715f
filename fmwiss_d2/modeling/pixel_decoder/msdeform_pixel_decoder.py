"""Multi-scale deformable-attention pixel decoder (Mask2Former, Sec. 4 "pixel decoder")."""
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from ..position_encoding import PositionEmbeddingSine
from . import PIXEL_DECODER_REGISTRY

__all__ = ["MSDeformAttnEncoderLayer", "MSDeformAttnEncoder", "MSDeformAttnPixelDecoder"]


class _ReLU(torch.autograd.Function):
    """ReLU whose backward reads its output, ``grad * sign(out)`` (float math, no mask): the same values and
    gradients as ``F.relu`` (its gradient is 0 where ``out == 0``, like ``sign(0)``).

    Why: under ``torch.compile`` the stock ReLU makes the partitioner save a bool mask ``out <= 0`` besides
    ``out``, and inductor's CPU code on AVX2 machines writes and reads bool masks with a scalar, branchy loop
    (about 10 ms for 2 x 1344 x 128 values, 20x eager's ReLU): the compiled training step of this decoder was
    slower than eager. With this backward only ``out`` is saved (it is saved anyway for the next layer)."""

    @staticmethod
    def forward(ctx, x):
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out.sign()


def relu(x: torch.Tensor) -> torch.Tensor:
    return _ReLU.apply(x)


# The backward of bilinear upsampling (align_corners=False) as an opaque op running aten's own kernel.
# Why: inductor decomposes ``upsample_bilinear2d_backward`` into an ``index_put`` scatter-add, and its CPU code
# for it (fused with its neighbours) took about 11 ms per decoder training step (256 px, batch 2, 1 thread),
# eager's kernel about 3 ms. The forward stays ``F.interpolate`` (inductor fuses it well). The gradient is made
# contiguous, so the output layout does not depend on the layout inductor picks. Not twice differentiable.
@torch.library.custom_op("fmwiss_d2::upsample_bilinear_backward", mutates_args=())
def _upsample_bilinear_backward(grad: torch.Tensor, input_size: List[int], size: List[int]) -> torch.Tensor:
    return torch.ops.aten.upsample_bilinear2d_backward(grad.contiguous(), size, input_size, False)


@_upsample_bilinear_backward.register_fake
def _(grad, input_size, size):
    return grad.new_empty(input_size)


class _UpsampleBilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size):
        ctx.input_size, ctx.size = list(x.shape), list(size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, grad):
        return _upsample_bilinear_backward(grad, ctx.input_size, ctx.size), None


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of a 4-d ``x``, backward as above."""
    return _UpsampleBilinear.apply(x, tuple(int(s) for s in size))


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm layer: multi-scale deformable self-attention, then a feed-forward network."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        from ..ops import MSDeformAttn  # imported here: importing the package never needs the compiled op

        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class MSDeformAttnEncoder(nn.Module):
    """A stack of :class:`MSDeformAttnEncoderLayer` over the flattened levels (coarse to fine)."""

    def __init__(self, d_model=256, n_heads=8, num_layers=6, d_ffn=1024, dropout=0.0, n_levels=3, n_points=4):
        super().__init__()
        self.layers = nn.ModuleList(
            [MSDeformAttnEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points) for _ in range(num_layers)]
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(shapes: List[Tuple[int, int]], n_levels: int, batch: int, device) -> torch.Tensor:
        """Pixel centres of every level ``(H_l, W_l)``, normalised to [0, 1]: (batch, sum H*W, n_levels, 2) as
        (x, y), float32 (a 16-bit location cannot resolve a pixel of a large map)."""
        refs = []
        for h, w in shapes:
            ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(refs, 0)
        return ref[None, :, None, :].expand(batch, -1, n_levels, -1)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]):
        """srcs/pos_embeds: per level (N, C, H, W). Returns (N, sum H*W, C) and the level shapes [(H, W)].

        The shapes stay python ints (static under ``torch.compile``) for every python-side loop; only the op
        gets them as tensors, so the module has no graph break (``.tolist()`` of a tensor would be one)."""
        flat, flat_pos = [], []
        shapes = [(int(src.shape[-2]), int(src.shape[-1])) for src in srcs]
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            flat.append(src.flatten(2).transpose(1, 2))
            flat_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src = torch.cat(flat, 1)
        pos = torch.cat(flat_pos, 1)
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=src.device)
        level_start_index = torch.tensor(starts, dtype=torch.long, device=src.device)
        ref = self.reference_points(shapes, len(srcs), src.shape[0], src.device)
        ref = ref.to(torch.promote_types(src.dtype, ref.dtype))  # float32, or float64 for a float64 model
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start_index)
        return src, shapes


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder over the coarsest backbone levels, then FPN-style top-down laterals to the
    finer levels; the finest output, projected to ``mask_dim``, is the per-pixel mask feature map."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        transformer_n_points: int = 4,
        common_stride: int = 4,
    ):
        """
        Args:
            input_shape: backbone feature name -> ShapeSpec.
            transformer_in_features: features encoded by deformable attention (e.g. res3, res4, res5).
            conv_dim: width of the decoder (and of its multi-scale outputs).
            mask_dim: width of the mask features.
            norm: norm of the lateral/output convolutions ("GN" = GroupNorm(32)).
            transformer_dropout / transformer_nheads / transformer_dim_feedforward / transformer_enc_layers /
            transformer_n_points: deformable encoder sizes.
            common_stride: stride of the mask features (FPN levels are added down to this stride).
        """
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)  # fine -> coarse
        self.in_features = [k for k, _ in shapes]
        tr = sorted([(k, input_shape[k]) for k in transformer_in_features], key=lambda kv: kv[1].stride)
        self.transformer_in_features = [k for k, _ in tr][::-1]  # coarse -> fine
        self.transformer_num_levels = len(tr)
        self.input_proj = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(input_shape[k].channels, conv_dim, 1), nn.GroupNorm(32, conv_dim))
                for k in self.transformer_in_features
            ]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.encoder = MSDeformAttnEncoder(
            d_model=conv_dim,
            n_heads=transformer_nheads,
            num_layers=transformer_enc_layers,
            d_ffn=transformer_dim_feedforward,
            dropout=transformer_dropout,
            n_levels=self.transformer_num_levels,
            n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)
        self.maskformer_num_feature_levels = min(3, self.transformer_num_levels)

        # FPN levels finer than the encoded ones, down to common_stride.
        min_stride = min(s.stride for _, s in tr)
        num_fpn = int(np.log2(min_stride) - np.log2(common_stride))
        self.fpn_features = [k for k, s in shapes if s.stride < min_stride][::-1][:num_fpn]  # coarse -> fine
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        use_bias = norm == ""
        for k in self.fpn_features:
            lat = Conv2d(input_shape[k].channels, conv_dim, 1, bias=use_bias, norm=get_norm(norm, conv_dim))
            out = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias, norm=get_norm(norm, conv_dim),
                         activation=relu)
            for c in (lat, out):
                nn.init.kaiming_uniform_(c.weight, a=1)
                if c.bias is not None:
                    nn.init.constant_(c.bias, 0)
            self.lateral_convs.append(lat)
            self.output_convs.append(out)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        h = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in h.IN_FEATURES},
            "transformer_in_features": h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "conv_dim": h.CONVS_DIM,
            "mask_dim": h.MASK_DIM,
            "norm": h.NORM,
            "transformer_dropout": h.DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT,
            "transformer_nheads": h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": h.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": h.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "common_stride": h.COMMON_STRIDE,
        }

    def forward(self, features: Dict[str, torch.Tensor]):
        """Returns ``(mask_features (N, mask_dim, H/4, W/4), [multi-scale features, coarse to fine])``."""
        # no float32 island under autocast: the op runs its 16-bit kernel with float32 locations / weights (its
        # autocast rule), the reference points are float32, layer norms and softmax follow autocast's policy
        srcs = [proj(features[k]) for proj, k in zip(self.input_proj, self.transformer_in_features)]
        pos = [self.pe_layer(s) for s in srcs]
        memory, shapes = self.encoder(srcs, pos)
        n = memory.shape[0]
        outs = [level.transpose(1, 2).reshape(n, -1, h, w)
                for level, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)]
        for k, lat, out_conv in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            x = features[k]
            y = lat(x) + upsample_bilinear(outs[-1], x.shape[-2:])
            outs.append(out_conv(y))
        return self.mask_features(outs[-1]), outs[: self.maskformer_num_feature_levels]
