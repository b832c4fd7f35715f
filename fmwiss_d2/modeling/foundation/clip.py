"""CLIP (open_clip) wrapper: class-name text embeddings, global image embeddings and dense class maps.

Any open_clip model is built from a model name (``"ViT-B-16"``), a registered custom config, or a path to a
model-config JSON, and loaded from a local checkpoint file (open_clip or OpenAI format), an open_clip
pretrained tag (needs its download cache), nothing (random weights, for tests), or ``"auto:shapes"`` (the
tiny CLIP pretrained on the synthetic world by :mod:`fmwiss_d2.modeling.foundation.pretrain_clip`).

Dense maps follow MaskCLIP (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): CLIP's image
embedding is the class token after the last attention block, which mixes the *values* of all patch tokens.
Dropping the query-key attention of that block and pushing every patch token through the value projection
and the output projection (then ``ln_post`` and ``proj``, as the class token would be) gives one embedding
per patch in the joint image-text space; its cosine with the class-name text embeddings is a dense
class-aware score map. Positional embeddings are bicubically interpolated to the input's patch grid, so any
input size and aspect works.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import check_state_dict, read_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "CLIPWrapper", "build_clip", "build_clip_from_cfg", "register_model_configs", "load_clip_state_dict",
    "DEFAULT_TEMPLATES", "MODEL_CONFIG_DIR",
]

MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")
AUTO_PREFIX = "auto:"

# Prompt templates: natural sentences that are also the sentence frames of the synthetic world's captions,
# so the same defaults suit a public CLIP and the tiny one (which has only ever read caption-like text).
DEFAULT_TEMPLATES = ("a picture of a {}.", "a scene with a {}.")

# Keys of OpenAI's released files that are hyper-parameters rather than weights.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")

_registered = False


def register_model_configs() -> None:
    """Registers the project's open_clip model configs (``model_configs/*.json``, e.g. ``ShapesCLIP-Tiny``)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _resolve_model_name(model_name: str) -> str:
    """A model name, or the stem of a config JSON file (which is registered with open_clip first)."""
    import open_clip

    register_model_configs()
    if model_name.endswith(".json"):
        if not os.path.isfile(model_name):
            raise FileNotFoundError(f"open_clip model config not found: {model_name!r}")
        open_clip.add_model_config(model_name)
        return os.path.splitext(os.path.basename(model_name))[0]
    if open_clip.get_model_config(model_name) is None and ":" not in model_name:
        raise KeyError(f"unknown open_clip model {model_name!r}; known: {', '.join(open_clip.list_models())}")
    return model_name


def _clean_state_dict(state: dict) -> dict:
    """Unwraps ``{"state_dict": ...}`` (open_clip training checkpoints), strips DDP's ``module.`` prefix and
    drops the hyper-parameter entries of OpenAI's files."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for k, v in state.items():
        if k in _NON_WEIGHT_KEYS:
            continue
        if k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def load_clip_state_dict(model: nn.Module, path: str, architecture: str) -> None:
    """Loads an open_clip/OpenAI-format file into ``model`` strictly; names the file and architecture on error."""
    state = _clean_state_dict(read_checkpoint(path, what=f"CLIP checkpoint for {architecture}"))
    own = model.state_dict()
    # a scalar logit_scale is stored as 0-d by some versions and 1-element by others
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].numel() == own["logit_scale"].numel():
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    if "logit_bias" in own and "logit_bias" not in state and own["logit_bias"] is not None:
        state["logit_bias"] = own["logit_bias"]
    check_state_dict(own, state, path=path, architecture=f"open_clip {architecture!r}")
    model.load_state_dict(state, strict=True)


class CLIPWrapper(nn.Module):
    """An open_clip model with class-name embeddings (cached per class list) and MaskCLIP dense maps.

    Images are float tensors ``(B, 3, H, W)`` with RGB values in [0, 255]; :meth:`normalize` applies the
    model's own mean/std. All public methods run without gradients in the model's current mode.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        model_name: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.templates = tuple(templates) or DEFAULT_TEMPLATES
        for t in self.templates:
            if "{}" not in t:
                raise ValueError(f"prompt template {t!r} has no '{{}}' placeholder for the class name")
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------ text
    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.model.visual.patch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.visual.image_size)

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """L2-normalized ``(K, D)`` embeddings: each class's prompts embedded, normalized, averaged, renormalized
        (CLIP's prompt ensembling). Cached per (class list, templates); each class is computed independently."""
        templates = tuple(templates) if templates is not None else self.templates
        key = (tuple(class_names), templates)
        cached = self._text_cache.get(key)
        if cached is not None and cached.device == self.pixel_mean.device:
            return cached
        texts = [t.format(c) for c in class_names for t in templates]
        tokens = self.tokenizer(texts).to(self.pixel_mean.device)
        emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        emb = F.normalize(emb.view(len(class_names), len(templates), -1).mean(1), dim=-1)
        self._text_cache[key] = emb
        return emb

    # ----------------------------------------------------------------------------------------- image
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 255] -> the model's normalized input."""
        return (images.to(self.pixel_mean) - self.pixel_mean) / self.pixel_std

    def _check_dense_support(self):
        visual = self.model.visual
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise NotImplementedError(
                f"dense maps need an open_clip VisionTransformer image tower; {self.model_name} has "
                f"{type(visual).__name__}")
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError(f"dense maps are not defined for attention-pooled towers ({self.model_name})")
        if visual.pool_type not in ("tok", "avg"):
            raise NotImplementedError(f"pool_type {visual.pool_type!r} has no image embedding ({self.model_name})")
        last = visual.transformer.resblocks[-1]
        if not isinstance(last, ResidualAttentionBlock) or not isinstance(last.attn, nn.MultiheadAttention):
            raise NotImplementedError(f"dense maps need nn.MultiheadAttention blocks ({self.model_name})")

    def _pad_to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Resizes so that both sides are multiples of the patch size (rounding up); aspect kept to a patch."""
        ph, pw = self.patch_size
        h, w = x.shape[-2:]
        nh, nw = math.ceil(h / ph) * ph, math.ceil(w / pw) * pw
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        return x

    def _positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1 + h*w, C)``: the class position unchanged, patch positions bicubically resized to ``grid``."""
        visual = self.model.visual
        pos = visual.positional_embedding
        gh, gw = visual.grid_size
        if tuple(grid) == (gh, gw):
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def _tokens_before_last_block(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalized image -> tokens ``(B, 1 + h*w, C)`` entering the last residual block, and the grid."""
        visual = self.model.visual
        x = visual.conv1(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid).to(x.dtype)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in blocks[:-1]:
            x = blk(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x, grid

    def _last_block(self, x: torch.Tensor) -> torch.Tensor:
        transformer = self.model.visual.transformer
        if getattr(transformer, "batch_first", True):
            return transformer.resblocks[-1](x)
        return transformer.resblocks[-1](x.transpose(0, 1)).transpose(0, 1)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized global embeddings ``(B, D)`` of RGB images in [0, 255], at any input size."""
        self._check_dense_support()
        visual = self.model.visual
        x, _ = self._tokens_before_last_block(self.normalize(self._pad_to_patches(images.float())))
        x = self._last_block(x)
        pool = (lambda t: t[:, 1:].mean(1)) if visual.pool_type == "avg" else (lambda t: t[:, 0])
        pooled = visual.ln_post(pool(x)) if visual.final_ln_after_pool else pool(visual.ln_post(x))
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled.float(), dim=-1)

    @torch.no_grad()
    def dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """MaskCLIP patch embeddings ``(B, D, h, w)`` (L2-normalized), ``h, w`` = the input's patch grid.

        For the tokens ``x`` entering the last block: ``v = ln_1(x) W_v^T + b_v`` (the value third of the
        fused in-projection), ``y = out_proj(v)`` (times the block's layer scale, if any), then
        ``ln_post(y) @ proj`` for every patch token -- the query-key attention is skipped.
        """
        self._check_dense_support()
        visual = self.model.visual
        x, (h, w) = self._tokens_before_last_block(self.normalize(self._pad_to_patches(images.float())))
        blk = visual.transformer.resblocks[-1]
        attn: nn.MultiheadAttention = blk.attn
        c = x.shape[-1]
        y = blk.ln_1(x[:, 1:])
        v = F.linear(y, attn.in_proj_weight[2 * c:], None if attn.in_proj_bias is None else attn.in_proj_bias[2 * c:])
        y = blk.ls_1(attn.out_proj(v))
        y = visual.ln_post(y)
        if visual.proj is not None:
            y = y @ visual.proj
        y = F.normalize(y.float(), dim=-1)
        return y.transpose(1, 2).reshape(y.shape[0], -1, h, w)

    @torch.no_grad()
    def dense_logits(
        self,
        images: torch.Tensor,
        class_names: Sequence[str],
        *,
        output_size: tuple[int, int] | str | None = "input",
        templates: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Cosine similarities ``(B, K, H', W')`` between patch embeddings and the classes' text embeddings.

        ``output_size``: ``"input"`` (default) resizes bilinearly to the input's ``(H, W)``; ``None`` keeps the
        patch grid (which has the input's aspect, to a patch); a tuple gives that size.
        """
        emb = self.dense_embeddings(images)
        text = self.text_embeddings(class_names, templates).to(emb)
        logits = torch.einsum("bdhw,kd->bkhw", emb, text)
        if output_size == "input":
            output_size = tuple(images.shape[-2:])
        if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits

    @torch.no_grad()
    def classify(self, images: torch.Tensor, class_names: Sequence[str], templates: Sequence[str] | None = None):
        """Zero-shot cosine similarities ``(B, K)`` of whole images with the class prompts."""
        return self.encode_image(images) @ self.text_embeddings(class_names, templates).T

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, templates={self.templates!r}"


def build_clip(
    model_name: str,
    checkpoint: str = "",
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
    force_quick_gelu: bool = False,
    cache_dir: str | None = None,
) -> CLIPWrapper:
    """Builds a :class:`CLIPWrapper`.

    Args:
        model_name: an open_clip model name (``"ViT-B-16"``, ``"ShapesCLIP-Tiny"``) or a model-config JSON path.
        checkpoint: a local file (open_clip ``state_dict``/``{"state_dict": ...}`` or OpenAI's TorchScript
            archive), an open_clip pretrained tag (resolved by open_clip, needs its download cache),
            ``"auto:shapes"`` (pretrain the tiny model on the default synthetic world if absent, cached),
            or ``""`` for random weights.
        templates: prompt templates with one ``{}`` for the class name.
        force_quick_gelu: use QuickGELU (what OpenAI's weights were trained with) in a model name without
            the ``-quickgelu`` suffix.
        cache_dir: root of the cache used by ``"auto:"`` checkpoints.
    """
    import open_clip

    name = _resolve_model_name(model_name)
    looks_like_path = os.sep in checkpoint or checkpoint.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if checkpoint.startswith(AUTO_PREFIX):
        from .pretrain_clip import resolve_auto_checkpoint

        checkpoint = resolve_auto_checkpoint(checkpoint, name, cache_dir=cache_dir)
        looks_like_path = True
    if checkpoint and not looks_like_path and not os.path.isfile(checkpoint):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if checkpoint not in tags:
            raise FileNotFoundError(
                f"CLIP checkpoint {checkpoint!r} is neither a file nor a pretrained tag of {name!r} "
                f"(tags: {', '.join(tags) or 'none'})")
        try:
            model = open_clip.create_model(name, pretrained=checkpoint, device=device,
                                           force_quick_gelu=force_quick_gelu)
        except Exception as e:  # noqa: BLE001 - re-raised with the actionable part
            raise RuntimeError(
                f"could not fetch open_clip weights {name!r}/{checkpoint!r} ({e}); offline, download the file "
                f"elsewhere and pass its local path as the checkpoint") from e
    else:
        model = open_clip.create_model(name, pretrained=None, device=device, force_quick_gelu=force_quick_gelu)
        if checkpoint:
            load_clip_state_dict(model, checkpoint, name)
    tokenizer = open_clip.get_tokenizer(name)
    return CLIPWrapper(model, tokenizer, model_name=name, templates=templates).to(device)


def build_clip_from_cfg(cfg, device: str | torch.device | None = None) -> CLIPWrapper:
    """:func:`build_clip` from ``cfg.MODEL.CLIP`` (``"auto:shapes"`` uses ``cfg.SHAPES``'s world, and only for a
    config on that world's datasets)."""
    c = cfg.MODEL.CLIP
    checkpoint = c.CHECKPOINT
    if checkpoint.startswith(AUTO_PREFIX):
        from .checkpoint import require_synthetic_world
        from .pretrain_clip import ensure_tiny_clip, pretrain_config_from_cfg

        require_synthetic_world(cfg, "MODEL.CLIP.CHECKPOINT", "open_clip checkpoint (e.g. open_clip_pytorch_model.bin)")
        spec, cache_dir, train_cfg = pretrain_config_from_cfg(cfg)
        checkpoint = ensure_tiny_clip(spec, cache_dir, model_name=c.MODEL_NAME, config=train_cfg)
    return build_clip(
        c.MODEL_NAME, checkpoint, templates=tuple(c.PROMPT_TEMPLATES) or DEFAULT_TEMPLATES,
        device=device or cfg.MODEL.DEVICE, force_quick_gelu=c.FORCE_QUICK_GELU,
    )
