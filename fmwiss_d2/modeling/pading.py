"""PADing's generators and feature disentangler (arXiv 2306.11087, Sec. 3.2-3.3).

A generator maps a class's text embedding plus noise to a synthetic *class embedding*: the feature of a
Mask2Former query (``pred_embeddings``, the input of the class head) that shows this class. With them, a classifier
can be retrained for classes that have no training example (stage 2).

* :class:`PrimitiveGenerator` (PADing): the text + noise query attends, through a few transformer-decoder layers,
  to a bank of learnable *primitives* (400 by default); a synthetic embedding is an assembly of primitives chosen
  by their affinity with the text. Why: text is coarse, images are fine-grained; primitives hold fine-grained
  visual attributes that many classes share.
* :class:`MLPGenerator` (GMMN's generator, the baseline of ZS3Net / PADing's ablation): an MLP of text + noise.

Both draw their noise from an optional ``torch.Generator``, so a fixed seed gives the same embeddings.
"""
from __future__ import annotations

import torch
from torch import nn

from detectron2.utils.registry import Registry

from ..utils.errors import registry_get

GENERATOR_REGISTRY = Registry("PADING_GENERATOR")
GENERATOR_REGISTRY.__doc__ = ("Class-embedding generators, built as cls(text_dim, out_dim, cfg_node); chosen by "
                              "METHOD.PADING.GENERATOR.")


def build_generator(cfg, text_dim: int, out_dim: int) -> nn.Module:
    c = cfg.METHOD.PADING
    cls = registry_get(GENERATOR_REGISTRY, c.GENERATOR, "METHOD.PADING.GENERATOR")
    return cls(text_dim, out_dim, noise_dim=c.NOISE_DIM, num_primitives=c.NUM_PRIMITIVES, num_layers=c.GENERATOR_LAYERS,
               hidden_dim=c.GENERATOR_HIDDEN_DIM, layer_noise=c.LAYER_NOISE, dropout=c.GENERATOR_DROPOUT)


class _GeneratorBase(nn.Module):
    def __init__(self, noise_dim: int):
        super().__init__()
        self.noise_dim = noise_dim

    def noise(self, n: int, like: torch.Tensor, generator: torch.Generator | None = None,
              dim: int | None = None) -> torch.Tensor:
        z = torch.randn(n, dim or self.noise_dim, generator=generator,
                        device=generator.device if generator else like.device)
        return z.to(like)


class _PrimitiveLayer(nn.Module):
    """Cross-attention of the queries to the primitives, then an FFN (post-norm, residual). No self-attention:
    every synthetic embedding depends on its own text and noise only. ``noise`` (if given) is added after the
    cross-attention, before its norm, as in PADing's public code."""

    def __init__(self, dim: int, nheads: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        # ReLU and dropout share index 1, so the checkpoint keys stay ffn.0 / ffn.2 as before the dropout
        self.ffn = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Sequential(nn.ReLU(), nn.Dropout(dropout)),
                                 nn.Linear(hidden_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, primitives: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        q = q + self.dropout(self.attn(q, primitives, primitives, need_weights=False)[0])
        q = self.norm1(q if noise is None else q + noise)
        return self.norm2(q + self.dropout(self.ffn(q)))


@GENERATOR_REGISTRY.register()
class PrimitiveGenerator(_GeneratorBase):
    """``e = LN(Dec^L(W_t t + W_z z; P))``: L layers of cross-attention over the primitives ``P`` (learned,
    (num_primitives, out_dim)) and FFNs, queried by the projected text ``t`` plus projected noise ``z ~ N(0, I)``.

    ``layer_noise``: the public code's form instead: the query is the projected text alone and every layer adds
    ``N(0, I)`` noise in the embedding space after its cross-attention, so no layer can rely on an exact input;
    ``dropout`` is that code's decoder dropout (0.1 there)."""

    def __init__(self, text_dim: int, out_dim: int, *, noise_dim: int = 64, num_primitives: int = 400,
                 num_layers: int = 3, hidden_dim: int = 256, nheads: int = 4, layer_noise: bool = False,
                 dropout: float = 0.0):
        super().__init__(noise_dim)
        self.layer_noise = layer_noise
        self.text_proj = nn.Linear(text_dim, out_dim)
        self.noise_proj = None if layer_noise else nn.Linear(noise_dim, out_dim)
        self.primitives = nn.Embedding(num_primitives, out_dim)
        nheads = nheads if out_dim % nheads == 0 else 1
        self.layers = nn.ModuleList(_PrimitiveLayer(out_dim, nheads, hidden_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, text: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, text_dim) text embeddings -> (N, out_dim) synthetic class embeddings (one noise draw each)."""
        q = self.text_proj(text)
        if not self.layer_noise:
            q = q + self.noise_proj(self.noise(len(text), text, generator))
        q = q[:, None]
        primitives = self.primitives.weight[None].expand(len(text), -1, -1)
        for layer in self.layers:
            noise = self.noise(len(text), text, generator, q.shape[-1])[:, None] if self.layer_noise else None
            q = layer(q, primitives, noise)
        return self.norm(q[:, 0])


@GENERATOR_REGISTRY.register()
class MLPGenerator(_GeneratorBase):
    """GMMN's generator: ``e = LN(W_2 LeakyReLU(W_1 [t, z]))`` (no primitives)."""

    def __init__(self, text_dim: int, out_dim: int, *, noise_dim: int = 64, hidden_dim: int = 256, **unused):
        super().__init__(noise_dim)
        self.net = nn.Sequential(nn.Linear(text_dim + noise_dim, hidden_dim), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, text: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.norm(self.net(torch.cat([text, self.noise(len(text), text, generator)], dim=-1)))


class FeatureDisentangler(nn.Module):
    """Splits a class embedding x into a semantic-related part ``r = E_r(x)`` and a semantic-unrelated part
    ``u = E_u(x)``, and reconstructs ``x ~ D([r, u])`` (Sec. 3.3); ``text_proj`` brings text embeddings into the
    related space for the classification and alignment terms."""

    def __init__(self, dim: int, text_dim: int, hidden_dim: int = 256):
        super().__init__()

        def mlp(a, b):
            return nn.Sequential(nn.Linear(a, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, b))

        self.related = mlp(dim, dim)
        self.unrelated = mlp(dim, dim)
        self.decoder = mlp(2 * dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)

    def forward(self, x: torch.Tensor):
        """``(r, u, reconstruction)``."""
        r, u = self.related(x), self.unrelated(x)
        return r, u, self.decoder(torch.cat([r, u], dim=-1))
