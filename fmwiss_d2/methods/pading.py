"""PADing: universal zero-shot segmentation by primitive generation (He et al., CVPR 2023, arXiv 2306.11087).

A thin composition over Mask2Former with a text classifier (``MODEL.MASK_FORMER.TEXT_CLASSIFIER.ENABLED``), a
zero-shot split (``METHOD.PADING.SPLIT``, data/datasets/zero_shot.py) and three stages (``METHOD.PADING.STAGE``),
each an ordinary training run:

1. ``seen``: the model learns masks and classes on the split's training data (no unseen annotation), its class
   head scoring queries against CLIP text embeddings of *every* class name; the logits of the unseen (and excluded)
   classes are masked to -inf before any loss and any matching, so no unseen name takes part in training.
2. ``generator``: the model is frozen; its query embeddings matched to ground truth are the *real* class
   embeddings of seen classes. The generator (primitive generator, or the GMMN MLP baseline) learns to synthesise
   them from the class's text embedding and noise: MMD to the real ones + a small classification term + the
   structure term (feature disentanglement and semantic-visual relation alignment, over seen and unseen classes).
3. ``classifier``: only the class head is retrained, on the real embeddings of the batch (matched queries with
   their class, the others "no object") and synthetic embeddings of unseen classes from the frozen generator.

At inference, excluded classes are masked; seen and unseen compete (generalised zero-shot).
"""
from __future__ import annotations

import re
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog

from ..data.datasets.zero_shot import ZeroShotSplit, resolve_zero_shot_split
from ..modeling.heads.classifier import TextClassifier
from ..modeling.losses.pading import (
    class_conditional_mmd, reconstruction_loss, relation_alignment_loss, semantic_classification_loss, unrelated_prior_loss,
)
from ..modeling.pading import FeatureDisentangler, build_generator
from .base import METHOD_REGISTRY, Method, MethodConfigError

STAGES = ("seen", "generator", "classifier")


def prompt_name(class_name: str) -> str:
    """A dataset class name as a prompt word: COCO's "sky-other-merged" -> "sky", "playingfield" stays."""
    name = re.sub(r"-(other-merged|merged|other|stuff)$", "", class_name)
    return name.replace("-", " ").replace("_", " ")


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` (..., K+1) with every entry whose ``allowed`` (K+1,) is False set to -inf: such a class gets
    probability 0, its value never reaches a loss and no gradient flows to it."""
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def mask_outputs(outputs: Dict, allowed: torch.Tensor) -> Dict:
    """The model's outputs with :func:`mask_logits` applied to the final and every auxiliary prediction."""
    out = {**outputs, "pred_logits": mask_logits(outputs["pred_logits"], allowed)}
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [{**a, "pred_logits": mask_logits(a["pred_logits"], allowed)} for a in outputs["aux_outputs"]]
    return out


@METHOD_REGISTRY.register()
class PADing(Method):
    @configurable
    def __init__(self, model, *, task=None, step: int = 0, max_iter: int = 0, split: ZeroShotSplit, stage: str,
                 generator=None, disentangler=None, sigmas=(2.0, 5.0, 10.0, 20.0, 40.0, 80.0),
                 cls_weight: float = 0.001, align: bool = True, structure_weight: float = 1e-4,
                 align_weight: float = 1.0, relation_weight: float = 1.0, reconstruction_weight: float = 0.5,
                 temperature: float = 0.1, generator_weights: str = "", num_fake: int = 16,
                 unseen_weight: float = 1.0, unseen_logit_bias: float = 0.0):
        """
        Args:
            split: the zero-shot split (class ids = the model's). stage: one of "seen", "generator", "classifier".
            generator / disentangler: trained at the generator stage (None at the others; disentangler None = off).
            sigmas, cls_weight, align, structure_weight, align_weight, relation_weight, reconstruction_weight,
            temperature: the generator's losses (modeling/losses/pading.py; METHOD.PADING.*).
            generator_weights: stage 2: checkpoint of the generator stage. num_fake: synthetic unseen embeddings
            per iteration. unseen_weight: class weight of unseen classes in stage 2.
            unseen_logit_bias: added to the unseen classes' logits at inference (calibrated stacking, Chao et al.
                2016): a model trained on seen classes only scores them, and "no object", too high for anything
                unseen to win; 0 = off.
        """
        super().__init__(model, task=task, step=step, max_iter=max_iter)
        if stage not in STAGES:
            raise MethodConfigError(f"METHOD.PADING.STAGE '{stage}' is not one of {', '.join(STAGES)}")
        if not isinstance(getattr(model, "classifier", None), TextClassifier):
            raise MethodConfigError("PADing needs a text classifier: set MODEL.MASK_FORMER.TEXT_CLASSIFIER.ENABLED True "
                                    "(and META_ARCHITECTURE MaskFormer)")
        if model.classifier.num_classes != len(split.classes):
            raise MethodConfigError(f"the model has {model.classifier.num_classes} classes but split '{split.name}' "
                                    f"has {len(split.classes)}; set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(split.classes)}")
        self.split = split
        self.stage = stage
        k = len(split.classes)
        train_allowed = torch.zeros(k + 1, dtype=torch.bool)
        train_allowed[split.seen_ids + [k]] = True
        test_allowed = train_allowed.clone()
        test_allowed[split.unseen_ids] = True
        self.register_buffer("train_allowed", train_allowed, persistent=False)
        self.register_buffer("test_allowed", test_allowed, persistent=False)
        test_bias = torch.zeros(k + 1)
        test_bias[split.unseen_ids] = float(unseen_logit_bias)
        self.register_buffer("test_bias", test_bias, persistent=False)
        self.generator = generator
        self.disentangler = disentangler
        self.sigmas = tuple(sigmas)
        self.cls_weight = cls_weight
        self.align = align
        self.structure_weight = structure_weight
        self.align_weight = align_weight
        self.relation_weight = relation_weight
        self.reconstruction_weight = reconstruction_weight
        self.temperature = temperature
        self.generator_weights = generator_weights
        self.num_fake = num_fake
        self.unseen_weight = unseen_weight

    @classmethod
    def from_config(cls, cfg, model, *, task=None, step: int = 0):
        c = cfg.METHOD.PADING
        if not c.SPLIT:
            raise MethodConfigError("PADing needs a zero-shot split: set METHOD.PADING.SPLIT (e.g. shapes_zs, or "
                                    "configs/tasks/zero_shot/shapes_zs.yaml)")
        split = resolve_zero_shot_split(c.SPLIT)
        for ds in cfg.DATASETS.TRAIN:
            if MetadataCatalog.get(ds).get("zero_shot") != split.name or "_train" not in ds:
                raise MethodConfigError(f"DATASETS.TRAIN '{ds}' is not the training set of zero-shot split "
                                        f"'{split.name}' (unseen annotations would reach training); use "
                                        f"{split.dataset_name('train')} or {split.dataset_name('train', 'sem_seg')}")
        generator = disentangler = None
        if c.STAGE == "generator":
            clf = getattr(model, "classifier", None)
            if isinstance(clf, TextClassifier):
                text_dim, dim = clf.text_embeddings.shape[1], clf.in_dim
                generator = build_generator(cfg, text_dim, dim)
                disentangler = FeatureDisentangler(dim, text_dim, c.GENERATOR_HIDDEN_DIM) if c.DISENTANGLE else None
        if c.CLASS_TEXT not in ("name", "description"):
            raise MethodConfigError(f"METHOD.PADING.CLASS_TEXT must be 'name' or 'description', got {c.CLASS_TEXT!r}")
        if c.ALIGN and not c.DISENTANGLE:
            raise MethodConfigError("METHOD.PADING.ALIGN aligns the semantic-related parts, which need "
                                    "METHOD.PADING.DISENTANGLE True; set ALIGN False too")
        return {
            **super().from_config(cfg, model, task=task, step=step),
            "split": split, "stage": c.STAGE, "generator": generator, "disentangler": disentangler,
            "sigmas": tuple(c.MMD_SIGMAS), "cls_weight": c.CLS_WEIGHT, "align": c.ALIGN,
            "structure_weight": c.STRUCTURE_WEIGHT, "align_weight": c.ALIGN_WEIGHT,
            "relation_weight": c.RELATION_WEIGHT, "reconstruction_weight": c.RECONSTRUCTION_WEIGHT,
            "temperature": c.RELATION_TEMPERATURE, "generator_weights": c.GENERATOR_WEIGHTS,
            "num_fake": c.NUM_FAKE, "unseen_weight": c.UNSEEN_WEIGHT, "unseen_logit_bias": c.UNSEEN_LOGIT_BIAS,
        }

    # ------------------------------------------------------------------------------------------- set-up
    def prepare_training(self, cfg) -> None:
        if self.stage == "seen":
            from ..modeling.foundation import build_clip_from_cfg

            clip = build_clip_from_cfg(cfg, device="cpu")
            with torch.no_grad():
                text = clip.text_embeddings(self.class_texts(cfg))
            self.model.classifier.set_text_embeddings(text)
            return
        self.model.requires_grad_(False)  # frozen: only the generator (stage "generator") or the head trains
        if self.stage == "classifier":
            self.model.classifier.requires_grad_(True)
            self.add_frozen("generator", self._load_generator(cfg))

    def class_texts(self, cfg) -> list[str]:
        """The text CLIP embeds for each class, in model order (``METHOD.PADING.CLASS_TEXT``)."""
        if cfg.METHOD.PADING.CLASS_TEXT == "name":
            return [prompt_name(c) for c in self.split.classes]
        dataset = cfg.DATASETS.TRAIN[0]
        descriptions = MetadataCatalog.get(dataset).get("class_descriptions") or {}
        missing = [c for c in self.split.classes if c not in descriptions]
        if missing:
            raise MethodConfigError(f"METHOD.PADING.CLASS_TEXT 'description' needs the metadata 'class_descriptions' "
                                    f"of '{dataset}' to describe every class; missing: {missing[:5]}. Set "
                                    "CLASS_TEXT 'name' or add the descriptions to the dataset's metadata")
        return [descriptions[c] for c in self.split.classes]

    def _load_generator(self, cfg):
        from ..utils.checkpoint_files import load_checkpoint_file

        if not self.generator_weights:
            raise MethodConfigError("METHOD.PADING.STAGE classifier needs the generator stage's checkpoint: set "
                                    "METHOD.PADING.GENERATOR_WEIGHTS (its model_final.pth)")
        clf = self.model.classifier
        generator = build_generator(cfg, clf.text_embeddings.shape[1], clf.in_dim)
        state = load_checkpoint_file(self.generator_weights).get("method", {})
        own = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
        if not own:
            raise MethodConfigError(f"'{self.generator_weights}' holds no generator (METHOD.PADING.GENERATOR_WEIGHTS "
                                    "must be the final checkpoint of a METHOD.PADING.STAGE generator run)")
        generator.load_state_dict(own)
        return generator.to(clf.text_embeddings.device)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage != "seen":
            self.model.eval()  # frozen model: batch-norm statistics stay those of stage 1
        return self

    # ---------------------------------------------------------------------------------------- training
    def _real_embeddings(self, batched_inputs):
        """(outputs with masked logits, per-query embeddings (N, Q, C), matched query embeddings (M, C), their
        classes (M,), per-query labels (N, Q) with K = no object), from the frozen model."""
        model = self.model
        images = model.preprocess_images(batched_inputs)
        with torch.no_grad():
            outputs = mask_outputs(model.forward_outputs(images.tensor), self.train_allowed)
            targets = model.prepare_targets(batched_inputs, images)
            main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
            indices = model.criterion.matcher(main, targets)
        emb = outputs["pred_embeddings"].detach()
        k = len(self.split.classes)
        per_query = torch.full(emb.shape[:2], k, dtype=torch.long, device=emb.device)
        real, labels = [], []
        for b, (src, tgt) in enumerate(indices):
            cls = targets[b]["labels"][tgt.to(targets[b]["labels"].device)].to(emb.device)
            per_query[b, src.to(emb.device)] = cls
            real.append(emb[b, src.to(emb.device)])
            labels.append(cls)
        return emb, torch.cat(real), torch.cat(labels), per_query

    def generator_losses(self, real: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The generator's losses for real embeddings ``real`` (M, C) of seen classes ``labels`` (module docstring)."""
        text = self.model.classifier.text_embeddings
        fake = self.generator(text[labels])
        losses = {"loss_mmd": class_conditional_mmd(fake, real, labels, self.sigmas)}
        logits = mask_logits(self.model.classifier(fake), self.train_allowed)
        losses["loss_fake_cls"] = self.cls_weight * F.cross_entropy(logits, labels)
        if self.disentangler is None:
            return losses
        unseen = torch.as_tensor(self.split.unseen_ids, device=text.device)
        fake_unseen = self.generator(text[unseen])
        r_s, u_s, rec_s = self.disentangler(fake)
        r_u, u_u, rec_u = self.disentangler(fake_unseen)
        classes = torch.as_tensor(self.split.inference_ids, device=text.device)
        position = torch.full((len(self.split.classes),), -1, dtype=torch.long, device=text.device)
        position[classes] = torch.arange(len(classes), device=text.device)
        text_related = self.disentangler.text_proj(text[classes])
        relation = 0.5 * (semantic_classification_loss(r_s, text_related, position[labels], self.temperature)
                          + semantic_classification_loss(r_u, text_related, position[unseen], self.temperature))
        reconstruction = 0.5 * (reconstruction_loss(rec_s, fake) + reconstruction_loss(rec_u, fake_unseen))
        prior = 0.5 * (unrelated_prior_loss(u_s) + unrelated_prior_loss(u_u))
        structure = self.relation_weight * relation + self.reconstruction_weight * reconstruction
        align_term = prior
        if self.align:
            t_s, t_u = text[labels], text[unseen]
            alignment = (relation_alignment_loss(r_s, r_s, t_s, t_s, self.temperature)
                         + relation_alignment_loss(r_u, r_u, t_u, t_u, self.temperature)
                         + relation_alignment_loss(r_s, r_u, t_s, t_u, self.temperature)) / 3.0
            align_term = align_term + alignment
        structure = structure + self.align_weight * align_term
        losses["loss_structure"] = self.structure_weight * structure
        return losses

    def classifier_loss(self, embeddings: torch.Tensor, per_query: torch.Tensor) -> torch.Tensor:
        """Stage 2: cross-entropy of the class head over every real query embedding (matched: its class; the others:
        no object, weighted as in the criterion) and ``num_fake`` synthetic embeddings of random unseen classes."""
        clf, k = self.model.classifier, len(self.split.classes)
        unseen = torch.as_tensor(self.split.unseen_ids, device=embeddings.device)
        pick = unseen[torch.randint(len(unseen), (self.num_fake,), device=embeddings.device)]
        with torch.no_grad():
            fake = self.frozen("generator")(clf.text_embeddings[pick])
        x = torch.cat([embeddings.reshape(-1, embeddings.shape[-1]), fake])
        y = torch.cat([per_query.reshape(-1), pick])
        weight = torch.ones(k + 1, device=x.device)
        weight[unseen] = self.unseen_weight
        weight[k] = self.model.criterion.eos_coef
        return F.cross_entropy(mask_logits(clf(x), self.test_allowed), y, weight=weight)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        model = self.model
        if self.stage == "seen":
            images = model.preprocess_images(batched_inputs)
            outputs = mask_outputs(model.forward_outputs(images.tensor), self.train_allowed)
            return model.losses(outputs, model.prepare_targets(batched_inputs, images))
        emb, real, labels, per_query = self._real_embeddings(batched_inputs)
        if self.stage == "generator":
            return self.generator_losses(real, labels)
        return {"loss_classifier": self.classifier_loss(emb, per_query)}

    # --------------------------------------------------------------------------------------- inference
    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        model = self.model
        images = model.preprocess_images(batched_inputs)
        outputs = mask_outputs(model.forward_outputs(images.tensor), self.test_allowed)
        outputs["pred_logits"] = outputs["pred_logits"] + self.test_bias.to(outputs["pred_logits"])
        return model.inference(outputs, batched_inputs, images)
