"""Contrastive image-caption pretraining of a tiny open_clip model on the synthetic world (CLIP, Radford et al.
2021): a batch of images and their captions, cosine similarities scaled by a learned temperature, and the
symmetric cross-entropy that matches each image with its own caption among the batch and vice versa. Each
random crop is paired with a caption of what it shows (:func:`.data.crop_captions`), not the whole image's.

:func:`ensure_tiny_clip` returns the path of the cached checkpoint for a (world, model config, training
config), training it first when absent; the checkpoint is an open_clip training-format file
(``{"name", "step", "state_dict"}``) that :func:`fmwiss_d2.modeling.foundation.clip.build_clip` and
``open_clip.create_model(name, pretrained=path)`` both load.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from fmwiss_d2.data.datasets.shapes import CLASS_ATTRIBUTES, WorldSpec

from .checkpoint import atomic_save, cache_key, file_lock, foundation_cache_dir

logger = logging.getLogger(__name__)

__all__ = ["CLIPPretrainConfig", "pretrain_clip", "ensure_tiny_clip", "clip_checkpoint_path",
           "resolve_auto_checkpoint", "pretrain_config_from_cfg", "clip_contrastive_loss"]

PRETRAIN_VERSION = 2  # bump when the training procedure changes: a new cache entry is made
DEFAULT_MODEL = "ShapesCLIP-Tiny"
CAPTION_STYLES = ("names", "attributes")


@dataclass(frozen=True)
class CLIPPretrainConfig:
    """Hyper-parameters of the tiny CLIP pretraining (all of them enter the cache key)."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # image-caption pairs per step (the negatives of each pair)
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, cosine decay to 0)
    warmup: int = 50  # warm-up steps
    weight_decay: float = 0.1  # on matrices only (not on gains, biases, embeddings' scale)
    crop_scale: tuple = (0.08, 1.0)  # random-resized-crop area range (the usual 0.08..1: zoomed-in views)
    crop_captions: bool = True  # caption each crop with what it shows (data.crop_captions), not the whole image
    captions: str = "names"  # "names": classes by name; "attributes": also what they look like (data.crop_captions)
    seed: int = 0  # initialization, batch order and augmentations

    def __post_init__(self):
        # checked here, where every caller passes: a misspelt style would train on names under an attributes key
        if self.captions not in CAPTION_STYLES:
            raise ValueError(f"CLIP pretraining captions must be one of {CAPTION_STYLES} (MODEL.CLIP.PRETRAIN.CAPTIONS, "
                             f"tools/pretrain_clip.py --captions), got {self.captions!r}")


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE: ``(CE(s I T^T, diag) + CE(s T I^T, diag)) / 2`` on L2-normalized embeddings."""
    logits = logit_scale * image_emb @ text_emb.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _model_config(model_name: str) -> dict:
    import open_clip

    from .clip import _resolve_model_name

    name = _resolve_model_name(model_name)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise KeyError(f"no open_clip config for {model_name!r}")
    return cfg


def clip_checkpoint_path(spec: WorldSpec, cache_dir: str | None, model_name: str, config: CLIPPretrainConfig) -> str:
    """``<cache>/foundation/clip-<model>-seed<s>-<hash>.pt``; the hash covers world, model and training config."""
    fields = asdict(config)
    if fields["captions"] == "names":  # the checkpoints made before the field existed keep their key
        del fields["captions"]
    else:  # the captions' words are part of what was trained
        fields["attributes"] = {k: list(v) for k, v in CLASS_ATTRIBUTES.items()}
    key = cache_key("clip", PRETRAIN_VERSION, asdict(spec), _model_config(model_name), fields)
    name = os.path.splitext(os.path.basename(model_name))[0]
    return os.path.join(foundation_cache_dir(cache_dir), f"clip-{name}-seed{config.seed}-{key}.pt")


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in n or "ln" in n or "bn" in n else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.enable_grad()  # it may first be needed inside a no_grad caller (a pseudo-label source's forward)
def pretrain_clip(
    spec: WorldSpec = WorldSpec(),
    cache_dir: str | None = None,
    *,
    model_name: str = DEFAULT_MODEL,
    config: CLIPPretrainConfig = CLIPPretrainConfig(),
    progress: bool = True,
):
    """Trains a tiny open_clip model on the world's training images and captions; returns ``(model, log)``."""
    import open_clip
    from tqdm import tqdm

    from .clip import _resolve_model_name
    from .data import (color_jitter, crop_captions, flip_horizontal, load_world_segments, load_world_split,
                       random_resized_crops)

    name = _resolve_model_name(model_name)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = open_clip.create_model(name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(name)
    images, records = load_world_split(spec, "train", cache_dir)
    tokens = tokenizer([r["caption"] for r in records])
    seg, categories = load_world_segments(spec, "train", cache_dir) if config.crop_captions else (None, None)
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1) * 255
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size

    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    n = images.shape[0]
    bs = min(config.batch_size, n)
    order, pos = torch.randperm(n, generator=gen), 0
    model.train()
    log, t0 = [], time.time()
    bar = tqdm(range(config.steps), desc="pretrain tiny CLIP", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup)) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, boxes = random_resized_crops(images[idx].float(), size, config.crop_scale, gen, return_boxes=True)
        if config.crop_captions:
            text = tokenizer(crop_captions(seg[idx], [categories[i] for i in idx.tolist()], boxes,
                                           attributes=config.captions == "attributes", generator=gen))
        else:
            text = tokens[idx]
        x = color_jitter(flip_horizontal(x, gen), gen, brightness=0.2, contrast=0.2, saturation=0.2)
        x = (x - mean) / std
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(text), dim=-1)
        loss = clip_contrastive_loss(img, txt, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 10 == 0 or step == config.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    model.eval()
    logger.info("tiny CLIP pretrained in %.0f s (final loss %.3f)", time.time() - t0, loss.item())
    return model, {"loss": log, "seconds": round(time.time() - t0, 1)}


def ensure_tiny_clip(
    spec: WorldSpec = WorldSpec(),
    cache_dir: str | None = None,
    *,
    model_name: str = DEFAULT_MODEL,
    config: CLIPPretrainConfig = CLIPPretrainConfig(),
    progress: bool = True,
) -> str:
    """The cached checkpoint path for (world, model, config), pretraining it first when absent (with a lock, so
    concurrent callers train once) and writing it atomically."""
    path = clip_checkpoint_path(spec, cache_dir, model_name, config)
    if os.path.isfile(path):
        return path
    with file_lock(path):
        if os.path.isfile(path):
            return path
        logger.info("pretraining the tiny CLIP %s on %s (one-time, cached at %s)", model_name, spec.folder_name, path)
        model, log = pretrain_clip(spec, cache_dir, model_name=model_name, config=config, progress=progress)
        atomic_save({
            "name": os.path.splitext(os.path.basename(model_name))[0], "step": config.steps,
            "state_dict": model.state_dict(),
            "fmwiss_meta": {"world": asdict(spec), "config": asdict(config), "version": PRETRAIN_VERSION,
                            "seconds": log["seconds"], "final_loss": log["loss"][-1]["loss"] if log["loss"] else None},
        }, path)
    return path


def resolve_auto_checkpoint(checkpoint: str, model_name: str, cache_dir: str | None = None) -> str:
    """``"auto:shapes"`` -> the tiny CLIP of the default world (trained if absent)."""
    source = checkpoint.split(":", 1)[1]
    if source != "shapes":
        raise ValueError(f"unknown automatic CLIP checkpoint {checkpoint!r} (known: 'auto:shapes')")
    return ensure_tiny_clip(WorldSpec(), cache_dir, model_name=model_name)


def pretrain_config_from_cfg(cfg):
    """``(WorldSpec, cache_dir, CLIPPretrainConfig)`` from ``cfg.SHAPES`` and ``cfg.MODEL.CLIP.PRETRAIN``."""
    s, p = cfg.SHAPES, cfg.MODEL.CLIP.PRETRAIN
    spec = WorldSpec(seed=s.SEED, image_size=s.IMAGE_SIZE, num_train=s.NUM_TRAIN, num_val=s.NUM_VAL)
    config = replace(CLIPPretrainConfig(), steps=p.STEPS, batch_size=p.BATCH_SIZE, lr=p.LR, seed=p.SEED,
                     captions=p.CAPTIONS)
    return spec, s.CACHE_DIR or None, config
