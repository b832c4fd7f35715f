"""Semantic / panoptic / instance post-processing on hand-made query outputs."""
import math

import pytest
import torch

from fmwiss_d2.modeling.postprocessing import instance_inference, panoptic_inference, semantic_inference

BIG = 20.0  # sigmoid(+-20) is 1 or 0 up to 2e-9


def _cls(*probs):
    """Logits whose softmax is exactly ``probs``."""
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_semantic_inference():
    mask_cls = torch.stack([_cls(0.7, 0.2, 0.1), _cls(0.1, 0.5, 0.4)])
    mask_pred = torch.tensor([[[0.0, math.log(3.0)]], [[math.log(3.0), 0.0]]], dtype=torch.float64)  # sigmoid: .5/.75
    out = semantic_inference(mask_cls, mask_pred)
    # S_k(x) = sum_q p_q[k] m_q(x)
    expected = torch.tensor([
        [[0.7 * 0.5 + 0.1 * 0.75, 0.7 * 0.75 + 0.1 * 0.5]],
        [[0.2 * 0.5 + 0.5 * 0.75, 0.2 * 0.75 + 0.5 * 0.5]],
    ], dtype=torch.float64)
    assert out.shape == (2, 1, 2)
    assert torch.allclose(out, expected, atol=1e-12)


def test_panoptic_inference():
    H = W = 4
    left = torch.full((H, W), -BIG)
    left[:, :2] = BIG
    left_but_corner = left.clone()
    left_but_corner[3, 0] = -BIG
    top_right = torch.full((H, W), -BIG)
    top_right[:2, 2:] = BIG
    bottom_right = torch.full((H, W), -BIG)
    bottom_right[2:, 2:] = BIG
    left_column = torch.full((H, W), -BIG)
    left_column[:, 0] = BIG
    # classes: 0, 1 things, 2 stuff, 3 = no object
    mask_cls = torch.stack([
        _cls(0.9, 0.04, 0.03, 0.03),  # q0: thing 0, left half except (3, 0)
        _cls(0.02, 0.02, 0.95, 0.01),  # q1: stuff 2, top right
        _cls(0.02, 0.02, 0.9, 0.06),  # q2: stuff 2 again, bottom right -> merged with q1
        _cls(0.05, 0.85, 0.05, 0.05),  # q3: thing 1, left column: wins only (3, 0): 1/4 < 0.8 -> dropped
        _cls(0.1, 0.1, 0.1, 0.7),  # q4: no object
        _cls(0.3, 0.3, 0.2, 0.2),  # q5: thing 0 with p = 0.3 < 0.8 -> dropped
    ]).float()
    mask_pred = torch.stack([left_but_corner, top_right, bottom_right, left_column, left, left])
    seg, info = panoptic_inference(mask_cls, mask_pred, thing_ids=[0, 1], object_mask_threshold=0.8,
                                   overlap_threshold=0.8)
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [0, 1, 2, 2]], dtype=torch.int32)
    assert torch.equal(seg, expected)
    assert info == [{"id": 1, "isthing": True, "category_id": 0}, {"id": 2, "isthing": False, "category_id": 2}]


def test_panoptic_inference_nothing_kept():
    seg, info = panoptic_inference(torch.stack([_cls(0.1, 0.9)]).float(), torch.zeros(1, 3, 3), thing_ids=[0])
    assert info == [] and not seg.any()


def test_instance_inference():
    H = W = 4
    q0 = torch.full((H, W), -math.log(3.0))
    q0[:, :2] = math.log(3.0)  # sigmoid 0.75 on the left half, 0.25 on the right
    q1 = torch.full((H, W), math.log(4.0))  # sigmoid 0.8 everywhere
    mask_cls = torch.stack([_cls(0.6, 0.3, 0.1), _cls(0.1, 0.8, 0.1)]).float()
    res = instance_inference(mask_cls, torch.stack([q0, q1]), topk=2)
    # top-2 (query, class) pairs by class probability: (q1, 1) 0.8 and (q0, 0) 0.6
    assert res.pred_classes.tolist() == [1, 0]
    assert res.scores.tolist() == pytest.approx([0.8 * 0.8, 0.6 * 0.75], rel=1e-5)
    assert res.pred_masks[0].sum().item() == 16 and res.pred_masks[1][:, :2].all() and not res.pred_masks[1][:, 2:].any()
    assert res.pred_boxes.tensor.tolist() == [[0, 0, 4, 4], [0, 0, 2, 4]]
    # restricted to thing classes {0}: only (q0, 0) remains among the top 2
    res = instance_inference(mask_cls, torch.stack([q0, q1]), topk=2, thing_ids=[0])
    assert res.pred_classes.tolist() == [0]
