"""DuPL (Wu et al., CVPR 2024): one-stage weakly supervised semantic segmentation from image-level labels with
two students that supervise each other.

Each student is a per-pixel model (``self.model`` and ``self.second_student``, two independent DeepLabV3 of the
same structure) plus a CAM classifier (a 1x1 convolution over its backbone feature, ``self.cam_heads``); per
training step (Sec. 3):

    L = w_cls * sum_i L_cls(CAM head_i(pool(f_i)), y)                      image labels -> CAMs
      + w_dis * L_dis(f_1, f_2)                                             the students stay apart (Sec. 3.2)
      + w_seg * [CE(P_1, Y_2) + CE(P_2, Y_1)]      from SEG_START_ITER      cross pseudo supervision (Sec. 3.2)
      + w_reg * sum_i L_reg(P~_i, phi'(Y~_i))      from GMM_START_ITER      every pixel matters (Sec. 3.4)

``pool``: global max (the public code's) or average pooling of student i's backbone feature ``f_i``.
``Y_i``: student i's CAM pseudo labels (CAMs summed over several scales and flips, refined along the image's
colours, as in the public code; then background <= tau_l, foreground >= tau_h, uncertain between), tau_h
descending by cosine per class (Sec. 3.3); from ``GMM_START_ITER`` on, the foreground pixels that a per-image
Gaussian mixture over the per-pixel losses calls noisy become uncertain as well (Sec. 3.3). ``P~_i``: student
i's prediction on a strongly augmented view (random affine warp + photometric jitter), trained on the pixels
its label ``Y_j`` leaves out (uncertain or filtered), towards its own confident prediction on the plain view
warped by the same affine. Inference: student 1's segmentation head (``self.model``: the checkpoint's
``"model"`` is an ordinary DeepLabV3 that any tool evaluates). Training reads image-level labels only
(``INPUT.SUPERVISION image``). Design choices and what differs from the paper: docs/dupl.md.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..modeling.losses.dupl import (
    cams_to_pseudo_labels, consistency_loss, discrepancy_loss, multilabel_classification_loss, normalize_cams,
    random_affine, refine_with_image, warp, warp_labels,
)
from ..modeling.losses.gmm import gmm_noise_filter
from ..pseudo_labels.sources import labelled_classes
from .base import METHOD_REGISTRY, Method, MethodConfigError, cosine_schedule

__all__ = ["DuPL", "high_thresholds", "image_high_thresholds"]


def high_thresholds(iteration: int, start: float, end: Sequence[float], begin_iter: int, end_iter: int,
                    num_classes: int) -> torch.Tensor:
    """(C,) per-class tau_h at ``iteration``: the cosine descent of Sec. 3.3 ("dynamic threshold adjustment")
    from ``start`` at ``begin_iter`` to the class's floor ``end[c]`` at ``end_iter``,

        tau_h(t) = end + (start - end) * (1 + cos(pi * (t - begin) / (end_iter - begin))) / 2,

    constant outside [begin, end_iter]. ``end``: one floor per foreground class, or one for all."""
    end = list(end)
    if len(end) == 1:
        end = end * num_classes
    if len(end) != num_classes:
        raise ValueError(f"high_thresholds: {len(end)} floors for {num_classes} foreground classes (give one "
                         "value, or one per foreground class)")
    return torch.tensor([cosine_schedule(start, e, begin_iter, end_iter, iteration) for e in end])


def image_high_thresholds(class_thresholds: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """(N,) one tau_h per image: the highest of its classes' thresholds (the public code's rule: an image with
    a hard class is labelled as cautiously as that class). An image without labels takes the highest of all."""
    t = class_thresholds.to(image_labels.device, torch.float32)[None].expand(image_labels.shape[0], -1)
    masked = torch.where(image_labels > 0, t, torch.full_like(t, -math.inf)).amax(1)
    return torch.where(torch.isfinite(masked), masked, t.amax(1))


def strong_view(images: torch.Tensor, theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The strongly augmented view of a normalised batch: the affine warp ``theta`` plus a random per-image
    contrast (x0.7..1.3) and brightness shift (+-0.3 std) (a photometric change the labels do not follow)."""
    n = images.shape[0]
    u = torch.rand(n, 2, generator=generator).to(images)
    contrast, brightness = 0.7 + 0.6 * u[:, 0], 0.6 * u[:, 1] - 0.3
    return warp(images * contrast[:, None, None, None] + brightness[:, None, None, None], theta)


@contextlib.contextmanager
def _frozen_norm_statistics(module: nn.Module):
    """Batch-norm layers keep normalising with the batch's statistics (train mode) but do not update their
    running averages: the extra CAM views and the strong view are other images than the ones inference sees."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@METHOD_REGISTRY.register()
class DuPL(Method):
    """See the module docstring. Keys: ``METHOD.DUPL.*`` (fmwiss_d2/config.py, ``_add_dupl_config``)."""

    @configurable
    def __init__(self, model, *, task=None, step: int = 0, max_iter: int = 0, second_student: nn.Module | None,
                 num_classes: int, ignore_label: int = 255, tau_l: float, tau_h_start: float,
                 tau_h_end: Sequence[float], dynamic_threshold: bool, seg_start_iter: int, threshold_start_iter: int,
                 threshold_end_iter: int,
                 noise_filter: bool, gmm_start_iter: int, gmm_gamma: float, gmm_eta: float, gmm_min_pixels: int,
                 gmm_min_loss: float, gmm_iters: int, gmm_per_class: bool = False, pooling: str, cls_weight: float,
                 seg_weight: float,
                 discrepancy_weight: float, consistency_weight: float, consistency_confidence: float,
                 cam_scales: Sequence[float], cam_flip: bool, refine_iters: int, refine_dilations: Sequence[int],
                 refine_normalize: bool):
        """
        Args:
            model: student 1 (a per-pixel model with ``backbone_features`` in its outputs: DeepLabV3).
            second_student: student 2, same structure, own parameters; None = the single-student ablation
                (student 1 learns from its own CAMs).
            num_classes: K, background (0) included; the CAMs cover the K - 1 foreground classes.
            tau_l / tau_h_start / tau_h_end: background threshold; foreground threshold at the start and its
                per-class floors (one value for all, or one per foreground class).
            dynamic_threshold: tau_h descends by cosine from ``threshold_start_iter`` (< 0: ``seg_start_iter``) to
                ``threshold_end_iter`` (<= 0: the run's end); False keeps ``tau_h_start`` (fixed-threshold ablation).
            seg_start_iter: iteration from which the segmentation heads are supervised (CAM warm-up before).
            noise_filter / gmm_*: the adaptive noise filter from ``gmm_start_iter`` (posterior cut-off gamma,
                minimum mean gap eta, minimum pixels to fit, losses <= ``gmm_min_loss`` left out of the fit,
                EM iterations); ``gmm_per_class``: one mixture per (image, labelled class) instead of per image.
            pooling: how a student's image scores come from its feature map for the classification loss:
                "max" (global max pooling, then the CAM head: the public code's) or "avg" (average pooling,
                which equals averaging the CAM). Max pooling lets a small object score without covering the
                image.
            *_weight: loss weights (cls, seg, discrepancy, consistency; 0 switches a term off).
            consistency_confidence: the plain-view prediction used as consistency target where its top
                probability reaches this.
            cam_scales / cam_flip: the pseudo-label CAMs are computed, without gradient, at these image scales,
                each also flipped (the max of the two, when ``cam_flip``), then summed, as in the public code:
                on a coarse feature map the extra views sharpen the CAMs. ``[1.0]`` without flip: the CAM of the
                forward pass that is trained anyway, no extra pass.
            refine_iters / refine_dilations: pixel-adaptive refinement of the normalised CAMs along the image's
                colour affinities before they are thresholded (at half the image size, as the public code);
                0 iterations: the CAMs as they are. ``refine_normalize``: max-min normalise the refined CAMs
                again (the refinement averages a CAM that found part of an object over all of it, which lowers
                its peak below tau_h; normalising restores the scale the thresholds were set for).
        """
        super().__init__(model, task=task, step=step, max_iter=max_iter)
        if task is not None:
            raise MethodConfigError(f"DuPL learns every class at once from image-level labels; it does not run an "
                                    f"incremental task (INCREMENTAL.TASK is '{task.name}'): set INCREMENTAL.TASK ''")
        if not hasattr(model, "aspp"):
            raise MethodConfigError(f"DuPL trains per-pixel students: MODEL.META_ARCHITECTURE must be DeepLabV3, not "
                                    f"{type(model).__name__}")
        self.second_student = second_student
        channels = model.backbone.output_shape()[model.in_feature].channels
        self.cam_heads = nn.ModuleList(nn.Conv2d(channels, num_classes - 1, 1, bias=False)
                                       for _ in range(1 if second_student is None else 2))
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.tau_l, self.tau_h_start, self.tau_h_end = tau_l, tau_h_start, list(tau_h_end)
        high_thresholds(0, tau_h_start, self.tau_h_end, 0, 1, num_classes - 1)  # fails early on a bad length
        self.dynamic_threshold = dynamic_threshold
        self.seg_start_iter = seg_start_iter
        self.threshold_start_iter = threshold_start_iter if threshold_start_iter >= 0 else seg_start_iter
        self.threshold_end_iter = threshold_end_iter if threshold_end_iter > 0 else max_iter
        self.noise_filter = noise_filter
        self.gmm_start_iter = gmm_start_iter
        self.gmm = dict(gamma=gmm_gamma, eta=gmm_eta, min_pixels=gmm_min_pixels, iters=gmm_iters)
        self.gmm_min_loss = gmm_min_loss
        self.gmm_per_class = gmm_per_class
        if pooling not in ("max", "avg"):
            raise MethodConfigError(f"METHOD.DUPL.POOLING is {pooling!r}: use 'max' or 'avg'")
        self.pooling = pooling
        self.weights = dict(cls=cls_weight, seg=seg_weight, dis=discrepancy_weight, reg=consistency_weight)
        self.consistency_confidence = consistency_confidence
        if not cam_scales or min(cam_scales) <= 0:
            raise MethodConfigError(f"METHOD.DUPL.CAM_SCALES is {list(cam_scales)}: give one or more positive scales")
        self.cam_scales, self.cam_flip = tuple(float(x) for x in cam_scales), bool(cam_flip)
        self.refine_iters, self.refine_dilations = refine_iters, tuple(refine_dilations)
        self.refine_normalize = refine_normalize

    @classmethod
    def from_config(cls, cfg, model, *, task=None, step: int = 0):
        from detectron2.modeling import build_model

        c = cfg.METHOD.DUPL
        return {
            **super().from_config(cfg, model, task=task, step=step),
            "second_student": build_model(cfg) if c.DUAL else None,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "tau_l": c.TAU_L, "tau_h_start": c.TAU_H_START, "tau_h_end": list(c.TAU_H_END),
            "dynamic_threshold": c.DYNAMIC_THRESHOLD, "seg_start_iter": c.SEG_START_ITER,
            "threshold_start_iter": c.THRESHOLD_START_ITER, "threshold_end_iter": c.THRESHOLD_END_ITER,
            "noise_filter": c.NOISE_FILTER,
            "gmm_start_iter": c.GMM_START_ITER, "gmm_gamma": c.GMM_GAMMA, "gmm_eta": c.GMM_ETA,
            "gmm_min_pixels": c.GMM_MIN_PIXELS, "gmm_min_loss": c.GMM_MIN_LOSS, "gmm_iters": c.GMM_ITERS,
            "gmm_per_class": c.GMM_PER_CLASS, "pooling": c.POOLING,
            "cls_weight": c.CLS_WEIGHT, "seg_weight": c.SEG_WEIGHT, "discrepancy_weight": c.DISCREPANCY_WEIGHT,
            "consistency_weight": c.CONSISTENCY_WEIGHT, "consistency_confidence": c.CONSISTENCY_CONFIDENCE,
            "cam_scales": list(c.CAM_SCALES), "cam_flip": c.CAM_FLIP,
            "refine_iters": c.REFINE_ITERS, "refine_dilations": list(c.REFINE_DILATIONS),
            "refine_normalize": c.REFINE_NORMALIZE,
        }

    # ------------------------------------------------------------------------------------------- parts
    @property
    def students(self) -> List[nn.Module]:
        return [self.model] if self.second_student is None else [self.model, self.second_student]

    def image_label_matrix(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """(N, K-1) 0/1 over the foreground classes (model ids 1..K-1) from each record's ``image_labels``."""
        if any("image_labels" not in x for x in batched_inputs):
            raise MethodConfigError("DuPL trains from image-level labels, but a training input has no "
                                    "'image_labels': set INPUT.SUPERVISION image")
        labels = [torch.as_tensor(x["image_labels"], dtype=torch.long) for x in batched_inputs]
        return labelled_classes(labels, self.num_classes, device=self.model.device).float()[:, 1:]

    def cams(self, i: int, outputs: Dict) -> torch.Tensor:
        """Student i's raw CAM logits (N, K-1, h, w) over its backbone feature."""
        return self.cam_heads[i](outputs["backbone_features"])

    def image_scores(self, i: int, outputs: Dict) -> torch.Tensor:
        """Student i's (N, K-1) image-level class logits: its backbone feature pooled (``pooling``), then its
        CAM head (linear, so "avg" equals the mean of the CAM)."""
        features = outputs["backbone_features"].float()
        if self.pooling == "max":
            pooled = features.amax((2, 3), keepdim=True)
        else:
            pooled = features.mean((2, 3), keepdim=True)
        return self.cam_heads[i](pooled).flatten(1)

    def foreground_threshold(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) tau_h of each image at the current iteration."""
        if not self.dynamic_threshold:
            return torch.full((labels.shape[0],), float(self.tau_h_start), device=labels.device)
        per_class = high_thresholds(self.iteration, self.tau_h_start, self.tau_h_end, self.threshold_start_iter,
                                    self.threshold_end_iter, self.num_classes - 1)
        return image_high_thresholds(per_class, labels)

    def view_cams(self, i: int, cam_logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Student i's (N, K-1, H, W) CAMs for its pseudo labels, before normalisation: per scale of
        ``cam_scales``, the CAM upsampled to the image size (the max with the flipped view's, flipped back, when
        ``cam_flip``), ReLU, summed over the scales. The unflipped scale-1 view is the trained pass's CAM
        (``cam_logits``, detached); the other views are extra passes without gradient that leave the
        batch-norm statistics alone."""
        size = images.shape[-2:]
        student = self.students[i]

        def upsampled(x):
            return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)

        def cam_of(x):
            return upsampled(self.cams(i, {"backbone_features": student.backbone(x)[student.in_feature]}))

        total = 0.0
        with torch.no_grad(), _frozen_norm_statistics(student):
            for scale in self.cam_scales:
                x = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                               align_corners=False)
                cam = upsampled(cam_logits.detach()) if scale == 1.0 else cam_of(x)
                if self.cam_flip:
                    cam = torch.maximum(cam, cam_of(x.flip(-1)).flip(-1))
                total = total + F.relu(cam)
        return total

    def pseudo_labels(self, cam_logits: List[torch.Tensor], labels: torch.Tensor, images: torch.Tensor,
                      tau_h) -> List[torch.Tensor]:
        """Each student's (N, H, W) CAM pseudo labels at the image size: its CAMs over the views
        (``view_cams``), normalised, refined along the image with ``refine_iters``, then thresholded."""
        cams = [normalize_cams(self.view_cams(i, c, images)) for i, c in enumerate(cam_logits)]
        if self.refine_iters > 0:
            cams = self.refine(cams, labels, images)
        return [cams_to_pseudo_labels(c, labels, self.tau_l, tau_h, self.ignore_label) for c in cams]

    def refine(self, cams: List[torch.Tensor], labels: torch.Tensor, images: torch.Tensor) -> List[torch.Tensor]:
        """The normalised CAMs after pixel-adaptive refinement at half the image size (the public code's),
        upsampled back. Only each image's labelled classes are refined, all students in one call (the image
        affinities are computed once): the other classes never label a pixel."""
        count = int(labels.sum(1).max().item())
        if count == 0:
            return cams
        size = images.shape[-2:]
        half = [max(1, s // 2) for s in size]
        order = labels.argsort(dim=1, descending=True, stable=True)[:, :count]  # labelled classes first
        index = order[:, :, None, None].expand(-1, -1, *size)
        picked = torch.cat([c.gather(1, index) for c in cams], 1)
        small = F.interpolate(images.detach().float(), size=half, mode="bilinear", align_corners=False)
        picked = F.interpolate(picked, size=half, mode="bilinear", align_corners=False)
        refined = refine_with_image(picked, small, self.refine_iters, self.refine_dilations)
        refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)
        if self.refine_normalize:
            refined = normalize_cams(refined)
        keep = labels[:, :, None, None].to(refined)  # an image with fewer labels than ``count`` refined others too
        return [torch.zeros_like(c).scatter(1, index, part) * keep for c, part in zip(cams, refined.split(count, 1))]

    def filter_noise(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with the foreground pixels the GMM calls noisy set to ignore (the per-pixel losses are
        those of the same student's segmentation head against its own CAM labels, as in the public code).

        Per image (the paper), or with ``gmm_per_class`` per (image, class): one mixture over the pixels of
        each labelled class. Why: in an image holding an easy and a hard class, a per-image mixture puts the
        whole hard object in the high-loss component and drops it, so a class the head has not learnt yet
        loses its labels every step and is never learnt (on the shapes world, triangles and diamonds); per class,
        only the pixels that disagree with the rest of their own object are dropped."""
        n = labels.shape[0]
        with torch.no_grad():
            loss = F.cross_entropy(logits.detach().float(), labels, ignore_index=self.ignore_label, reduction="none")
        foreground = (labels != 0) & (labels != self.ignore_label)
        fit = (foreground & (loss > self.gmm_min_loss)).view(n, -1)
        loss = loss.view(n, -1)
        if not self.gmm_per_class:
            noisy = gmm_noise_filter(loss, fit, **self.gmm)
        else:
            classes = torch.arange(1, self.num_classes, device=labels.device)
            member = labels.view(n, 1, -1) == classes[None, :, None]  # (N, K-1, P)
            rows = gmm_noise_filter(loss[:, None].expand_as(member).reshape(-1, loss.shape[1]),
                                    (member & fit[:, None]).reshape(-1, loss.shape[1]), **self.gmm)
            noisy = (rows.view_as(member) & member).any(1)
        return torch.where(noisy.view_as(labels) & foreground, torch.full_like(labels, self.ignore_label), labels)

    def consistency_target(self, logits: torch.Tensor, supervising: torch.Tensor, theta) -> torch.Tensor:
        """Warped target of the consistency loss: the plain-view prediction where it is confident and the label
        supervising this head (``supervising``) is ignore (uncertain or filtered); ignore elsewhere."""
        prob, pred = logits.detach().float().softmax(1).max(1)
        region = (supervising == self.ignore_label) & (prob >= self.consistency_confidence)
        target = torch.where(region, pred, torch.full_like(pred, self.ignore_label))
        return warp_labels(target, theta, self.ignore_label)

    # ------------------------------------------------------------------------------------------ losses
    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        labels = self.image_label_matrix(batched_inputs)
        image_list = self.model.preprocess_images(batched_inputs)
        images = image_list.tensor
        size = images.shape[-2:]
        padding = torch.ones(images.shape[0], *size, dtype=torch.bool, device=images.device)
        for b, (h, w) in enumerate(image_list.image_sizes):
            padding[b, :h, :w] = False
        it = self.iteration
        outputs = [s.forward_outputs(images) for s in self.students]
        cam_logits = [self.cams(i, o) for i, o in enumerate(outputs)]
        # a zero reaching every segmentation head, so that under DDP every parameter has a gradient at every
        # step (the heads are unsupervised during the CAM warm-up)
        zero = sum(o["pred_logits"].float().mean() for o in outputs) * 0.0
        losses = {"loss_cls": self.weights["cls"] * sum(
            multilabel_classification_loss(self.image_scores(i, o), labels) for i, o in enumerate(outputs))}
        dual = len(outputs) == 2
        losses["loss_discrepancy"] = (self.weights["dis"] * discrepancy_loss(
            outputs[0]["backbone_features"], outputs[1]["backbone_features"]) if dual and self.weights["dis"] else zero)
        losses["loss_seg"], losses["loss_consistency"] = zero, zero
        if it < self.seg_start_iter:
            return losses
        tau_h = self.foreground_threshold(labels)
        logits = [o["pred_logits"].float() for o in outputs]
        targets = [t.masked_fill(padding, self.ignore_label)
                   for t in self.pseudo_labels(cam_logits, labels, images, tau_h)]
        late = it >= self.gmm_start_iter
        if late and self.noise_filter:
            targets = [self.filter_noise(lg, t) for lg, t in zip(logits, targets)]
        supervising = targets[::-1]  # Y_2 supervises student 1, Y_1 student 2 (a single student: its own)
        seg = zero
        for lg, t in zip(logits, supervising):
            if (t != self.ignore_label).any():
                seg = seg + F.cross_entropy(lg, t, ignore_index=self.ignore_label)
        losses["loss_seg"] = self.weights["seg"] * seg
        if late and self.weights["reg"]:
            theta = random_affine(images.shape[0]).to(images)
            strong = strong_view(images, theta)
            reg = zero
            for s, lg, t in zip(self.students, logits, supervising):
                # the strong view is not what the student sees at test time: its batch statistics must not
                # enter the running batch-norm averages that inference normalises with (docs/dupl.md)
                with _frozen_norm_statistics(s):
                    strong_logits = s.forward_outputs(strong)["pred_logits"]
                reg = reg + consistency_loss(strong_logits, self.consistency_target(lg, t, theta), self.ignore_label)
            losses["loss_consistency"] = self.weights["reg"] * reg
        return losses
