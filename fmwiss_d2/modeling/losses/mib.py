"""MiB (Cermelli et al., "Modeling the Background for Incremental Learning in Semantic Segmentation", CVPR 2020).

At step t the training masks label every old class as background, and the old model, trained when the new
classes were background, predicts them as background. MiB makes both terms aware of that shift:

* the unbiased cross-entropy lets a background-labelled pixel be explained by the background *or any old
  class*;
* the unbiased distillation compares the old model's background with the new model's background *plus the
  new classes*;
* the new classifiers start from the background classifier so that, before any update, the new model's
  background-plus-new probability equals the old model's background probability.

The functions take explicit index lists, so one implementation serves per-pixel logits (background 0, new
classes appended) and mask-classification logits (a "no object" entry that plays the background's role, as
CoMFormer does; Cermelli et al., CVPR 2023).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def _take(x: torch.Tensor, ids: Sequence[int], dim: int) -> torch.Tensor:
    return x.index_select(dim, torch.as_tensor(list(ids), device=x.device, dtype=torch.long))


def unbiased_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old_ids: Sequence[int],
    background: Sequence[int] = (0,),
    ignore_index: int = 255,
    dim: int = 1,
    weight: torch.Tensor | None = None,
    old_targets_to_background: bool = True,
) -> torch.Tensor:
    """Mean over non-ignored elements of -log p~(y) (weighted by ``weight[y]`` when given, as
    ``F.cross_entropy`` weights classes), where for a background-like target b

        p~(b) = sum_{k in {b} U old_ids} softmax(logits)_k      (the background may hide any old class)

    and p~(y) = softmax(logits)_y for every other target. Targets that are old classes are treated as
    ``background[0]`` (MiB never sees them in training: the masks already turned them to background),
    unless ``old_targets_to_background`` is False: then an old-class target (a pseudo label from the old
    model) is an ordinary target with its own probability.
    With no old classes this is the ordinary cross-entropy. Returns 0 (with a gradient) when every element
    is ignored, instead of the NaN of an empty mean.
    """
    den = torch.logsumexp(logits, dim=dim, keepdim=True)
    log_p = logits - den
    old = list(old_ids)
    if old:
        merged = []
        for b in background:
            merged.append(torch.logsumexp(_take(logits, [b] + [k for k in old if k != b], dim), dim=dim, keepdim=True) - den)
        # write the merged log-probabilities into the background slots (out of place, for autograd)
        parts = list(log_p.unbind(dim))
        for b, m in zip(background, merged):
            parts[b] = m.squeeze(dim)
        log_p = torch.stack(parts, dim)
        if old_targets_to_background:
            targets = torch.where(torch.isin(targets, torch.as_tensor(old, device=targets.device)),
                                  torch.full_like(targets, background[0]), targets)
    valid = targets != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    log_p = log_p.movedim(dim, -1)[valid]
    nll = -log_p.gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1)
    if weight is None:
        return nll.mean()
    w = weight.to(nll)[targets[valid]]
    return (w * nll).sum() / w.sum()


def unbiased_distillation(
    new_logits: torch.Tensor,
    old_logits: torch.Tensor,
    new_ids: Sequence[int],
    background: int = 0,
    mask: torch.Tensor | None = None,
    dim: int = 1,
) -> torch.Tensor:
    """MiB's unbiased knowledge distillation, averaged over elements (masked-out ones count as 0):

        loss = -1/|old| * sum_k q_k log p^_k,   q = softmax(old_logits)

    where p^_k = softmax(new_logits) at the new model's position of old output k, except for the old
    background, whose p^ is the new background plus every new class (``new_ids``, positions in
    ``new_logits``). The old outputs sit, in order, at the positions of ``new_logits`` that are not new.
    ``background`` indexes the old outputs (-1 for a trailing "no object").
    """
    k_new, k_old = new_logits.shape[dim], old_logits.shape[dim]
    new = sorted(set(int(i) % k_new for i in new_ids))
    kept = [i for i in range(k_new) if i not in new]
    if len(kept) != k_old:
        raise ValueError(f"new model has {k_new} outputs and {len(new)} new ids, so {len(kept)} old outputs, but the old model has {k_old}")
    background = background % k_old
    den = torch.logsumexp(new_logits, dim=dim, keepdim=True)
    parts = list((_take(new_logits, kept, dim) - den).unbind(dim))
    parts[background] = (torch.logsumexp(_take(new_logits, [kept[background]] + new, dim), dim=dim, keepdim=True) - den).squeeze(dim)
    log_p = torch.stack(parts, dim)
    q = torch.softmax(old_logits, dim=dim)
    loss = (q * log_p).sum(dim) / k_old
    if mask is not None:
        loss = loss * mask.to(loss.dtype)
    return -loss.mean()


@torch.no_grad()
def background_init(bg_weight: torch.Tensor, bg_bias: torch.Tensor, num_new: int, share: float | None = None):
    """MiB's initialization of ``num_new`` classifiers from the background classifier.

    New weights copy the background weight; new biases become ``bg_bias + log(r)`` and the background bias
    ``bg_bias + log(1 - n r)``, with r = ``share`` (MiB: ``1 / (n + 1)``, both biases then ``bg_bias - log(n+1)``).
    For any feature the softmax's normaliser is unchanged: each new class takes r of the old background
    probability, the background keeps 1 - n r of it, and every old-class probability is unchanged.
    Returns (new_weights, new_biases, new_background_bias).
    """
    if num_new < 1:
        raise ValueError("background_init needs at least one new class")
    r = 1.0 / (num_new + 1) if share is None else float(share)
    if not 0.0 < r * num_new < 1.0:
        raise ValueError(f"background_init: the new classes' share of the background ({num_new} x {r}) must be "
                         "in (0, 1)")
    bias = bg_bias + math.log(r)
    weights = bg_weight.detach().unsqueeze(0).repeat(num_new, *([1] * bg_weight.dim())).clone()
    bg = bg_bias + math.log(1.0 - r * num_new)
    return weights, bias.detach().reshape(1).repeat(num_new).clone(), bg.detach().clone()
