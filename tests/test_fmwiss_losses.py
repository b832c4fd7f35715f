"""FMWISS's losses against numbers worked by hand (log 3, log 4, e, ... written out in the comments)."""
import math

import pytest
import torch

from fmwiss_d2.modeling.losses.fmwiss import (
    combine_pseudo_masks, pixel_contrastive, soft_bce, soft_label_loss, soft_label_targets,
)

L3 = math.log(3.0)  # sigmoid(log 3) = 0.75
BCE_1 = -math.log(0.75)  # target 1 at p = 0.75: 0.287682
BCE_0 = -math.log(0.25)  # target 0 at p = 0.75: 1.386294


def test_soft_bce_averages_channels_over_valid_pixels_only():
    z = torch.full((1, 2, 1, 2), L3, requires_grad=True)
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])[None, :, None, :]  # pixel 0: [1, 0]; pixel 1: [1, 1]
    p0, p1 = (BCE_1 + BCE_0) / 2, BCE_1  # 0.836988, 0.287682
    assert soft_bce(z, t).item() == pytest.approx((p0 + p1) / 2, abs=1e-6)
    assert soft_bce(z, t, torch.tensor([[[True, False]]])).item() == pytest.approx(p0, abs=1e-6)
    empty = soft_bce(z, t, torch.zeros(1, 1, 2, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()  # no NaN, a (zero) gradient
    assert torch.equal(z.grad, torch.zeros_like(z))
    # a soft target: t = 0.5 at p = 0.75 -> (BCE_1 + BCE_0) / 2
    assert soft_bce(torch.full((1, 1, 1, 1), L3), torch.full((1, 1, 1, 1), 0.5)).item() == pytest.approx(p0, abs=1e-6)


def test_pixel_contrastive_pulls_same_pseudo_class_pixels():
    # pixels: u1 = (2, 0) (normalised to (1, 0)), u2 = (1, 0), u3 = (0, 1), u4 = (1, 0) ignored; labels 0, 0, 1, -1
    emb = torch.tensor([[2.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 1, -1]]])
    # anchor 1 (and 2): positive has cos 1, the other pixel cos 0: -log(e^{1/T} / (e^{1/T} + 1)); anchor 3 has no positive
    for t in (1.0, 0.5):
        want = -(1 / t - math.log(math.exp(1 / t) + 1))  # 0.313262 at T = 1, 0.126928 at T = 0.5
        assert pixel_contrastive(emb, labels, temperature=t).item() == pytest.approx(want, abs=1e-6)
    # opposite embeddings for a positive pair are penalised more: u2 = (-1, 0): -log(e^{-1} / (e^{-1} + e^0))
    emb2 = emb.clone()
    emb2[0, 0, 0, 1] = -1.0
    assert pixel_contrastive(emb2, labels, 1.0).item() == pytest.approx(-(-1 - math.log(math.exp(-1) + 1)), abs=1e-6)
    # no positive pair at all: 0, with a gradient
    e = emb.clone().requires_grad_(True)
    loss = pixel_contrastive(e, torch.tensor([[[0, 1, 2, -1]]]))
    loss.backward()
    assert loss.item() == 0.0 and e.grad is not None


def test_combine_pseudo_masks_gives_the_non_new_mass_to_the_old_model():
    # K = 4: background 0, old class 1, new classes 2 and 3
    s = torch.tensor([0.3, 0.0, 0.5, 0.2]).reshape(1, 4, 1, 1)
    p_old = torch.tensor([0.25, 0.75]).reshape(1, 2, 1, 1)
    m = combine_pseudo_masks(s, p_old, [2, 3]).flatten()
    assert m.tolist() == pytest.approx([0.3 * 0.25, 0.3 * 0.75, 0.5, 0.2])
    # the old model's veto: new classes scaled by its background 0.25 (0.125, 0.05), the rest 0.825 shared as it says
    v = combine_pseudo_masks(s, p_old, [2, 3], veto_background=0).flatten()
    assert v.tolist() == pytest.approx([0.825 * 0.25, 0.825 * 0.75, 0.125, 0.05])
    assert float(v.sum()) == pytest.approx(1.0)


def test_soft_labels_new_from_teacher_old_averaged_and_trained_by_bce():
    teacher = torch.tensor([0.2, 0.6, 0.9, 0.4]).reshape(1, 4, 1, 1)
    old = torch.tensor([0.3, 0.7]).reshape(1, 2, 1, 1)
    labelled = torch.tensor([[False, False, True, False]])  # the image is labelled with new class 2 only
    y = soft_label_targets(teacher, old, [2, 3], labelled, old_weight=0.5).flatten()
    # the old background (0.3) keeps only 1 - 0.9 of itself: the new class takes the rest
    assert y.tolist() == pytest.approx([0.5 * 0.3 * 0.1 + 0.5 * 0.2, 0.5 * 0.7 + 0.5 * 0.6, 0.9, 0.0])
    assert soft_label_targets(teacher, old, [2, 3], labelled, 1.0).flatten()[:2].tolist() == pytest.approx([0.03, 0.7])
    nothing_new = soft_label_targets(teacher, old, [2, 3], torch.zeros(1, 4, dtype=torch.bool), 1.0).flatten()
    assert nothing_new.tolist() == pytest.approx([0.3, 0.7, 0.0, 0.0])  # unlabelled image: the old model as it is
    z = torch.tensor([0.0, 0.0, L3, 0.0]).reshape(1, 4, 1, 1).requires_grad_(True)
    # channels 0, 1, 3 at p = 0.5: log 2 whatever the target; channel 2: -0.9 log 0.75 - 0.1 log 0.25
    want = (3 * math.log(2) + 0.9 * BCE_1 + 0.1 * BCE_0) / 4  # 0.619246
    loss = soft_label_loss(z, teacher, old, [2, 3], labelled, 0.5)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    loss.backward()
    # d/dz of mean BCE = (sigmoid(z) - y) / K: channel 3 (absent new class, y = 0) is pushed down
    assert z.grad.flatten().tolist() == pytest.approx([(0.5 - 0.115) / 4, (0.5 - 0.65) / 4, (0.75 - 0.9) / 4, 0.5 / 4])


def test_balanced_positive_weight_and_weighted_bce():
    from fmwiss_d2.modeling.losses.fmwiss import balanced_positive_weight

    # 4 pixels, class 0 positive on 1 (negative mass 3 -> w = 3), class 1 soft 0.5 everywhere (2 / 2 -> w = 1),
    # class 2 never positive (-> the cap); the 4th pixel invalid: class 0 then has 1 positive, 2 negatives
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])[None, :, None, :]
    assert balanced_positive_weight(t, max_weight=10.0).tolist() == pytest.approx([3.0, 1.0, 10.0])
    assert balanced_positive_weight(t, max_weight=2.0).tolist() == pytest.approx([2.0, 1.0, 2.0])
    valid = torch.tensor([[[True, True, True, False]]])
    assert balanced_positive_weight(t, valid).tolist() == pytest.approx([2.0, 1.0, 10.0])
    # weighted BCE at p = 0.75 everywhere, one class, targets [1, 0, 0, 0], w = 3: (3 BCE_1 + 3 BCE_0) / 4
    z = torch.full((1, 1, 1, 4), L3)
    t1 = t[:, :1]
    want = (3 * BCE_1 + 3 * BCE_0) / 4
    assert soft_bce(z, t1, pos_weight=torch.tensor([3.0])).item() == pytest.approx(want, abs=1e-6)
    assert soft_bce(z, t1, pos_weight=torch.tensor([1.0])).item() == pytest.approx(soft_bce(z, t1).item(), abs=1e-7)
