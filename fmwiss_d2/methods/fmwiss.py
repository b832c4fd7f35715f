"""FMWISS's training (Yu et al., CVPR 2023, arXiv 2302.14250): weakly incremental segmentation, a composition of

* the incremental model (the student) and the previous step's frozen model (``needs_old_model``);
* a pseudo-label source (``METHOD.FMWISS.SOURCE``, any registered one) giving the new classes' pseudo masks
  from the images' image-level labels -- the weak step's only supervision (``INCREMENTAL.NEW_CLASS_LABELS
  image``: the mapper drops every mask field unread);
* a plug-in ASPP teacher on the student's per-pixel features (``pixel_features``: DeepLabV3's backbone feature,
  Mask2Former's mask features), trained by BCE + dense contrastive against the pseudo masks
  (:func:`~fmwiss_d2.modeling.losses.fmwiss.combine_pseudo_masks`), whose outputs refine them online;
* memory-based copy-paste (:mod:`fmwiss_d2.data.memory_bank`): old-class instances pasted, labelled, into the
  step's images.

The student learns soft labels by BCE: new classes from the teacher, old classes from the weighted average of
the old model and the teacher (:func:`~fmwiss_d2.modeling.losses.fmwiss.soft_label_loss`), on the model's
``per_pixel_logits`` (DeepLabV3's logits; Mask2Former's semantic scores normalised over the classes): one code
path for both model families, through the family contract (:class:`~fmwiss_d2.modeling.meta_arch.base.SegmentorBase`).
Step 0 is ordinary supervised training (and fills the memory bank from its masks). Design choices the paper leaves
open: docs/fmwiss.md, "Teacher, copy-paste and objective" and "Model family".
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable

from ..data.memory_bank import MemoryBank, bank_from_ground_truth, bank_path_beside, paste_instances
from ..modeling.meta_arch.base import class_probabilities
from ..modeling.heads.teacher import PluginTeacher
from ..modeling.losses.fmwiss import (
    balanced_positive_weight, combine_pseudo_masks, pixel_contrastive, soft_bce, soft_label_targets,
)
from ..pseudo_labels import PseudoLabelContext, build_pseudo_label_source
from .base import METHOD_REGISTRY, Method, MethodConfigError, cosine_schedule

logger = logging.getLogger("fmwiss_d2")


def _one_hot_where(target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``target`` (N, K, H, W) with the one-hot of ``labels`` (N, H, W) wherever ``labels`` >= 0."""
    where = labels >= 0
    if not where.any():
        return target
    one_hot = F.one_hot(labels.clamp_min(0), target.shape[1]).permute(0, 3, 1, 2).to(target)
    return torch.where(where[:, None], one_hot, target)


@METHOD_REGISTRY.register()
class FMWISS(Method):
    needs_old_model = True
    needs_background = True

    @configurable
    def __init__(self, model, *, task=None, step: int = 0, max_iter: int = 0, source: str,
                 teacher: PluginTeacher | None, teacher_warmup: float,
                 contrastive_weight: float, contrastive_temperature: float, contrastive_pixels: int,
                 old_weight: float, new_class_prior: float = 0.01, new_rows_lr_multiplier: float = 1.0,
                 pos_weight_max: float = 0.0,
                 pos_weight_student: bool = True,
                 memory_bank: MemoryBank | None, paste_per_image: int, paste_scale,
                 paste_avoid_new: bool = False, old_model_veto: bool = False, hard_pseudo_masks: bool = False,
                 identity: Dict | None):
        """
        Args:
            source: registered name of the new classes' pseudo-label source (built for training only, kept
                frozen: never saved nor optimized).
            teacher: the plug-in teacher (None: the student learns the pseudo masks themselves).
            teacher_warmup: share of the iterations over which the new classes' soft labels move (half-cosine)
                from the pseudo masks to the teacher's outputs.
            contrastive_weight / contrastive_temperature / contrastive_pixels: the teacher's dense InfoNCE.
            old_weight: old classes' soft labels = old_weight * old model + (1 - old_weight) * teacher.
            new_class_prior: the new classes' probability when a step starts (the model's
                :meth:`start_new_classes`; the teacher's rows: zero weights, bias = its logit).
            new_rows_lr_multiplier: the student's new-class rows learn at this times the step's rate: from the
                prior's logit, at the step's rate (AdamW moves a weight about lr per iteration), a short weak
                step cannot carry them up to the old classes' logits.
            pos_weight_max: > 0: the teacher's and the student's BCE weigh each class's positives by its
                batch's negative / positive mass, capped at this (:func:`balanced_positive_weight`); 0: plain BCE.
            pos_weight_student: False: the weights apply to the teacher's BCE only.
            memory_bank: the bank filled at this step and pasted from (None: no copy-paste).
            paste_per_image / paste_scale: instances pasted per image and their size (share of the shorter side).
            paste_avoid_new: place pastes off the new classes' pseudo masks (best of a few random places): a
                paste over a new object hides the only (image-level) evidence the step has of it.
            old_model_veto: the pseudo masks' new classes only where the old model sees background
                (:func:`combine_pseudo_masks`): a source's map that bleeds onto an old object is cut there.
            hard_pseudo_masks: the teacher learns the one-hot argmax of the pseudo masks instead of the soft masks:
                a soft mask spread over a whole object (``PSEUDO_LABELS.COSEG.OBJECT_FILL``) is a flat target, and a
                teacher that learns it stays unsure of the new class where its argmax is right.
            identity: (task, step, classes) the bank is stamped with.
        """
        super().__init__(model, task=task, step=step, max_iter=max_iter)
        self.source_name = source
        self.teacher = teacher
        self.teacher_warmup = teacher_warmup
        self.contrastive_weight = contrastive_weight
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_pixels = contrastive_pixels
        self.old_weight = old_weight
        self.new_class_prior = new_class_prior
        if self.new_ids:  # the step's new classes are one layer of the IncrementalClassifier; the optimizer reads it
            model.classifier.logit_layer(self.new_ids[0])[0].lr_multiplier = new_rows_lr_multiplier
        self.pos_weight_max = pos_weight_max
        self.pos_weight_student = pos_weight_student
        self.memory_bank = memory_bank
        self.paste_per_image = paste_per_image
        self.paste_scale = tuple(paste_scale)
        self.paste_avoid_new = bool(paste_avoid_new)
        self.old_model_veto = bool(old_model_veto)
        self.hard_pseudo_masks = bool(hard_pseudo_masks)
        self.identity = identity
        self._previous_weights = ""

    @classmethod
    def from_config(cls, cfg, model, *, task=None, step: int = 0):
        c = cfg.METHOD.FMWISS
        if not 0.0 <= c.OLD_WEIGHT <= 1.0:
            raise MethodConfigError(f"METHOD.FMWISS.OLD_WEIGHT must be in [0, 1], not {c.OLD_WEIGHT}")
        if not 0.0 < c.NEW_CLASS_PRIOR < 1.0:
            raise MethodConfigError(f"METHOD.FMWISS.NEW_CLASS_PRIOR must be in (0, 1), not {c.NEW_CLASS_PRIOR}")
        if not c.NEW_ROWS_LR_MULTIPLIER > 0:
            raise MethodConfigError(f"METHOD.FMWISS.NEW_ROWS_LR_MULTIPLIER must be > 0, not {c.NEW_ROWS_LR_MULTIPLIER}")
        if c.POS_WEIGHT_MAX != 0 and c.POS_WEIGHT_MAX < 1:
            raise MethodConfigError(f"METHOD.FMWISS.POS_WEIGHT_MAX must be 0 (plain BCE) or >= 1, "
                                    f"not {c.POS_WEIGHT_MAX}")
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        teacher = None
        if step > 0 and c.TEACHER:
            d = cfg.MODEL.DEEPLAB
            teacher = PluginTeacher(model.pixel_feature_channels, num_classes, channels=d.ASPP_CHANNELS,
                                    dilations=d.ASPP_DILATIONS, embed_dim=c.EMBED_DIM, norm=d.NORM)
            teacher.lr_multiplier = c.TEACHER_LR_MULTIPLIER
        identity, bank = None, None
        if task is not None:
            identity = {"task": task.name, "step": step, "classes": task.seen_classes(step)}
            bank = MemoryBank(num_classes, c.BANK_SIZE, c.BANK_CROP, identity) if c.COPY_PASTE else None
        return {
            **super().from_config(cfg, model, task=task, step=step),
            "source": c.SOURCE,
            "teacher": teacher, "teacher_warmup": c.TEACHER_WARMUP,
            "contrastive_weight": c.CONTRASTIVE_WEIGHT, "contrastive_temperature": c.CONTRASTIVE_TEMPERATURE,
            "contrastive_pixels": c.CONTRASTIVE_PIXELS, "old_weight": c.OLD_WEIGHT,
            "new_class_prior": c.NEW_CLASS_PRIOR, "new_rows_lr_multiplier": c.NEW_ROWS_LR_MULTIPLIER,
            "pos_weight_max": c.POS_WEIGHT_MAX, "pos_weight_student": c.POS_WEIGHT_STUDENT,
            "memory_bank": bank,
            "paste_per_image": c.PASTE_PER_IMAGE, "paste_scale": c.PASTE_SCALE,
            "paste_avoid_new": c.PASTE_AVOID_NEW, "old_model_veto": c.OLD_MODEL_VETO,
            "hard_pseudo_masks": c.HARD_PSEUDO_MASKS, "identity": identity,
        }

    def start_step(self) -> None:
        """The new classes start low: the model's :meth:`start_new_classes` at ``NEW_CLASS_PRIOR`` (DeepLabV3: zero
        weights and the prior's logit; Mask2Former: the prior's share of "no object"), the teacher's rows at zero
        weights and the prior's logit. Why: with random rows their logits (of the order of the old ones) win the
        argmax on many old-class pixels before any training, and under BCE most of their first gradient only pushes
        them down (RetinaNet's prior initialisation). The teacher starts as the previous step's head (its ASPP and
        old-class classifier) when the model has an ASPP head on the teacher's feature (DeepLabV3): a teacher from
        scratch answers "background" everywhere for its first hundreds of iterations, and the soft labels would
        teach the student that (this project's choices; docs/fmwiss.md). A Mask2Former has no per-pixel head to
        copy: its teacher starts from scratch, and ``TEACHER_WARMUP`` keeps the pseudo masks in charge meanwhile."""
        self.model.start_new_classes(self.new_ids, self.new_class_prior)
        if self.teacher is None:
            return
        bias = math.log(self.new_class_prior / (1 - self.new_class_prior))
        aspp = getattr(self.model, "aspp", None)
        with torch.no_grad():
            self.teacher.classifier.weight[self.new_ids] = 0.0
            self.teacher.classifier.bias[self.new_ids] = bias
            if aspp is None:
                return
            self.teacher.aspp.load_state_dict(aspp.state_dict())
            old = self.model.classifier.cls[: self.step]
            weight = torch.cat([layer.weight for layer in old])
            self.teacher.classifier.weight[: len(weight)] = weight[..., None, None]
            self.teacher.classifier.bias[: len(weight)] = torch.cat([layer.bias for layer in old])

    # --------------------------------------------------------------------------------- memory bank
    def prepare_training(self, cfg) -> None:
        """At a step >= 1: the pseudo-label source, prepared on the step's records (image labels only); with
        copy-paste, the bank starts as the previous step's (a resume then restores this step's own, saved in its
        checkpoints)."""
        if self.step == 0:
            return
        if cfg.INPUT.SUPERVISION != "image":
            raise MethodConfigError("FMWISS learns the new classes from image-level labels only: set "
                                    "INCREMENTAL.NEW_CLASS_LABELS image (a step with pixel labels is not weakly "
                                    "incremental; use MiB)")
        from ..engine.data_loader import training_records

        source = self.add_frozen("pseudo_label_source", build_pseudo_label_source(cfg, self.source_name,
                                                                                  "METHOD.FMWISS.SOURCE"))
        source.prepare(training_records(cfg), self._context())
        if self.memory_bank is None:
            return
        prev = cfg.INCREMENTAL.PREVIOUS_WEIGHTS
        expect = {**self.identity, "step": self.step - 1, "classes": self.task.seen_classes(self.step - 1)}
        state, where = self._previous_bank(cfg, prev, expect)
        self.memory_bank.adopt(state, expect=expect, where=where)
        logger.info("FMWISS: memory bank of step %d (%s): %s instances per old class", self.step - 1, where,
                    self.memory_bank.count[: len(expect["classes"])].tolist())

    def _previous_bank(self, cfg, prev: str, expect: Dict):
        """The previous step's bank: in its final checkpoint (an FMWISS step), else in ``memory_bank.pth`` beside
        it; a step 0 trained by another method (the runner's shared step 0) gets one built from step 0's own
        masks, saved beside its checkpoint for the other variants."""
        state = MemoryBank.read(prev) if os.path.isfile(prev) else None
        if state is not None:
            return state, f"in '{prev}'"
        path = bank_path_beside(prev)
        if os.path.isfile(path):
            return MemoryBank.read(path), f"'{path}'"
        if self.step - 1 != 0:
            raise MethodConfigError(
                f"METHOD.FMWISS.COPY_PASTE needs the memory bank of step {self.step - 1}, but neither '{prev}' nor "
                f"'{path}' holds one (was step {self.step - 1} trained by FMWISS with COPY_PASTE True?); "
                "train that step with FMWISS, or set METHOD.FMWISS.COPY_PASTE False")
        from detectron2.data import DatasetCatalog, MetadataCatalog

        from ..engine.incremental import run_task

        task, _ = run_task(cfg)
        name = task.dataset_name(cfg.INCREMENTAL.SETTING, 0, "train")
        bank = MemoryBank(len(expect["classes"]), self.memory_bank.size, self.memory_bank.crop, expect)
        foreground = [c for c in self.old_ids if c not in self.model.background_logits]
        bank_from_ground_truth(bank, DatasetCatalog.get(name), foreground, MetadataCatalog.get(name).get("label_lut"),
                               seed=max(cfg.SEED, 0))
        bank.save(path)
        return bank.file_state(), f"'{path}' (built from the masks of {name})"

    # ------------------------------------------------------------------------------------------- losses
    def _context(self) -> PseudoLabelContext:
        return PseudoLabelContext(class_names=self.task.seen_classes(self.step), old_model=self.old_model,
                                  background=self.task.class_order.index(self.task.background))

    def _step0_losses(self, batched_inputs):
        losses = self.model(batched_inputs)
        if self.memory_bank is not None:
            for x in batched_inputs:
                classes = [int(c) for c in torch.unique(x["sem_seg"])
                           if int(c) < self.memory_bank.num_classes and int(c) not in self.model.background_logits]
                self.memory_bank.add_from_labels(x["image"], x["sem_seg"], classes)
        return losses

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        if self.step == 0 or self.old_model is None:
            return self._step0_losses(batched_inputs)
        model = self.model
        images = model.preprocess_images(batched_inputs)
        mean, std = model.pixel_mean, model.pixel_std
        raw = images.tensor * std + mean  # [0, 255] RGB, what sources and the bank take
        n, _, h, w = raw.shape
        k = model.classifier.num_classes
        inside = torch.zeros(n, h, w, dtype=torch.bool, device=raw.device)
        for b, (ih, iw) in enumerate(images.image_sizes):
            inside[b, :ih, :iw] = True
        image_labels = [torch.as_tensor(x["image_labels"], dtype=torch.long) for x in batched_inputs]
        labelled = torch.zeros(n, k, dtype=torch.bool, device=raw.device)
        for b, labels in enumerate(image_labels):
            labelled[b, labels.to(raw.device)] = True

        with torch.no_grad():
            # the source sees the images as loaded (before pasting): a source may cache per dataset image
            pseudo = self.frozen("pseudo_label_source")(raw, image_labels, self._context())

        # copy-paste: old-class instances into the images (their labels override everything below)
        pasted = torch.full((n, h, w), -1, dtype=torch.long, device=raw.device)
        x_raw = raw
        if self.memory_bank is not None:
            old_fg = [c for c in self.old_ids if c not in model.background_logits]
            avoid = None
            if self.paste_avoid_new:
                new = torch.as_tensor(self.new_ids, device=raw.device)
                avoid = torch.isin(pseudo.scores.argmax(1).to(raw.device), new) & pseudo.valid.to(raw.device)
            x_raw, pasted = paste_instances(raw, self.memory_bank, old_fg, self.paste_per_image, self.paste_scale,
                                            sizes=images.image_sizes, avoid=avoid)
        x = (x_raw - mean) / std

        with torch.no_grad():
            old_probs = class_probabilities(self.old_model, self.old_model.forward_outputs(x), (h, w))
            masks = combine_pseudo_masks(pseudo.scores.to(raw), old_probs, self.new_ids,
                                         model.background_logits[0] if self.old_model_veto else None)
            if self.hard_pseudo_masks:
                masks = _one_hot_where(masks, masks.argmax(1))
            masks = _one_hot_where(masks, pasted)
            valid = (pseudo.valid.to(raw.device) | (pasted >= 0)) & inside

        outputs = model.forward_outputs(x)
        student = model.per_pixel_logits(outputs)
        if student.shape[-2:] != (h, w):  # Mask2Former: stride 4
            student = F.interpolate(student, size=(h, w), mode="bilinear", align_corners=False)
        losses = {}
        refined = masks
        if self.teacher is not None:
            t = self.teacher(model.pixel_features(outputs), (h, w))
            losses["loss_teacher_bce"] = soft_bce(t["logits"], masks, valid, self._pos_weight(masks, valid))
            if self.contrastive_weight > 0:
                hard = torch.where(valid, masks.argmax(1), torch.full_like(pasted, -1))
                small = F.interpolate(hard[:, None].float(), size=t["embeddings"].shape[-2:], mode="nearest")[:, 0]
                losses["loss_teacher_contrastive"] = self.contrastive_weight * pixel_contrastive(
                    t["embeddings"], small.long(), self.contrastive_temperature, -1, self.contrastive_pixels)
            r = cosine_schedule(0.0, 1.0, 0, max(1, int(self.teacher_warmup * self.max_iter)), self.iteration) \
                if self.teacher_warmup > 0 else 1.0
            refined = r * t["logits"].detach().sigmoid() + (1 - r) * masks
        targets = soft_label_targets(refined, old_probs, self.new_ids, labelled, self.old_weight,
                                     background=model.background_logits[0])
        targets = _one_hot_where(targets, pasted)
        losses["loss_soft_labels"] = soft_bce(student, targets, inside,
                                              self._pos_weight(targets, inside) if self.pos_weight_student else None)
        if self.memory_bank is not None:
            self._remember(x_raw, targets, pasted, inside, image_labels)
        return losses

    def _pos_weight(self, targets, valid):
        return balanced_positive_weight(targets, valid, self.pos_weight_max) if self.pos_weight_max > 0 else None

    @torch.no_grad()
    def _remember(self, images, targets, pasted, inside, image_labels) -> None:
        """Offers each image's region of each of its new classes (refined labels, pasted pixels excluded)."""
        hard = torch.where((pasted < 0) & inside, targets.argmax(1), torch.full_like(pasted, -1))
        for b, labels in enumerate(image_labels):
            self.memory_bank.add_from_labels(images[b], hard[b], [int(c) for c in labels])
