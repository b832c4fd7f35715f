"""The tiny ResNet's strides, with and without dilated stages (feature sizes worked out by hand)."""
import pytest
import torch

from fmwiss_d2.modeling.backbone.tiny import TinyResNet

FEATURES = ("res2", "res3", "res4", "res5")


@pytest.mark.parametrize("dilations, strides", [((1, 1, 1, 1), (4, 8, 16, 32)), ((1, 1, 2, 4), (4, 8, 8, 8)),
                                                ((1, 1, 1, 2), (4, 8, 16, 16))])
def test_feature_sizes_follow_the_declared_strides(dilations, strides):
    torch.manual_seed(0)
    net = TinyResNet(out_features=FEATURES, dilations=dilations).eval()
    out = net(torch.randn(1, 3, 128, 96))
    for name, s in zip(FEATURES, strides):
        assert net.output_shape()[name].stride == s
        assert tuple(out[name].shape[-2:]) == (128 // s, 96 // s)
    # same parameters either way: a dilated stage only changes where its kernels look
    plain = TinyResNet(out_features=FEATURES)
    assert [p.shape for p in net.parameters()] == [p.shape for p in plain.parameters()]


def test_bad_dilations_are_refused():
    with pytest.raises(ValueError, match="MODEL.TINY.DILATIONS"):
        TinyResNet(dilations=(2, 1, 1, 1))
