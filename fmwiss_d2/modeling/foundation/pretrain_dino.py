"""DINO self-distillation of a tiny ViT on synthetic-world images (Caron et al., ICCV 2021).

The images are an object-centric variant of the world (see :func:`pretraining_corpus`), as DINO's are
ImageNet's. A student and a teacher share the architecture (ViT backbone + projection head ending in ``K``
prototypes). Each image gives two global crops and small local crops (multi-crop), some of them blurred; the
teacher sees the global crops only, the student every crop, and the
student's distribution over the prototypes at temperature ``tau_s`` is trained to match the teacher's for
every other view (cross-entropy). Collapse is avoided by *centering* (an EMA of the teacher's mean output is
subtracted from its logits) and *sharpening* (a low teacher temperature ``tau_t``). The teacher is an
exponential moving average of the student (momentum cosine-scheduled to 1); no gradient flows through it.

:func:`ensure_tiny_dino` returns the cached checkpoint for a (world, architecture, training config),
training it first when absent. The file has DINO's public layout: ``{"student": {"module.backbone.*",
"module.head.*"}, "teacher": {"backbone.*", "head.*"}, ...}``.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from fmwiss_d2.data.datasets.shapes import WorldSpec

from .checkpoint import atomic_save, cache_key, file_lock, foundation_cache_dir

logger = logging.getLogger(__name__)

__all__ = ["DINOPretrainConfig", "DINOHead", "dino_loss", "pretrain_dino", "ensure_tiny_dino",
           "dino_checkpoint_path", "resolve_auto_checkpoint", "pretrain_config_from_cfg", "pretraining_corpus"]

PRETRAIN_VERSION = 3  # 2: object-centric corpus, multi-crop and blur; 3: student stochastic depth, 500 steps
DEFAULT_ARCH = "dino_shapes_tiny"
CORPORA = ("object_centric", "world")  # what DINO can learn from; see pretraining_corpus


@dataclass(frozen=True)
class DINOPretrainConfig:
    """Hyper-parameters of the tiny DINO pretraining (all of them enter the cache key)."""

    # Defaults chosen by the CLS-attention foreground IoU on the first 200 val images of the default world
    # (tools/bench/foundation_quality.py measures all 500); the README lists the runs. The corpus matters most:
    # on the scene world's own images the attention settles on the grainy stuff (0.10-0.15, no better than a
    # random ViT); on object-centric images of the same generator it finds the objects.
    steps: int = 500  # optimizer steps (without drop_path, runs past 300 made the attention of some seeds
    # peak on one part of one object)
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    warmup: int = 20  # warm-up steps
    weight_decay: float = 0.04  # on matrices only
    corpus: str = "object_centric"  # "object_centric": the world's generator, ImageNet-like layout; "world": its own images
    corpus_objects: tuple = (1, 1)  # objects per object-centric image (min, max)
    global_size: int = 48  # side of the two global crops
    global_scale: tuple = (0.25, 1.0)  # their area range
    local_crops: int = 4  # number of local crops (multi-crop; 0 = the two global views only)
    local_size: int = 24  # their side
    local_scale: tuple = (0.05, 0.3)  # their area range: a part of an object or less
    blur_p: float = 0.5  # share of crops Gaussian-blurred (the stuff grain then stops being a view-invariant cue)
    blur_sigma: tuple = (0.1, 1.5)  # blur sigma range, in crop pixels
    out_dim: int = 256  # prototypes K of the projection head
    student_temp: float = 0.1  # tau_s
    teacher_temp: float = 0.04  # tau_t (sharpening)
    center_momentum: float = 0.9  # EMA of the teacher's mean output
    ema_start: float = 0.98  # teacher momentum at step 0, cosine to 1 at the end
    freeze_last_layer: int = 20  # steps during which the prototypes are not updated (stabilizes the start)
    drop_path: float = 0.2  # stochastic depth of the student; it keeps the longer run stable (0.1, DINO's ViT-S
    # value, had the higher mean but one seed of three below 0.5)
    clip_grad: float = 3.0  # per-step gradient-norm clip
    seed: int = 0  # initialization, batch order and augmentations


class _WeightNormLinear(nn.Module):
    """``y = x (g * v / ||v||)^T`` with rows normalized; parameters named as DINO's (``weight_g``, ``weight_v``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=False)  # DINO's norm_last_layer

    def forward(self, x):
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """MLP (3 layers, GELU) -> L2-normalized bottleneck -> weight-normalized linear layer onto ``K`` prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, bottleneck_dim: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = _WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class _MultiCrop(nn.Module):
    """Backbone + head over a list of crops grouped by resolution (one backbone call per resolution)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        out, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            out.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(out))


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, n_global: int,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """``mean over pairs (t, s), t != s, of CE(softmax((t - c) / tau_t), softmax(s / tau_s))``.

    ``student_out`` ``(V * B, K)`` for V views (the first ``n_global`` global), ``teacher_out`` ``(n_global * B, K)``.
    """
    s = (student_out / student_temp).chunk(student_out.shape[0] // (teacher_out.shape[0] // n_global))
    t = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach().chunk(n_global)
    total, terms = 0.0, 0
    for ti, q in enumerate(t):
        for si, logits in enumerate(s):
            if si == ti:
                continue
            total = total + torch.sum(-q * F.log_softmax(logits, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def dino_checkpoint_path(spec: WorldSpec, cache_dir: str | None, arch: str, patch_size: int,
                         config: DINOPretrainConfig) -> str:
    from .dino import dino_arch_config

    key = cache_key("dino", PRETRAIN_VERSION, asdict(spec), dino_arch_config(arch, patch_size), asdict(config))
    name = os.path.splitext(os.path.basename(arch))[0]
    return os.path.join(foundation_cache_dir(cache_dir), f"dino-{name}-seed{config.seed}-{key}.pt")


def _param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or n.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretraining_corpus(spec: WorldSpec, config: DINOPretrainConfig) -> WorldSpec:
    """The world whose training images DINO learns from.

    Why not the scene world itself: DINO's CLS attention finds objects because its data (ImageNet) is
    object-centric -- one or two large objects per photo, backgrounds shared across classes -- so the objects
    are what tells images apart. The scene world's objects cover 15% of the pixels and its stuff regions tell
    scenes apart, and DINO learns the stuff. The object-centric corpus is the same generator (classes, textures,
    stuff, clutter) with the ImageNet-like layout; no label of it is ever read.
    """
    if config.corpus not in CORPORA:
        raise ValueError(f"unknown DINO pretraining corpus {config.corpus!r}; known: "
                         + ", ".join(repr(c) for c in CORPORA))
    if config.corpus == "world":
        return spec
    lo, hi = config.corpus_objects
    return replace(spec, layout="object_centric", min_objects=lo, max_objects=hi, num_val=0)


def _augment(x: torch.Tensor, gen: torch.Generator, config: DINOPretrainConfig) -> torch.Tensor:
    from .data import color_jitter, flip_horizontal, gaussian_blur

    # BYOL/DINO colour augmentation, hue included: without it the exact tint of an image's background is a
    # view-invariant signature of the image, and the CLS token learns to attend to the background
    x = color_jitter(flip_horizontal(x, gen), gen, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8)
    gray = torch.rand(x.shape[0], generator=gen) < 0.2
    x[gray] = x[gray].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return gaussian_blur(x, gen, config.blur_p, config.blur_sigma) if config.blur_p else x


@torch.enable_grad()  # it may first be needed inside a no_grad caller (a pseudo-label source's forward)
def pretrain_dino(
    spec: WorldSpec = WorldSpec(),
    cache_dir: str | None = None,
    *,
    arch: str = DEFAULT_ARCH,
    patch_size: int = 0,
    config: DINOPretrainConfig = DINOPretrainConfig(),
    progress: bool = True,
):
    """Trains student and teacher; returns ``(student, teacher, log)`` (``_MultiCrop`` modules)."""
    from tqdm import tqdm

    from .data import load_world_split, random_resized_crops
    from .dino import IMAGENET_MEAN, IMAGENET_STD, build_vit, dino_arch_config

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    arch_cfg = dino_arch_config(arch, patch_size)
    student = _MultiCrop(build_vit(dict(arch_cfg, drop_path_rate=config.drop_path)),
                         DINOHead(arch_cfg["embed_dim"], config.out_dim))
    # the teacher has no stochastic depth (as in DINO): its targets stay those of the whole network
    teacher = _MultiCrop(build_vit(dict(arch_cfg, drop_path_rate=0.0)), copy.deepcopy(student.head))
    teacher.backbone.load_state_dict(student.backbone.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    images, _ = load_world_split(pretraining_corpus(spec, config), "train", cache_dir)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    center = torch.zeros(1, config.out_dim)
    opt = torch.optim.AdamW(_param_groups(student, config.weight_decay), lr=config.lr)
    n = images.shape[0]
    bs = min(config.batch_size, n)
    order, pos = torch.randperm(n, generator=gen), 0
    log, t0 = [], time.time()
    student.train()
    teacher.train()
    bar = tqdm(range(config.steps), desc="pretrain tiny DINO", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        batch = images[order[pos:pos + bs]].float()
        pos += bs
        progress_frac = step / max(1, config.steps)
        lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup)) * 0.5 * (1 + math.cos(math.pi * progress_frac))
        for g in opt.param_groups:
            g["lr"] = lr
        crops = [random_resized_crops(batch, config.global_size, config.global_scale, gen) for _ in range(2)]
        crops += [random_resized_crops(batch, config.local_size, config.local_scale, gen)
                  for _ in range(config.local_crops)]
        crops = [(_augment(c, gen, config) - mean) / std for c in crops]
        with torch.no_grad():
            t_out = teacher(crops[:2])
        s_out = student(crops)
        loss = dino_loss(s_out, t_out, center, 2, config.student_temp, config.teacher_temp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            nn.utils.clip_grad_norm_(student.parameters(), config.clip_grad)
        if step < config.freeze_last_layer:
            for p in student.head.last_layer.parameters():
                p.grad = None
        opt.step()
        with torch.no_grad():
            m = 1 - (1 - config.ema_start) * 0.5 * (1 + math.cos(math.pi * progress_frac))
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            center.mul_(config.center_momentum).add_(t_out.mean(0, keepdim=True), alpha=1 - config.center_momentum)
        if step % 10 == 0 or step == config.steps - 1:
            # entropy of the mean teacher distribution: log K when spread over all prototypes, 0 when collapsed
            probs = F.softmax((t_out - center) / config.teacher_temp, dim=-1).mean(0)
            ent = float(-(probs * probs.clamp_min(1e-12).log()).sum())
            log.append({"step": step, "loss": round(loss.item(), 4), "teacher_entropy": round(ent, 3)})
            bar.set_postfix(loss=f"{loss.item():.3f}", H=f"{ent:.2f}")
    student.eval()
    teacher.eval()
    logger.info("tiny DINO pretrained in %.0f s (final loss %.3f)", time.time() - t0, loss.item())
    return student, teacher, {"loss": log, "seconds": round(time.time() - t0, 1)}


def dino_format_checkpoint(student: nn.Module, teacher: nn.Module, **extra) -> dict:
    """DINO's public layout: student keys under ``module.`` (it was DDP-wrapped there), teacher keys bare."""
    return {
        "student": {"module." + k: v for k, v in student.state_dict().items()},
        "teacher": dict(teacher.state_dict()),
        **extra,
    }


def ensure_tiny_dino(
    spec: WorldSpec = WorldSpec(),
    cache_dir: str | None = None,
    *,
    arch: str = DEFAULT_ARCH,
    patch_size: int = 0,
    config: DINOPretrainConfig = DINOPretrainConfig(),
    progress: bool = True,
) -> str:
    """The cached checkpoint path for (world, arch, config), pretraining it first when absent (locked, atomic)."""
    path = dino_checkpoint_path(spec, cache_dir, arch, patch_size, config)
    if os.path.isfile(path):
        return path
    with file_lock(path):
        if os.path.isfile(path):
            return path
        logger.info("pretraining the tiny DINO %s on %s (one-time, cached at %s)", arch, spec.folder_name, path)
        student, teacher, log = pretrain_dino(spec, cache_dir, arch=arch, patch_size=patch_size, config=config,
                                              progress=progress)
        atomic_save(dino_format_checkpoint(
            student, teacher, step=config.steps,
            fmwiss_meta={"arch": arch, "patch_size": patch_size, "world": asdict(spec), "config": asdict(config),
                         "corpus": asdict(pretraining_corpus(spec, config)),
                         "version": PRETRAIN_VERSION, "seconds": log["seconds"], "log": log["loss"][-1:]},
        ), path)
    return path


def resolve_auto_checkpoint(checkpoint: str, arch: str, cache_dir: str | None = None, patch_size: int = 0) -> str:
    """``"auto:shapes"`` -> the tiny DINO of the default world (trained if absent)."""
    source = checkpoint.split(":", 1)[1]
    if source != "shapes":
        raise ValueError(f"unknown automatic DINO checkpoint {checkpoint!r} (known: 'auto:shapes')")
    return ensure_tiny_dino(WorldSpec(), cache_dir, arch=arch, patch_size=patch_size)


def pretrain_config_from_cfg(cfg):
    """``(WorldSpec, cache_dir, DINOPretrainConfig)`` from ``cfg.SHAPES`` and ``cfg.MODEL.DINO.PRETRAIN``."""
    s, p = cfg.SHAPES, cfg.MODEL.DINO.PRETRAIN
    spec = WorldSpec(seed=s.SEED, image_size=s.IMAGE_SIZE, num_train=s.NUM_TRAIN, num_val=s.NUM_VAL)
    config = replace(DINOPretrainConfig(), steps=p.STEPS, batch_size=p.BATCH_SIZE, lr=p.LR, corpus=p.CORPUS,
                     seed=p.SEED)
    return spec, s.CACHE_DIR or None, config
