"""Co-segmentation (fmwiss_d2/pseudo_labels/coseg.py) on hand-made CLIP maps and DINO outputs."""
import math

import pytest
import torch
from torch import nn

from fmwiss_d2.pseudo_labels import PseudoLabelContext, PseudoLabels, build_pseudo_label_source
from fmwiss_d2.pseudo_labels.coseg import (
    CoSegmentation, dino_objectness, fill_objects, fuse_class_maps, patch_affinity, seed_guidance)
from fmwiss_d2.utils.errors import UserError

# A 3 x 4 patch grid: object A (class 1) in the top-left 2 x 2 patches, object B (class 2) right next to it in the
# top-right 2 x 2, background in the bottom row. DINO's descriptors: one direction per region.
A = torch.zeros(3, 4, dtype=torch.bool)
A[:2, :2] = True
B = torch.zeros(3, 4, dtype=torch.bool)
B[:2, 2:] = True


def _descriptors():
    f = torch.zeros(3, 3, 4)
    f[0][A], f[1][B], f[2][~(A | B)] = 1.0, 1.0, 1.0
    return f + 0.05 * torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(0))


def _clip_maps():
    """Noisy class maps: each peaks inside its own object but bleeds onto the neighbour, where it beats the
    neighbour's own map at some patches (CLIP's argmax alone mislabels them)."""
    pa = torch.full((3, 4), 0.1)
    pa[A] = torch.tensor([0.9, 0.5, 0.8, 0.4])
    pa[B] = torch.tensor([0.7, 0.3, 0.65, 0.3])
    pb = torch.full((3, 4), 0.1)
    pb[B] = torch.tensor([0.5, 0.95, 0.6, 0.8])
    pb[A] = torch.tensor([0.2, 0.6, 0.1, 0.2])
    return torch.stack([pa, pb])


def test_patch_affinity_is_cut_and_powered_cosine():
    f = torch.tensor([[1.0, 1.0, -1.0], [0.0, 1.0, 0.0]]).view(2, 1, 3)  # patches (1,0), (1,1), (-1,0)
    w = patch_affinity(f, power=2.0)
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])  # cos 1/sqrt2 -> 0.5; -1 -> 0
    assert torch.allclose(w, expected, atol=1e-6)


def test_seed_guidance_random_walk_worked_by_hand():
    w = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]])
    m = torch.tensor([[0.9, 0.2, 0.1]])  # top-1 seed: patch 0
    assert torch.allclose(seed_guidance(m, w, 1, steps=0).flatten(), torch.tensor([1.0, 0.0, 0.0]))
    # one step: row 0 of D^-1 W = [2/3, 1/3, 0] -> / max
    assert torch.allclose(seed_guidance(m, w, 1, steps=1).flatten(), torch.tensor([1.0, 0.5, 0.0]))
    # two steps: 2/3 * [2/3, 1/3, 0] + 1/3 * [1/4, 1/2, 1/4] = [19/36, 14/36, 3/36] -> / max
    assert torch.allclose(seed_guidance(m, w, 1, steps=2).flatten(), torch.tensor([1.0, 14 / 19, 3 / 19]), atol=1e-6)


def test_objectness_is_head_mean_over_its_max():
    att = torch.tensor([[0.0, 2.0], [2.0, 6.0]]).view(1, 2, 1, 2)  # two heads
    assert torch.allclose(dino_objectness(att), torch.tensor([[[0.25, 1.0]]]))


def test_fusion_worked_by_hand():
    p, g, o = torch.tensor([[[0.2, 0.8]]]), torch.tensor([[[1.0, 0.5]]]), torch.tensor([[1.0, 0.0]])
    # 0.5 P + 0.5 G = [0.6, 0.65]; gate 0.5 + 0.5 O = [1, 0.5] -> [0.6, 0.325]; / max 0.6 -> [1, 0.325 / 0.6]
    m = fuse_class_maps(p, g, o, seed_weight=0.5, attention_weight=0.5, normalize=True)
    assert torch.allclose(m, torch.tensor([[[1.0, 0.325 / 0.6]]]))
    m = fuse_class_maps(p, None, o, seed_weight=0.5, attention_weight=1.0, normalize=False)
    assert torch.allclose(m, torch.tensor([[[0.2, 0.0]]]))
    assert torch.equal(fuse_class_maps(p, None, None, seed_weight=0.5, attention_weight=0.5, normalize=False), p)


def test_object_filling_worked_by_hand():
    # two objects (objectness >= 0.5): the left 2 x 2 block and the single patch at (0, 4) (not touching it,
    # even diagonally); everything else is background
    o = torch.zeros(3, 5)
    o[:2, :2], o[0, 4] = 0.9, 0.6
    m = torch.zeros(2, 3, 5)
    m[0, :2, :2] = torch.tensor([[1.0, 0.6], [0.2, 0.2]])  # class 0 lit on part of the left object
    m[1, 0, 1], m[1, 0, 4], m[1, 2, 2] = 0.4, 0.8, 0.7  # class 1: a bit of the left object, the small one, bg
    full = fill_objects(m, o, threshold=0.5, weight=1.0)
    e = torch.zeros(2, 3, 5)
    e[0, :2, :2] = (1.0 + 0.6 + 0.2 + 0.2) / 4  # the mean over the object, everywhere on it
    e[1, :2, :2], e[1, 0, 4] = 0.4 / 4, 0.8  # the background pixel (2, 2) loses its 0.7
    assert torch.allclose(full, e)
    half = fill_objects(m, o, threshold=0.5, weight=0.5)
    assert torch.allclose(half, 0.5 * m + 0.5 * e)
    assert torch.equal(fill_objects(m, o, threshold=0.5, weight=0.0), m)
    # diagonal neighbours belong to one object (8-connectivity): (1, 1) and (2, 2) join
    o[2, 2] = 0.9
    joined = fill_objects(m, o, threshold=0.5, weight=1.0)
    assert torch.allclose(joined[1, 2, 2], torch.tensor((0.4 + 0.7) / 5))


def test_a_seed_inside_one_object_yields_that_object_not_its_neighbour():
    w = patch_affinity(_descriptors(), power=2.0)
    pa, pb = _clip_maps()
    for p, own, other in ((pa, A, B), (pb, B, A)):
        g = seed_guidance(p, w, num_seeds=2, steps=1)
        assert g[own].min() > 0.9 and g[other].max() < 0.05 and g[~(A | B)].max() < 0.05
    assert (pa > pb)[B].any()  # CLIP alone gives part of B to class 1


class _FakeCLIPSource(nn.Module):
    def __init__(self, maps):
        super().__init__()
        self.maps = maps

    def cache_key(self):
        return {"source": "fake"}

    def forward(self, images, image_labels, context):
        scores = torch.zeros(1, 3, 3, 4)
        scores[0, 1:] = self.maps
        return PseudoLabels(scores, torch.ones(1, 3, 4, dtype=torch.bool))


class _FakeDINO(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1))

    def forward(self, images):
        att = torch.full((1, 2, 3, 4), 0.2)
        att[:, :, :2] = 1.0  # both objects salient, the background row not
        return {"attentions": att, "keys": _descriptors()[None], "features": _descriptors()[None]}


def test_source_labels_each_object_by_its_seeds():
    ctx = PseudoLabelContext(class_names=["background", "a", "b"], background=0)
    images, labels = torch.zeros(1, 3, 3, 4), [torch.tensor([1, 2])]
    common = dict(clip_source=_FakeCLIPSource(_clip_maps()), dino=_FakeDINO(), num_seeds=2, affinity_power=2.0,
                  propagation_steps=1, attention_weight=0.5, normalize=True)
    fused = CoSegmentation(**common, seed_weight=0.8)(images, labels, ctx)
    expected = torch.zeros(3, 4, dtype=torch.long)
    expected[A], expected[B] = 1, 2
    assert torch.equal(fused.hard()[0], expected)
    assert fused.scores.min() >= 0 and fused.scores.max() <= 1
    # background = 1 - the top class map
    assert torch.allclose(fused.scores[0, 0], 1 - fused.scores[0, 1:].amax(0))
    clip_only = CoSegmentation(**{**common, "dino": None}, use_dino=False, use_seeds=False)(images, labels, ctx)
    assert not torch.equal(clip_only.hard()[0], expected)  # the seeds are what fixes it


def test_built_from_config_and_checked():
    from detectron2.config import get_cfg

    from fmwiss_d2.config import add_fmwiss_config

    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.PSEUDO_LABELS.COSEG.NUM_SEEDS = 7
    cfg.PSEUDO_LABELS.COSEG.AFFINITY_POWER = 3.0
    src = build_pseudo_label_source(cfg, "CoSegmentation")
    assert isinstance(src, CoSegmentation) and src.num_seeds == 7 and src.affinity_power == 3.0
    key = src.cache_key()
    assert key["num_seeds"] == 7 and key["dino"]["arch"] == cfg.MODEL.DINO.ARCH
    cfg.PSEUDO_LABELS.COSEG.USE_DINO = False
    with pytest.raises(UserError, match="USE_SEEDS"):
        build_pseudo_label_source(cfg, "CoSegmentation")
    cfg.PSEUDO_LABELS.COSEG.USE_SEEDS = False
    assert "num_seeds" not in build_pseudo_label_source(cfg, "CoSegmentation").cache_key()
    assert math.isclose(src.seed_weight, cfg.PSEUDO_LABELS.COSEG.SEED_WEIGHT)
    cfg.PSEUDO_LABELS.COSEG.OBJECT_FILL = 0.5
    with pytest.raises(UserError, match="OBJECT_FILL fills DINO's objects"):
        build_pseudo_label_source(cfg, "CoSegmentation")
    cfg.PSEUDO_LABELS.COSEG.USE_DINO = True
    assert build_pseudo_label_source(cfg, "CoSegmentation").cache_key()["object_fill"] == 0.5
    assert "object_fill" not in key  # off by default: the cache of the default settings is unchanged
    cfg.PSEUDO_LABELS.COSEG.OBJECT_FILL = 1.5
    with pytest.raises(UserError, match=r"OBJECT_FILL must be in \[0, 1\]"):
        build_pseudo_label_source(cfg, "CoSegmentation")
    cfg.PSEUDO_LABELS.COSEG.OBJECT_FILL, cfg.PSEUDO_LABELS.COSEG.OBJECT_THRESHOLD = 0.5, 0.0
    with pytest.raises(UserError, match=r"OBJECT_THRESHOLD must be in \(0, 1\]"):
        build_pseudo_label_source(cfg, "CoSegmentation")
