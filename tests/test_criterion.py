"""SetCriterion terms against values worked out by hand."""
import math

import pytest
import torch

from fmwiss_d2.modeling.criterion import SetCriterion
from fmwiss_d2.modeling.losses import dice_loss, sigmoid_ce_loss
from fmwiss_d2.modeling.matcher import HungarianMatcher


def _criterion(num_points=0, deep_supervision=True):
    return SetCriterion(
        num_classes=2, matcher=HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=num_points),
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}, eos_coef=0.1, num_points=num_points,
        oversample_ratio=3.0, importance_sample_ratio=0.75, deep_supervision=deep_supervision, num_aux=1,
    )


def test_tiny_case_worked_by_hand():
    # Two queries, classes {0, 1} + no-object (index 2); one target of class 0 with mask [1, 0] (1x2 image).
    # Query 0 has logits [2, 0, 0], query 1 [0, 0, 1]; both predict mask logits [0, 0] (p = 0.5 everywhere),
    # so the match is decided by the class cost: p0(class 0) = e^2/(e^2+2) > p1(class 0) = 1/(2+e) -> query 0.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    masks = torch.zeros(1, 2, 1, 2)
    targets = [{"labels": torch.tensor([0]), "masks": torch.tensor([[[1.0, 0.0]]])}]
    out = {"pred_logits": logits, "pred_masks": masks, "aux_outputs": [{"pred_logits": logits, "pred_masks": masks}]}
    losses = _criterion()(out, targets)
    # class CE: targets [0, no-object]; weights [1, 0.1]
    ce_q0 = math.log(1 + 2 * math.exp(-2))  # -log(e^2 / (e^2 + 2))
    ce_q1 = math.log(1 + 2 / math.e)  # -log(e / (2 + e))
    assert losses["loss_ce"].item() == pytest.approx((1.0 * ce_q0 + 0.1 * ce_q1) / 1.1, rel=1e-6)
    # BCE at p = 0.5 is log 2 whatever the target; one mask
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), rel=1e-6)
    # dice: 1 - (2 * 0.5 + 1) / ((0.5 + 0.5) + 1 + 1) = 1/3
    assert losses["loss_dice"].item() == pytest.approx(1 / 3, rel=1e-6)
    # deep supervision: the aux prediction is identical, so are its terms
    for k in ("loss_ce", "loss_mask", "loss_dice"):
        assert losses[k + "_0"].item() == pytest.approx(losses[k].item(), rel=1e-6)
    assert set(_criterion().weight_dict) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0",
                                             "loss_dice_0"}


def test_two_images_normalise_by_number_of_masks():
    # Image 0: one target, predicted perfectly confidently right (mask logits +-L); image 1: two targets.
    L = 30.0
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]], [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    masks = torch.tensor([[[[L, -L]], [[-L, -L]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])
    targets = [
        {"labels": torch.tensor([0]), "masks": torch.tensor([[[1.0, 0.0]]])},
        {"labels": torch.tensor([0, 1]), "masks": torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])},
    ]
    losses = _criterion(deep_supervision=False)({"pred_logits": logits, "pred_masks": masks}, targets)
    # BCE: image 0 ~0; image 1: two masks at p = 0.5 -> log 2 each; divided by 3 masks
    assert losses["loss_mask"].item() == pytest.approx(2 * math.log(2) / 3, rel=1e-5)
    # dice: image 0 -> 1 - (2 + 1)/(1 + 1 + 1) = 0; image 1 -> 1/3 each; divided by 3
    assert losses["loss_dice"].item() == pytest.approx((2 / 3) / 3, rel=1e-5)
    assert "loss_ce_0" not in losses


def test_importance_sampled_terms_on_constant_masks():
    # Mask logit 1 everywhere, target all ones: any sampled point has p = sigmoid(1), t = 1.
    P = 37
    crit = _criterion(num_points=P, deep_supervision=False)
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])
    masks = torch.ones(1, 2, 6, 6)
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 12, 12)}]
    losses = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    p = 1 / (1 + math.exp(-1))
    assert losses["loss_mask"].item() == pytest.approx(-math.log(p), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(1 - (2 * P * p + 1) / (P * p + P + 1), rel=1e-5)


def test_loss_functions_formulas():
    x = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.5, 0.75]
    t = torch.tensor([[1.0, 0.0]])
    assert sigmoid_ce_loss(x, t, 1).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert dice_loss(x, t, 2).item() == pytest.approx((1 - (2 * 0.5 + 1) / (1.25 + 1 + 1)) / 2, rel=1e-6)
