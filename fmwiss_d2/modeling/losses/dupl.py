"""DuPL (Wu et al., "DuPL: Dual Student with Trustworthy Progressive Learning for Robust Weakly Supervised
Semantic Segmentation", CVPR 2024): its label functions and losses, each pure and separately tested.

Conventions: CAMs are over the K-1 foreground classes (channel c is model class c + 1; the background, model
class 0, has no CAM); ``image_labels`` is an (N, K-1) 0/1 matrix over the same foreground classes; pseudo-label
maps hold model class ids, ``ignore_index`` where a pixel carries no label.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


__all__ = [
    "normalize_cams", "cams_to_pseudo_labels", "discrepancy_loss",
    "multilabel_classification_loss", "random_affine", "warp", "warp_labels", "consistency_loss",
    "neighbour_affinity", "refine_with_image",
]


def normalize_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Max-min normalisation of (N, C, H, W) class activation maps, per image and class (Sec. 3.1):

        M_c = ReLU(cam_c);   M_c <- (M_c - min_x M_c(x)) / (max_x M_c(x) - min_x M_c(x) + eps)

    so every class map spans [0, 1) and one threshold applies to all classes."""
    m = F.relu(cams)
    lo = m.amin((2, 3), keepdim=True)
    hi = m.amax((2, 3), keepdim=True)
    return (m - lo) / (hi - lo + eps)


def cams_to_pseudo_labels(cams: torch.Tensor, image_labels: torch.Tensor, tau_l: float, tau_h,
                          ignore_index: int = 255) -> torch.Tensor:
    """(N, H, W) pseudo labels from normalised foreground CAMs (N, C, H, W) (Sec. 3.1).

    Only the image's classes count: ``v(x) = max_{c in labels} M_c(x)``, ``c*(x)`` its argmax. Then
    ``v <= tau_l`` -> background (0); ``v >= tau_h`` -> class ``c* + 1``; in between -> ``ignore_index``
    (uncertain: left out of the segmentation loss). ``tau_h``: a number or one per image (N,)."""
    valid = cams * image_labels[:, :, None, None].to(cams)
    value, cls = valid.max(1)
    tau_h = torch.as_tensor(tau_h, dtype=value.dtype, device=value.device)
    if tau_h.dim() == 1:
        tau_h = tau_h[:, None, None]
    labels = torch.full_like(cls, ignore_index)
    labels = torch.where(value >= tau_h, cls + 1, labels)
    return torch.where(value <= tau_l, torch.zeros_like(labels), labels)


def _ring_offsets(dilations: Sequence[int]):
    """The (dy, dx) of each pixel's neighbours: the 3x3 ring (centre left out) times each dilation."""
    return [(d * dy, d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _shifted(x: torch.Tensor, offsets):
    """For each offset, ``x`` read at (y + dy, x + dx) with edge replication outside the image (views of one
    padded copy: replicating by the largest offset reads the same edge values as replicating by each)."""
    h, w = x.shape[-2:]
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    return [padded[..., r + dy: r + dy + h, r + dx: r + dx + w] for dy, dx in offsets]


def neighbour_affinity(images: torch.Tensor, dilations: Sequence[int], color_scale: float = 0.3,
                       position_weight: float = 0.01) -> torch.Tensor:
    """(N, J, H, W) weights of each pixel's J = 8 * len(dilations) neighbours (:func:`_ring_offsets` order), summing
    to 1 per pixel: how alike in colour a neighbour is, relative to how much the pixel's neighbourhood varies,

        a_j = softmax_j( -mean_c (|I_c(j) - I_c(x)| / (s_c(x) * color_scale))^2 )
              + position_weight * softmax_j( -(r_j / (s_r * color_scale))^2 ),   then a_j / sum_j a_j,

    ``s_c(x)`` the standard deviation of channel c over the neighbours, ``r_j`` the neighbour's distance and
    ``s_r`` their standard deviation (the small positional term prefers near neighbours where colours tie).
    The pixel-adaptive refinement (PAR) that ToCo and DuPL's public code apply to CAMs, written from its
    description: because the scale is each pixel's own, one ``color_scale`` fits a flat region and an edge."""
    offsets = _ring_offsets(dilations)
    ring = torch.stack(_shifted(images.float(), offsets), 2)
    diff = (ring - images.float()[:, :, None]).abs()
    spread = ring.std(2, keepdim=True)
    colour = (-((diff / (spread * color_scale + 1e-8)) ** 2).mean(1)).softmax(1)
    radius = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=colour.dtype, device=colour.device)
    position = (-((radius / (radius.std() * color_scale)) ** 2)).softmax(0)[None, :, None, None]
    weights = colour + position_weight * position
    return weights / weights.sum(1, keepdim=True)


def refine_with_image(maps: torch.Tensor, images: torch.Tensor, iterations: int,
                      dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)) -> torch.Tensor:
    """``maps`` (N, C, H, W) propagated ``iterations`` times along the image's colour affinities
    (:func:`neighbour_affinity`, ``images`` (N, 3, H, W) at the same size): ``m(x) <- sum_j a_j(x) m(j)``
    (accumulated ring by ring: no (N, C, J, H, W) tensor is built).
    A weighted average, so values stay in the range of the input, and a constant map stays constant: a
    threshold applied before and after means the same. Why: CAMs come from a stride-16 feature; this snaps
    them to the object edges the image shows."""
    if iterations <= 0:
        return maps
    offsets = _ring_offsets(dilations)
    affinity = neighbour_affinity(images, dilations).unsqueeze(2)  # (N, J, 1, H, W)
    out = maps.float()
    for _ in range(iterations):
        acc = torch.zeros_like(out)
        for j, neighbour in enumerate(_shifted(out, offsets)):
            acc.addcmul_(neighbour, affinity[:, j])
        out = acc
    return out


def discrepancy_loss(f1: torch.Tensor, f2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Symmetric representation discrepancy of the two students (Sec. 3.2), minimised so that they stay apart:

        L_dis = mean_{n, d} [1 + cos(sg(f1[n, d]), f2[n, d])] + mean_{n, d} [1 + cos(sg(f2[n, d]), f1[n, d])]

    for feature maps (N, D, H, W), the cosine taken between a channel's two spatial maps (as the public code
    does), ``sg`` the stop-gradient: each term moves one student only, so neither can collapse onto the other.
    Value in [0, 4]."""
    a, b = f1.flatten(2), f2.flatten(2)
    t1 = 1 + F.cosine_similarity(a.detach(), b, dim=-1, eps=eps).mean()
    t2 = 1 + F.cosine_similarity(b.detach(), a, dim=-1, eps=eps).mean()
    return t1 + t2


def multilabel_classification_loss(logits: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of the image classifiers (the CAM's training signal):

        L_cls = -1/(N C) sum_{n, c} [ y_nc log sigmoid(z_nc) + (1 - y_nc) log sigmoid(-z_nc) ]."""
    return F.binary_cross_entropy_with_logits(logits, image_labels.to(logits))


def random_affine(n: int, *, generator: torch.Generator | None = None, max_rotation: float = 15.0,
                  scale: tuple = (0.8, 1.2), max_translation: float = 0.1, flip: float = 0.5) -> torch.Tensor:
    """(n, 2, 3) random affine maps in ``F.affine_grid``'s normalised coordinates (output -> input): a
    horizontal flip with probability ``flip``, a rotation in +-``max_rotation`` degrees, an isotropic scale in
    ``scale`` and a translation in +-``max_translation`` of the image."""
    u = torch.rand(n, 5, generator=generator)
    angle = (2 * u[:, 0] - 1) * math.radians(max_rotation)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    sign = torch.where(u[:, 2] < flip, -1.0, 1.0)
    tx, ty = (2 * u[:, 3] - 1) * 2 * max_translation, (2 * u[:, 4] - 1) * 2 * max_translation
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    return torch.stack([torch.stack([sign * cos, -sin, tx], 1), torch.stack([sign * sin, cos, ty], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` (N, C, H, W) resampled through the affine maps ``theta`` (N, 2, 3); outside the image: 0."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp_labels(labels: torch.Tensor, theta: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Label maps (N, H, W) through the same affine maps as :func:`warp` (nearest neighbour, so ids stay ids);
    pixels that come from outside the image get ``ignore_index``."""
    shifted = (labels.float() + 1)[:, None]  # 0 marks "outside" after the warp
    out = warp(shifted, theta, mode="nearest")[:, 0].round().long() - 1
    return torch.where(out < 0, torch.full_like(out, ignore_index), out)


def consistency_loss(strong_logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Consistency regularisation on the pixels left out of the segmentation loss (Sec. 3.4, "every pixel
    matters"):

        L_reg = sum_{x in R} CE(P~(x), phi'(Y)(x)) / |R|,

    ``strong_logits`` (N, K, H, W) the prediction on the strongly augmented view ``phi(X)``, ``target`` (N, H, W)
    the labels already warped by the same affine ``phi'`` and set to ``ignore_index`` outside the region R.
    0 when R is empty."""
    valid = target != ignore_index
    if not valid.any():
        return strong_logits.sum() * 0.0
    ce = F.cross_entropy(strong_logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return ce / valid.sum()
