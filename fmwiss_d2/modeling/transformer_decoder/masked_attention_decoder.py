"""Transformer decoder with masked attention (Mask2Former, Sec. 3.2)."""
from typing import List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d

from ..heads.classifier import IncrementalClassifier, TextClassifier
from ..position_encoding import PositionEmbeddingSine
from . import TRANSFORMER_DECODER_REGISTRY

__all__ = ["MultiScaleMaskedTransformerDecoder", "MLP"]


class _AttentionLayer(nn.Module):
    """Residual multi-head attention. ``memory=None`` means self-attention over the queries."""

    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt, query_pos, memory=None, pos=None, attn_mask: Optional[torch.Tensor] = None):
        x = self.norm(tgt) if self.pre_norm else tgt
        if memory is None:
            memory, pos = x, query_pos
        out = self.attn(x + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.pre_norm else self.norm(tgt)


class _FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt):
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Queries attend, level by level (coarse to fine, round robin), only to the pixels inside the mask the
    previous layer predicted for them (masked attention), then to each other (self-attention), then an FFN.
    A prediction (class logits + mask) is made before the first layer and after every layer; all but the last
    are returned as ``aux_outputs`` for deep supervision."""

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        classes_per_step: List[int],
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        text_embed_dim: int = 0,
        text_temperature: float = 0.07,
    ):
        """
        Args:
            in_channels: width of the pixel decoder's multi-scale features.
            classes_per_step: class groups of the :class:`IncrementalClassifier` (plus a "no object" logit).
            hidden_dim: query width. num_queries: number of learned queries. nheads: attention heads.
            dim_feedforward: FFN width. dec_layers: number of decoder layers (each = cross + self + FFN).
            pre_norm: pre-norm layers. mask_dim: width of the mask embeddings (= pixel decoder's mask_dim).
            enforce_input_project: 1x1 projection of the inputs even when in_channels == hidden_dim.
            dropout: attention/FFN dropout. num_feature_levels: how many multi-scale features are attended.
            text_embed_dim: > 0: a :class:`TextClassifier` over text embeddings of this width replaces the linear
                classifier (one group of classes only). text_temperature: its initial temperature.
        """
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.cross_attention_layers = nn.ModuleList(
            _AttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.self_attention_layers = nn.ModuleList(
            _AttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.ffn_layers = nn.ModuleList(
            _FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # content of the queries
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # their positional part
        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = Conv2d(in_channels, hidden_dim, 1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        if text_embed_dim > 0:
            self.class_embed = TextClassifier(hidden_dim, sum(classes_per_step), text_embed_dim,
                                              temperature=text_temperature)
        else:
            self.class_embed = IncrementalClassifier(hidden_dim, classes_per_step, no_object=True)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels):
        m = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "classes_per_step": list(cfg.MODEL.CLASSES_PER_STEP) or [cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES],
            "hidden_dim": m.HIDDEN_DIM,
            "num_queries": m.NUM_OBJECT_QUERIES,
            "nheads": m.NHEADS,
            "dim_feedforward": m.DIM_FEEDFORWARD,
            "dec_layers": m.DEC_LAYERS - 1,  # Mask2Former's convention: the initial prediction counts as a layer
            "pre_norm": m.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": m.ENFORCE_INPUT_PROJ,
            "dropout": m.DROPOUT,
            "text_embed_dim": m.TEXT_CLASSIFIER.EMBED_DIM if m.TEXT_CLASSIFIER.ENABLED else 0,
            "text_temperature": m.TEXT_CLASSIFIER.TEMPERATURE,
        }

    def forward(self, x: List[torch.Tensor], mask_features: torch.Tensor):
        """
        Args:
            x: multi-scale features, coarse to fine, each (N, C, H_l, W_l).
            mask_features: (N, mask_dim, H, W).
        Returns:
            dict with ``pred_logits`` (N, Q, K+1), ``pred_masks`` (N, Q, H, W), ``pred_embeddings`` (N, Q, C)
            (normalised query features of the last layer) and ``aux_outputs`` (one dict per earlier prediction).
        """
        assert len(x) == self.num_feature_levels
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).flatten(2).transpose(1, 2))
            src.append(self.input_proj[i](x[i]).flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None])
        n = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(n, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(n, -1, -1)

        preds = [self.forward_prediction_heads(output, mask_features, sizes[0])]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask = preds[-1][2]
            attn_mask[attn_mask.all(-1)] = False  # a query with an empty mask attends everywhere
            output = self.cross_attention_layers[i](output, query_pos, src[level], pos[level], attn_mask)
            output = self.self_attention_layers[i](output, query_pos)
            output = self.ffn_layers[i](output)
            preds.append(self.forward_prediction_heads(output, mask_features, sizes[(i + 1) % self.num_feature_levels]))
        return {
            "pred_logits": preds[-1][0],
            "pred_masks": preds[-1][1],
            "pred_embeddings": preds[-1][3],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m, _, _ in preds[:-1]],
        }

    def forward_prediction_heads(self, output, mask_features, attn_mask_target_size):
        """Class logits, mask logits, the attention mask for the next layer (True = do not attend) and the
        normalised query features."""
        decoder_output = self.decoder_norm(output)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = F.interpolate(outputs_mask, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        attn_mask = (attn_mask.sigmoid().flatten(2) < 0.5).detach()  # (N, Q, HW)
        attn_mask = attn_mask.unsqueeze(1).expand(-1, self.num_heads, -1, -1).flatten(0, 1).clone()
        return outputs_class, outputs_mask, attn_mask, decoder_output
