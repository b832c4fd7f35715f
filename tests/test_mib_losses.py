"""MiB's losses and classifier initialization against hand-worked numbers."""
import math

import pytest
import torch
import torch.nn.functional as F

from fmwiss_d2.modeling.losses.mib import background_init, unbiased_cross_entropy, unbiased_distillation

e = math.exp


def test_unbiased_ce_hand_worked():
    # one image, 3 pixels, classes [bg, old1, new2], logits [1, 2, 0] at every pixel
    logits = torch.tensor([1.0, 2.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3).contiguous()
    targets = torch.tensor([[[0, 2, 255]]])
    z = e(1) + e(2) + e(0)
    bg = -math.log((e(1) + e(2)) / z)  # background may be the old class
    new = -math.log(e(0) / z)
    got = unbiased_cross_entropy(logits, targets, old_ids=[1])
    assert got.item() == pytest.approx((bg + new) / 2, abs=1e-6)
    # an old-class target counts as background
    assert unbiased_cross_entropy(logits, torch.tensor([[[1, 1, 1]]]), old_ids=[1]).item() == pytest.approx(bg, abs=1e-6)


def test_unbiased_ce_without_old_classes_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 3)
    targets = torch.randint(0, 5, (2, 4, 3))
    targets[0, 0, 0] = 255
    ref = F.cross_entropy(logits, targets, ignore_index=255)
    assert torch.allclose(unbiased_cross_entropy(logits, targets, old_ids=[]), ref)


def test_unbiased_ce_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = unbiased_cross_entropy(logits, torch.full((1, 2, 2), 255), old_ids=[1])
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_unbiased_ce_two_background_slots_for_mask_classification():
    # queries over [bg, old1, new2, no-object]; both bg and no-object absorb the old class
    logits = torch.tensor([[0.5, 1.0, -1.0, 2.0]])
    z = e(0.5) + e(1.0) + e(-1.0) + e(2.0)
    got = unbiased_cross_entropy(logits, torch.tensor([3]), old_ids=[1], background=(0, 3))
    assert got.item() == pytest.approx(-math.log((e(2.0) + e(1.0)) / z), abs=1e-6)
    got = unbiased_cross_entropy(logits, torch.tensor([0]), old_ids=[1], background=(0, 3))
    assert got.item() == pytest.approx(-math.log((e(0.5) + e(1.0)) / z), abs=1e-6)


def test_unbiased_kd_hand_worked():
    # new model over [bg, old1, new2] = [a0, a1, a2]; old model over [bg, old1] = [b0, b1]
    a = [0.3, -0.2, 1.1]
    b = [0.7, -0.4]
    za = sum(e(x) for x in a)
    q0, q1 = e(b[0]) / (e(b[0]) + e(b[1])), e(b[1]) / (e(b[0]) + e(b[1]))
    expected = -(q0 * math.log((e(a[0]) + e(a[2])) / za) + q1 * math.log(e(a[1]) / za)) / 2
    got = unbiased_distillation(torch.tensor(a).view(1, 3, 1, 1), torch.tensor(b).view(1, 2, 1, 1), new_ids=[2])
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_unbiased_kd_with_trailing_no_object():
    # mask classification: new [old0, old1, new2, noobj], old [old0, old1, noobj]; no-object absorbs new2
    a = torch.tensor([[0.2, 0.1, 0.9, -0.3]])
    b = torch.tensor([[1.0, 0.0, 0.5]])
    la = a.log_softmax(-1)[0]
    q = b.softmax(-1)[0]
    noobj = torch.logsumexp(a[0, [3, 2]], 0) - torch.logsumexp(a[0], 0)
    expected = -(q[0] * la[0] + q[1] * la[1] + q[2] * noobj) / 3
    got = unbiased_distillation(a, b, new_ids=[2], background=-1, dim=-1)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_unbiased_kd_without_new_classes_is_plain_distillation_and_mask_zeroes():
    torch.manual_seed(1)
    new, old = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    plain = -(old.softmax(1) * new.log_softmax(1)).sum(1).mean() / 4
    assert torch.allclose(unbiased_distillation(new, old, new_ids=[]), plain)
    mask = torch.zeros(2, 3, 3)
    assert unbiased_distillation(new, old, new_ids=[], mask=mask).item() == 0.0
    with pytest.raises(ValueError, match="old outputs"):
        unbiased_distillation(torch.randn(1, 5), torch.randn(1, 2), new_ids=[4], dim=1)


def test_background_init_preserves_old_probabilities():
    torch.manual_seed(2)
    w = torch.randn(3, 8)  # [bg, old1, old2] classifier
    bias = torch.randn(3)
    feats = torch.randn(16, 8)
    old_p = (feats @ w.T + bias).softmax(-1)
    nw, nb, bg_b = background_init(w[0], bias[0], num_new=2)
    assert nw.shape == (2, 8) and torch.equal(nw[0], w[0]) and torch.equal(nw[1], w[0])
    assert torch.allclose(nb, (bias[0] - math.log(3)).repeat(2)) and torch.allclose(bg_b, bias[0] - math.log(3))
    new_w = torch.cat([w, nw])
    new_b = torch.cat([bg_b.view(1), bias[1:], nb])
    new_p = (feats @ new_w.T + new_b).softmax(-1)
    # old classes unchanged; bg + new share the old background mass equally
    assert torch.allclose(new_p[:, 1:3], old_p[:, 1:3], atol=1e-6)
    assert torch.allclose(new_p[:, [0, 3, 4]].sum(-1), old_p[:, 0], atol=1e-6)
    assert torch.allclose(new_p[:, 3], old_p[:, 0] / 3, atol=1e-6)


def test_background_init_with_a_share_gives_each_new_class_that_share_of_the_background():
    torch.manual_seed(4)
    w, bias, feats = torch.randn(3, 8), torch.randn(3), torch.randn(16, 8)  # [old1, old2, no-object]
    old_p = (feats @ w.T + bias).softmax(-1)
    nw, nb, bg_b = background_init(w[2], bias[2], num_new=2, share=0.1)
    assert torch.allclose(nb, (bias[2] + math.log(0.1)).repeat(2)) and torch.allclose(bg_b, bias[2] + math.log(0.8))
    new_p = (feats @ torch.cat([w[:2], nw, w[2:]]).T + torch.cat([bias[:2], nb, bg_b.view(1)])).softmax(-1)
    assert torch.allclose(new_p[:, :2], old_p[:, :2], atol=1e-6)  # old classes unchanged
    assert torch.allclose(new_p[:, 2], 0.1 * old_p[:, 2], atol=1e-6) and torch.allclose(new_p[:, 3], new_p[:, 2])
    assert torch.allclose(new_p[:, 4], 0.8 * old_p[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="share"):
        background_init(w[2], bias[2], num_new=4, share=0.25)


def test_unbiased_ce_class_weights_match_cross_entropy_weights():
    torch.manual_seed(3)
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 1])
    w = torch.tensor([1.0, 1.0, 1.0, 0.1])
    ref = F.cross_entropy(logits, targets, weight=w)
    assert torch.allclose(unbiased_cross_entropy(logits, targets, old_ids=[], weight=w), ref)
    # with an old class, the weighted mean uses the merged probabilities: worked element by element
    got = unbiased_cross_entropy(logits, targets, old_ids=[1], background=(0, 3), weight=w)
    lp = logits.log_softmax(-1)
    merged = {0: torch.logsumexp(lp[:, [0, 1]], -1), 3: torch.logsumexp(lp[:, [3, 1]], -1)}
    y = [0, 0, 2, 3, 3, 0]  # old class 1 counts as background 0
    nll = torch.stack([-(merged[t][i] if t in merged else lp[i, t]) for i, t in enumerate(y)])
    ww = w[y]
    assert torch.allclose(got, (ww * nll).sum() / ww.sum())


def test_old_query_mask_distillation_hand_worked():
    from fmwiss_d2.methods.mib import old_query_mask_distillation

    # 1 image, 2 queries, classes [bg, old1, new2, no-object] (old model: [bg, old1, no-object]), 1x2 masks
    old = {"pred_logits": torch.tensor([[[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]]),
           "pred_masks": torch.tensor([[[[1.0, -1.0]], [[0.5, 0.5]]]])}
    new = {"pred_masks": torch.tensor([[[[0.0, 0.0]], [[2.0, -2.0]]]])}
    w = torch.softmax(old["pred_logits"], -1)[0, :, 1]  # probability of the old class 1 per query
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = lambda z, t: -(t * math.log(sig(z)) + (1 - t) * math.log(1 - sig(z)))  # noqa: E731
    q0 = bce(0.0, sig(1.0)) + bce(0.0, sig(-1.0))
    q1 = bce(2.0, sig(0.5)) + bce(-2.0, sig(0.5))
    expected = (w[0].item() * q0 + w[1].item() * q1) / 4  # mean over 2 queries x 2 pixels
    assert old_query_mask_distillation(new, old, old_ids=[1]).item() == pytest.approx(expected, rel=1e-5)


def _pseudo_label_case():
    """1 image, 5 pixels in a row; classes [bg 0, old 1, old 2, new 3] (+ no-object in the old model's logits).
    New labels: pixels 0-2 background, pixel 3 new class 3, pixel 4 ignored.
    Old model, 3 queries: q0 says old 1 (mask on pixels 0, 2, 3, 4), q1 says background (on pixel 1),
    q2 says old 2 (on pixel 2). Pixel 2 is contested: old 2 wins, with a normalised score of about 0.5.
    Returns (labels (1, 1, 5), the OldModelSource's pseudo labels at thresholds 0 and 0.6)."""
    from fmwiss_d2.modeling.meta_arch import MaskFormer
    from fmwiss_d2.pseudo_labels import PseudoLabelContext
    from fmwiss_d2.pseudo_labels.sources import OldModelSource

    on, off = 10.0, -10.0
    old = {"pred_logits": torch.tensor([[[0.0, 5.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 6.0, 0.0]]]),
           "pred_masks": torch.tensor([[[[on, off, on, on, on]], [[off, on, off, off, off]],
                                        [[off, off, on, off, off]]]])}

    class OldModel:  # the model-family contract, for the outputs above
        per_pixel_scores = staticmethod(lambda outputs: MaskFormer.per_pixel_scores(None, outputs))

    ctx = PseudoLabelContext(class_names=["bg", "old1", "old2", "new3"], old_model=OldModel(), old_outputs=old)
    images = torch.zeros(1, 3, 1, 5)
    pseudo = [OldModelSource(threshold=t)(images, [torch.zeros(0, dtype=torch.long)], ctx) for t in (0.0, 0.6)]
    return torch.tensor([[[0, 0, 0, 3, 255]]]), pseudo


def test_pseudo_labels_put_old_classes_back_on_background_pixels_only():
    from fmwiss_d2.methods.mib import pseudo_label_background

    labels, (pseudo, strict) = _pseudo_label_case()
    assert pseudo.scores.shape == (1, 4, 1, 5) and torch.all(pseudo.scores[:, 3] == 0)  # old model: no class 3
    assert torch.allclose(pseudo.scores.sum(1), torch.ones(1, 1, 5))  # normalised over its classes
    got = pseudo_label_background(labels, pseudo, classes=[1, 2])
    # pixel 0 -> old 1; pixel 1 stays background; pixel 2 -> old 2; the new and the ignored pixel unchanged
    assert got.tolist() == [[[1, 0, 2, 3, 255]]]
    assert labels.tolist() == [[[0, 0, 0, 3, 255]]]  # the input is not modified
    # the contested pixel's normalised score is ~0.5: a 0.6 threshold leaves it background
    assert strict.valid.tolist() == [[[True, True, False, True, True]]]
    assert pseudo_label_background(labels, strict, classes=[1, 2]).tolist() == [[[1, 0, 0, 3, 255]]]
    # no old classes (step 0): labels unchanged
    assert pseudo_label_background(labels, pseudo, classes=[]).tolist() == labels.tolist()


def test_pseudo_labels_leave_no_empty_background_mask_when_old_classes_cover_it():
    from fmwiss_d2.data.dataset_mappers.semantic import semantic_to_instances
    from fmwiss_d2.methods.mib import pseudo_label_background

    _, (pseudo, _) = _pseudo_label_case()
    labels = torch.tensor([[[0, 255, 255, 3, 255]]])  # background only on pixel 0 (old model: old 1)
    got = pseudo_label_background(labels, pseudo, classes=[1, 2])[0]
    assert semantic_to_instances(got, 255).gt_classes.tolist() == [1, 3]  # no empty background mask


def test_unbiased_ce_keeps_pseudo_labelled_old_targets_when_asked():
    torch.manual_seed(4)
    logits, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 1])
    lp = logits.log_softmax(-1)
    bg = {0: torch.logsumexp(lp[:, [0, 1]], -1), 3: torch.logsumexp(lp[:, [3, 1]], -1)}
    nll = [-(bg[t][i] if t in bg else lp[i, t]) for i, t in enumerate(targets.tolist())]
    got = unbiased_cross_entropy(logits, targets, old_ids=[1], background=(0, 3), old_targets_to_background=False)
    assert got.item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-6)
