"""Independent metric computations the tests compare the evaluators with."""
import numpy as np


def direct_iou(pairs, n):
    """IoU per class computed from scratch with boolean masks over (prediction, ground truth) pairs
    (255 = ignored; NaN where the class has no ground truth)."""
    tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
    for pred, gt in pairs:
        valid = gt != 255
        for c in range(n):
            p, g = (pred == c) & valid, (gt == c) & valid
            tp[c] += (p & g).sum()
            fp[c] += (p & ~g).sum()
            fn[c] += (~p & g).sum()
    iou = np.full(n, np.nan)
    has = (tp + fn) > 0
    iou[has] = tp[has] / (tp + fp + fn)[has]
    return iou
