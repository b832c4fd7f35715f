"""DINO ViT wrapper (timm ``VisionTransformer``): last-layer CLS attention per head, keys and patch features.

Checkpoints in the public DINO format load directly (Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021): either a plain backbone state dict (``dino_vitbase8_pretrain.pth``) or a
full training checkpoint ``{"student": ..., "teacher": ..., ...}`` whose keys carry ``module.`` (DDP) and
``backbone.`` prefixes and whose projection-head keys (``head.*``) are dropped. The backbone key names
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
mlp.fc2}.*``, ``norm.*``) are timm's. Positional embeddings are resampled to the input's patch grid, so
any input size works; DINO's self-attention maps of the last layer's CLS query segment foreground objects.
"""
from __future__ import annotations

import json
import math
import os
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import check_state_dict, read_checkpoint

__all__ = ["DINOWrapper", "build_dino", "build_dino_from_cfg", "dino_arch_config", "load_dino_state_dict",
           "dino_backbone_state_dict", "DINO_ARCHS"]

MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")
AUTO_PREFIX = "auto:"

# The architectures DINO released (``vision_transformer.py`` of the DINO repository), at 224 x 224.
DINO_ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_arch_config(arch: str, patch_size: int = 0) -> dict:
    """Constructor arguments of an architecture: a DINO name (``vit_small``...), the stem of a JSON file in
    ``model_configs/`` (``dino_shapes_tiny``) or a JSON path. ``patch_size > 0`` overrides the patch size."""
    if arch in DINO_ARCHS:
        cfg = dict(img_size=224, patch_size=16, mlp_ratio=4.0, qkv_bias=True, **DINO_ARCHS[arch])
    else:
        path = arch if arch.endswith(".json") else os.path.join(MODEL_CONFIG_DIR, arch + ".json")
        if not os.path.isfile(path):
            known = sorted(DINO_ARCHS) + sorted(
                f[:-5] for f in os.listdir(MODEL_CONFIG_DIR) if f.startswith("dino") and f.endswith(".json"))
            raise KeyError(f"unknown DINO architecture {arch!r} (no file {path!r}); known: {', '.join(known)}")
        with open(path) as f:
            cfg = json.load(f)
    if patch_size:
        cfg["patch_size"] = int(patch_size)
    return cfg


def describe_arch(arch: str, cfg: dict) -> str:
    return (f"DINO ViT {arch!r} (embed_dim={cfg['embed_dim']}, depth={cfg['depth']}, heads={cfg['num_heads']}, "
            f"patch_size={cfg['patch_size']})")


def build_vit(cfg: dict) -> nn.Module:
    """A timm ``VisionTransformer`` backbone (no classifier) as DINO defines it (LayerNorm eps 1e-6)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=cfg.get("img_size", 224), patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"],
        depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg.get("mlp_ratio", 4.0),
        qkv_bias=cfg.get("qkv_bias", True), num_classes=0, global_pool="token",
        drop_path_rate=cfg.get("drop_path_rate", 0.0), norm_layer=partial(nn.LayerNorm, eps=1e-6),
        dynamic_img_size=True,  # timm's own forward (used in pretraining) then accepts multi-crop sizes
    )


def _strip(key: str, prefixes: Sequence[str] = ("module.", "backbone.")) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def dino_backbone_state_dict(raw: dict, checkpoint_key: str = "teacher") -> dict:
    """The backbone weights of a DINO-format checkpoint: the ``checkpoint_key`` entry (else ``teacher``,
    ``student``, ``model``, ``state_dict``; else the dict itself), prefixes ``module.``/``backbone.`` stripped,
    projection-head keys ``head.*`` dropped."""
    sd = raw
    for key in (checkpoint_key, "teacher", "student", "model", "state_dict"):
        if key and isinstance(raw.get(key), dict):
            sd = raw[key]
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = _strip(k)
        if k.startswith("head."):
            continue
        out[k] = v
    return out


def _resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """``(1, P + n, C)`` with a square grid of ``n`` patch positions -> ``(1, P + h*w, C)``, bicubic."""
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    n = patches.shape[1]
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"cannot resample a non-square positional embedding of {n} patches")
    if (side, side) == tuple(grid):
        return pos
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, patches], dim=1)


def load_dino_state_dict(vit: nn.Module, path: str, architecture: str, checkpoint_key: str = "teacher") -> None:
    """Loads a DINO-format file into ``vit`` strictly; names the file and architecture on any mismatch.

    A positional embedding made for another image size (same width) is resampled to the model's grid.
    """
    sd = dino_backbone_state_dict(read_checkpoint(path, what=f"DINO checkpoint for {architecture}"), checkpoint_key)
    own = vit.state_dict()
    pos = sd.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape != own["pos_embed"].shape \
            and pos.shape[-1] == own["pos_embed"].shape[-1]:
        try:
            sd["pos_embed"] = _resample_pos_embed(pos, tuple(vit.patch_embed.grid_size), vit.num_prefix_tokens)
        except ValueError:
            pass  # reported as a shape mismatch below
    check_state_dict(own, sd, path=path, architecture=architecture)
    vit.load_state_dict(sd, strict=True)


class DINOWrapper(nn.Module):
    """A ViT returning, for RGB images in [0, 255] of any size, a dict with (``h, w`` = the patch grid):

    * ``"attentions"`` ``(B, heads, h, w)``: last block's softmax attention of the CLS query to every patch;
    * ``"keys"`` ``(B, C, h, w)``: that block's patch keys, heads concatenated (as LOST/TokenCut use them);
    * ``"features"`` ``(B, C, h, w)``: final (normed) patch tokens; ``"cls"`` ``(B, C)``: final CLS token.
    """

    def __init__(self, vit: nn.Module, *, arch: str = "", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.vit = vit.eval()
        self.arch = arch
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.patch_size)

    @property
    def num_heads(self) -> int:
        return self.vit.blocks[-1].attn.num_heads

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.pixel_mean) - self.pixel_mean) / self.pixel_std

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        vit = self.vit
        ph, pw = self.patch_size
        h, w = x.shape[-2:]
        nh, nw = math.ceil(h / ph) * ph, math.ceil(w / pw) * pw
        if (nh, nw) != (h, w):  # round the size up to whole patches
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        x = vit.patch_embed.proj(x)
        grid = tuple(x.shape[-2:])
        x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix = [vit.cls_token.expand(x.shape[0], -1, -1)]
        if getattr(vit, "reg_token", None) is not None:
            prefix.append(vit.reg_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        x = x + _resample_pos_embed(vit.pos_embed, grid, vit.num_prefix_tokens)
        return vit.norm_pre(vit.pos_drop(x)), grid

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` final (normed) patch tokens of an already normalised batch, with gradients: the ViT
        as a trainable dense backbone (:class:`fmwiss_d2.modeling.backbone.vit.ViTBackbone`)."""
        x, (h, w) = self._embed(x)
        x = self.vit.norm(self.vit.blocks(x))
        return x[:, self.vit.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        vit = self.vit
        x, (h, w) = self._embed(self.normalize(images.float()))
        for blk in vit.blocks[:-1]:
            x = blk(x)
        blk = vit.blocks[-1]
        attn_mod = blk.attn
        b, n, _ = x.shape
        heads, hd = attn_mod.num_heads, attn_mod.head_dim
        qkv = attn_mod.qkv(blk.norm1(x)).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k = attn_mod.q_norm(qkv[0]), attn_mod.k_norm(qkv[1])
        attn = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        p = vit.num_prefix_tokens
        out = vit.norm(blk(x))
        return {
            "attentions": attn[:, :, 0, p:].reshape(b, heads, h, w),
            "keys": k[:, :, p:].permute(0, 1, 3, 2).reshape(b, heads * hd, h, w),
            "features": out[:, p:].transpose(1, 2).reshape(b, -1, h, w),
            "cls": out[:, 0],
        }

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"


def build_dino(
    arch: str,
    checkpoint: str = "",
    *,
    patch_size: int = 0,
    checkpoint_key: str = "teacher",
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> DINOWrapper:
    """Builds a :class:`DINOWrapper`.

    Args:
        arch: ``vit_tiny``/``vit_small``/``vit_base`` (DINO's), a ``model_configs/`` stem or a JSON path.
        checkpoint: a DINO-format file, ``"auto:shapes"`` (pretrain the tiny ViT on the default synthetic
            world if absent, cached) or ``""`` (random weights).
        patch_size: overrides the architecture's patch size (DINO released /16 and /8 models).
        checkpoint_key: which network of a full training checkpoint to load (DINO evaluates the teacher).
    """
    cfg = dino_arch_config(arch, patch_size)
    vit = build_vit(cfg)
    if checkpoint.startswith(AUTO_PREFIX):
        from .pretrain_dino import resolve_auto_checkpoint

        checkpoint = resolve_auto_checkpoint(checkpoint, arch, cache_dir=cache_dir, patch_size=patch_size)
    if checkpoint:
        load_dino_state_dict(vit, checkpoint, describe_arch(arch, cfg), checkpoint_key)
    return DINOWrapper(vit, arch=arch).to(device)


def build_dino_from_cfg(cfg, device: str | torch.device | None = None) -> DINOWrapper:
    """:func:`build_dino` from ``cfg.MODEL.DINO`` (``"auto:shapes"`` uses ``cfg.SHAPES``'s world, and only for a
    config on that world's datasets)."""
    c = cfg.MODEL.DINO
    checkpoint = c.CHECKPOINT
    if checkpoint.startswith(AUTO_PREFIX):
        from .checkpoint import require_synthetic_world
        from .pretrain_dino import ensure_tiny_dino, pretrain_config_from_cfg

        require_synthetic_world(cfg, "MODEL.DINO.CHECKPOINT", "DINO checkpoint (e.g. dino_vitbase8_pretrain.pth)")
        spec, cache_dir, train_cfg = pretrain_config_from_cfg(cfg)
        checkpoint = ensure_tiny_dino(spec, cache_dir, arch=c.ARCH, patch_size=c.PATCH_SIZE, config=train_cfg)
    return build_dino(c.ARCH, checkpoint, patch_size=c.PATCH_SIZE, checkpoint_key=c.CHECKPOINT_KEY,
                      device=device or cfg.MODEL.DEVICE)
