"""The Hungarian matcher against a brute-force search over all assignments of hand-computed costs."""
import itertools
import math

import numpy as np
import pytest
import torch

from fmwiss_d2.modeling.matcher import HungarianMatcher


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def cost_by_hand(logits, masks, labels, tgt, wc, wm, wd):
    """C[q, m] from the formulas, element by element, in float64."""
    Q, M = logits.shape[0], len(labels)
    C = np.zeros((Q, M))
    for q in range(Q):
        e = [math.exp(v) for v in logits[q]]
        probs = [v / sum(e) for v in e]
        p = [_sigmoid(v) for v in masks[q].ravel()]
        for m in range(M):
            t = list(tgt[m].ravel())
            bce = sum(-(ti * math.log(pi) + (1 - ti) * math.log(1 - pi)) for pi, ti in zip(p, t)) / len(p)
            dice = 1 - (2 * sum(pi * ti for pi, ti in zip(p, t)) + 1) / (sum(p) + sum(t) + 1)
            C[q, m] = -wc * probs[labels[m]] + wm * bce + wd * dice
    return C


def brute_force(C):
    """Minimal total cost over all injective maps target -> query."""
    Q, M = C.shape
    best = min(itertools.permutations(range(Q), M), key=lambda perm: sum(C[perm[m], m] for m in range(M)))
    return {(best[m], m) for m in range(M)}, sum(C[best[m], m] for m in range(M))


@pytest.mark.parametrize("seed,Q,M", [(0, 4, 2), (1, 5, 3), (2, 3, 3), (3, 6, 4)])
def test_matches_brute_force_on_dense_costs(seed, Q, M):
    g = torch.Generator().manual_seed(seed)
    K, H, W = 3, 3, 4
    logits = torch.randn(1, Q, K + 1, generator=g, dtype=torch.float64)
    masks = 2 * torch.randn(1, Q, H, W, generator=g, dtype=torch.float64)
    labels = torch.randint(0, K, (M,), generator=g)
    tgt = (torch.rand(M, H, W, generator=g) > 0.5).double()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=0)
    (qi, ti), = matcher({"pred_logits": logits, "pred_masks": masks}, [{"labels": labels, "masks": tgt}])
    C = cost_by_hand(logits[0].numpy(), masks[0].numpy(), labels.tolist(), tgt.numpy(), 2.0, 5.0, 5.0)
    expected, best_cost = brute_force(C)
    got = set(zip(qi.tolist(), ti.tolist()))
    assert len(got) == M
    assert sum(C[q, m] for q, m in got) == pytest.approx(best_cost, abs=1e-9)
    assert got == expected


def test_point_sampled_costs_with_constant_masks():
    """Constant masks make every sampled point equal, so the sampled costs equal the formula's."""
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]]))
    mask_logits = torch.tensor([2.0, -1.0, 0.5])
    masks = mask_logits.view(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    labels = torch.tensor([1, 0])
    tgt = torch.stack([torch.zeros(16, 16), torch.ones(16, 16)])
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=50)
    C = matcher.cost_matrix(logits[0], masks[0], {"labels": labels, "masks": tgt})
    P = 50
    for q in range(3):
        p = _sigmoid(float(mask_logits[q]))
        for m, t in enumerate([0.0, 1.0]):
            cls = -float(logits[0, q].softmax(-1)[labels[m]])
            bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
            dice = 1 - (2 * P * p * t + 1) / (P * p + P * t + 1)
            assert float(C[q, m]) == pytest.approx(cls + bce + dice, rel=1e-5)
    (qi, ti), = matcher({"pred_logits": logits, "pred_masks": masks}, [{"labels": labels, "masks": tgt}])
    assert set(zip(qi.tolist(), ti.tolist())) == brute_force(C.double().numpy())[0]


def test_image_without_targets_gives_empty_match():
    matcher = HungarianMatcher(num_points=0)
    out = {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 4, 4)}
    (qi, ti), = matcher(out, [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4)}])
    assert len(qi) == 0 and len(ti) == 0
