"""The Localizer source (fmwiss_d2/pseudo_labels/localizer.py) on a trivially separable world."""
import numpy as np
import pytest
import torch
from torch import nn

from fmwiss_d2.pseudo_labels import PseudoLabelContext, build_pseudo_label_source
from fmwiss_d2.pseudo_labels.localizer import Localizer, cam_maps, multilabel_bce
from fmwiss_d2.utils.errors import UserError


class _PixelModel(nn.Module):
    """An "old model" whose feature map is the image itself, scaled to [0, 1] (colour = class)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))
        self.register_buffer("pixel_std", torch.full((3, 1, 1), 255.0))

    @property
    def device(self):
        return self.pixel_mean.device

    def features(self, x):
        return {"res4": x}


def _world(n=24, size=8, seed=0):
    """Images with a red square (class 1) and/or a green square (class 2) on black; their masks."""
    rng = np.random.default_rng(seed)
    images, masks, records = {}, [], []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.int64)
        labels = sorted(rng.choice([1, 2], size=rng.integers(1, 3), replace=False).tolist())
        for c, (y, x) in zip(labels, ((0, 0), (4, 4))):
            img[y: y + 3, x: x + 3, c - 1] = 255
            mask[y: y + 3, x: x + 3] = c
        images[f"img{i}"] = img
        masks.append(mask)
        records.append({"file_name": f"img{i}", "image_labels": labels, "height": size, "width": size})
    return images, masks, records


def test_multilabel_bce_worked_by_hand():
    z = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    # classes 0 and 1 only: (-log s(0) - log(1 - s(2))) / 2 = (log 2 + log(1 + e^2)) / 2
    expected = (np.log(2) + np.log(1 + np.exp(2.0))) / 2
    assert multilabel_bce(z, y, torch.tensor([True, True, False])).item() == pytest.approx(expected, rel=1e-6)


def test_cam_maps_are_relu_over_max():
    m = cam_maps(torch.tensor([[[-1.0, 2.0, 4.0]]]), (1, 3))
    assert torch.allclose(m, torch.tensor([[[0.0, 0.5, 1.0]]]))


def test_localizer_learns_to_separate_two_colours():
    images, masks, records = _world()
    ctx = PseudoLabelContext(class_names=["background", "red", "green"], background=0, old_model=_PixelModel())
    loc = Localizer(iterations=200, batch_size=8, lr=0.1, feature="res4", seed=0,
                    read_image=lambda fn: images[fn])
    with pytest.raises(UserError, match="prepare"):
        loc.cache_key()
    loc.prepare(records, ctx)
    key = loc.cache_key()
    batch = torch.stack([torch.from_numpy(images[r["file_name"]]).permute(2, 0, 1).float() for r in records])
    labels = [torch.tensor(r["image_labels"]) for r in records]
    hard = loc(batch, labels, ctx).hard()
    assert torch.equal(hard, torch.from_numpy(np.stack(masks)))
    # seeded: the same records learn the same head (so a rerun finds its cache)
    again = Localizer(iterations=200, batch_size=8, lr=0.1, feature="res4", seed=0, read_image=lambda fn: images[fn])
    again.prepare(records, ctx)
    assert again.cache_key() == key


def test_localizer_needs_the_old_model_and_its_feature():
    from detectron2.config import get_cfg

    from fmwiss_d2.config import add_fmwiss_config

    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.PSEUDO_LABELS.LOCALIZER.FEATURE = "res9"
    loc = build_pseudo_label_source(cfg, "Localizer")
    images, _, records = _world(n=2)
    loc.read_image = lambda fn: images[fn]
    with pytest.raises(UserError, match="previous step's model"):
        loc.prepare(records, PseudoLabelContext(class_names=["background", "red", "green"]))
    with pytest.raises(UserError, match="res9"):
        loc.prepare(records, PseudoLabelContext(class_names=["background", "red", "green"], old_model=_PixelModel()))
