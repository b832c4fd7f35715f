"""FMWISS's training losses (Yu et al., "Foundation Model Drives Weakly Incremental Learning for Semantic
Segmentation", CVPR 2023, arXiv 2302.14250).

At a weak step the new classes have image-level labels only; pseudo masks (a pseudo-label source) train a
plug-in teacher, whose outputs, with the old model's for the old classes, become the student's soft labels:

* :func:`soft_bce` -- pixel-wise binary cross-entropy against soft masks, over valid pixels (the teacher's loss
  against the pseudo masks, and the student's against the soft labels: FMWISS distils by BCE), optionally with
  per-class positive weights (:func:`balanced_positive_weight`);
* :func:`pixel_contrastive` -- dense InfoNCE over pixel embeddings, positives = pixels of the same pseudo class;
* :func:`combine_pseudo_masks` -- the teacher's targets: the source's new-class masks, the rest of each pixel's
  mass spread over the old classes as the old model says;
* :func:`soft_label_targets` / :func:`soft_label_loss` -- the student's objective: new classes take the
  teacher's soft labels, old classes a weighted average of the old model's (its background less what the new
  classes take) and the teacher's outputs.

Every function takes explicit class-id lists, so the same code serves any task.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _ids(ids: Sequence[int], device) -> torch.Tensor:
    return torch.as_tensor(list(ids), dtype=torch.long, device=device)


def soft_bce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
             pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise BCE against soft masks, averaged over the K channels and the valid pixels:

        loss = 1 / (K * |V|) * sum_{(n,x) in V} sum_k [-w_k t_nkx log s(z_nkx) - (1 - t_nkx) log(1 - s(z_nkx))]

    ``logits`` z and ``targets`` t are (N, K, H, W), s = sigmoid, ``valid`` (N, H, W) bool marks V (all pixels
    when None), ``pos_weight`` w (K,) weighs each class's positive term (1 when None; see
    :func:`balanced_positive_weight`). Why sigmoid per class: soft labels of several classes at one pixel need not
    sum to 1. Returns 0 (with a gradient) when no pixel is valid."""
    if pos_weight is not None:
        pos_weight = pos_weight.to(logits.device, torch.float32)[:, None, None]
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none",
                                             pos_weight=pos_weight).mean(1)
    if valid is None:
        return bce.mean()
    valid = valid.to(bce.device)
    if not valid.any():
        return logits.sum() * 0.0
    return bce[valid].mean()


def balanced_positive_weight(targets: torch.Tensor, valid: torch.Tensor | None = None, max_weight: float = 10.0
                             ) -> torch.Tensor:
    """Per-class positive weights (K,) that balance a class's positive and negative mass over the valid pixels:

        w_k = clamp( sum_V (1 - t_k) / sum_V t_k , 1, max_weight )      (max_weight when sum_V t_k = 0)

    Why: under BCE a class covering a few percent of the pixels (an object class; the new classes above all)
    gets almost all of its gradient from its negatives, so its sigmoid stays low where it is present and the
    background wins the argmax there; the weight makes the positives count as much as the negatives, the cap
    keeps a class seen on a few pixels from exploding. Not differentiated."""
    t = targets.detach().float()
    if valid is not None:
        t = t * valid.to(t.device)[:, None].float()
        n = valid.to(t.device).sum().float()
    else:
        n = torch.tensor(float(t[:, 0].numel()), device=t.device)
    pos = t.sum((0, 2, 3))
    neg = n - pos
    w = torch.where(pos > 0, neg / pos.clamp_min(1e-12), torch.full_like(pos, max_weight))
    return w.clamp(1.0, max_weight)


def pixel_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                      ignore_label: int = -1, max_pixels: int = 0) -> torch.Tensor:
    """Dense InfoNCE (supervised-contrastive form) over pixel embeddings with pseudo labels as classes:

        loss = mean_{i in A} -1/|P(i)| sum_{p in P(i)} log( exp(u_i . u_p / T) / sum_{a != i} exp(u_i . u_a / T) )

    with u the L2-normalised embeddings of the pixels taken (``embeddings`` (N, D, H, W), ``labels`` (N, H, W)
    at the same resolution; ``ignore_label`` pixels are left out), P(i) the other pixels of i's class and A the
    anchors with at least one positive. ``max_pixels`` > 0 draws that many pixels at random (torch's global
    generator) first: the pairwise matrix is quadratic. Returns 0 (with a gradient) without any positive pair."""
    d = embeddings.shape[1]
    u = embeddings.permute(0, 2, 3, 1).reshape(-1, d)
    y = labels.to(u.device).reshape(-1)
    keep = y != ignore_label
    u, y = u[keep], y[keep]
    if max_pixels > 0 and y.numel() > max_pixels:
        pick = torch.randperm(y.numel(), device=u.device)[:max_pixels]
        u, y = u[pick], y[pick]
    if y.numel() < 2:
        return embeddings.sum() * 0.0
    u = F.normalize(u.float(), dim=1)
    sim = u @ u.T / temperature
    eye = torch.eye(len(y), dtype=torch.bool, device=u.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    anchors = n_pos > 0
    if not anchors.any():
        return embeddings.sum() * 0.0
    per_anchor = -(log_prob * pos).sum(1)[anchors] / n_pos[anchors]
    return per_anchor.mean()


def combine_pseudo_masks(source_scores: torch.Tensor, old_probs: torch.Tensor, new_ids: Sequence[int],
                         veto_background: int | None = None) -> torch.Tensor:
    """The teacher's targets M (N, K, H, W) from a source's scores S (N, K, H, W; new classes at ``new_ids``)
    and the old model's probabilities P (N, K_old, H, W) over the old classes (ids 0..K_old-1):

        M_c = S~_c                          for c in new_ids
        M_c = (1 - sum_{n in new} S~_n) P_c  for c < K_old (old classes, background included)

    with S~ = S, or, with ``veto_background`` = b, S~_n = P_b S_n: a new class only where the old model sees
    background. Why: at a weak step a source knows the new classes (from their image labels); what it calls
    background may be an old object, which only the old model can name. Why the veto: the old model learnt the
    new objects as background, so where it names an old object (P_b ~ 0) a source's new-class score is a
    bleed onto that neighbour. Where S sums to 1, so does M."""
    new = _ids(new_ids, source_scores.device)
    k_old = old_probs.shape[1]
    out = torch.zeros_like(source_scores)
    s_new = source_scores.index_select(1, new)
    old_probs = old_probs.to(out)
    if veto_background is not None:
        s_new = s_new * old_probs[:, veto_background: veto_background + 1]
    out[:, new] = s_new
    out[:, :k_old] = (1 - s_new.sum(1, keepdim=True)).clamp_min(0) * old_probs
    return out


def soft_label_targets(teacher_probs: torch.Tensor, old_probs: torch.Tensor, new_ids: Sequence[int],
                       labelled: torch.Tensor, old_weight: float, background: int = 0) -> torch.Tensor:
    """The student's soft labels y (N, K, H, W) at a weak step:

        y_c = teacher_c * [c in the image's labels]              for c in new_ids
        y_c = a * old~_c + (1 - a) * teacher_c                    for c < K_old (old classes, background included)
        old~_b = old_b * (1 - sum_{n in new} y_n),  old~_c = old_c otherwise   (b = ``background``)

    ``teacher_probs`` (N, K, H, W) in [0, 1] (the teacher's sigmoid), ``old_probs`` (N, K_old, H, W) (the old
    model's softmax), ``labelled`` (N, K) bool (the image-level labels), a = ``old_weight``. Why the label mask: a
    new class absent from an image's labels is known to be absent. Why old~: the old model learnt the new classes
    as background, so its background stands for "background or a new class" (MiB's background shift); the share
    the new classes take is removed from it, else a new object would be taught as at least a * old_b background.
    Not differentiated (targets)."""
    teacher_probs, old_probs = teacher_probs.detach().float(), old_probs.detach().float()
    new = _ids(new_ids, teacher_probs.device)
    k_old = old_probs.shape[1]
    y = torch.zeros_like(teacher_probs)
    mask = labelled.to(teacher_probs.device).float().index_select(1, new)[..., None, None]
    y_new = teacher_probs.index_select(1, new) * mask
    y[:, new] = y_new
    old = old_probs.clone()
    old[:, background] = old[:, background] * (1 - y_new.sum(1)).clamp_min(0)
    y[:, :k_old] = old_weight * old + (1 - old_weight) * teacher_probs[:, :k_old]
    return y


def soft_label_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, old_probs: torch.Tensor,
                    new_ids: Sequence[int], labelled: torch.Tensor, old_weight: float,
                    valid: torch.Tensor | None = None, background: int = 0) -> torch.Tensor:
    """FMWISS's final objective: ``soft_bce(student_logits, soft_label_targets(...), valid)`` -- the new classes
    learnt from the teacher and the old ones distilled from the old model (and the teacher), both by BCE."""
    return soft_bce(student_logits, soft_label_targets(teacher_probs, old_probs, new_ids, labelled, old_weight, background),
                    valid)
