import torch

from fmwiss_d2.modeling.heads import IncrementalClassifier


def test_expand_keeps_old_outputs_and_no_object_last():
    torch.manual_seed(0)
    clf = IncrementalClassifier(8, [3, 2], no_object=True)
    x = torch.randn(2, 5, 8)
    before = clf(x)
    assert before.shape == (2, 5, 6) and clf.num_classes == 5
    clf.expand(4)
    after = clf(x)
    assert after.shape == (2, 5, 10) and clf.classes_per_step == [3, 2, 4]
    assert torch.equal(after[..., :5], before[..., :5])  # old classes unchanged
    assert torch.equal(after[..., -1], before[..., -1])  # no-object stays the last logit
    new = clf.cls[2]
    assert torch.allclose(after[..., 5:9], x @ new.weight.T + new.bias)


def test_per_pixel_layout_is_a_1x1_convolution():
    torch.manual_seed(0)
    clf = IncrementalClassifier(4, [2, 1])
    x = torch.randn(2, 4, 3, 5)
    out = clf(x, dim=1)
    w = torch.cat([clf.cls[0].weight, clf.cls[1].weight])
    b = torch.cat([clf.cls[0].bias, clf.cls[1].bias])
    assert torch.allclose(out, torch.nn.functional.conv2d(x, w[:, :, None, None], b), atol=1e-6)


def test_state_dict_of_an_expanded_classifier_loads_into_a_fresh_one():
    clf = IncrementalClassifier(4, [2])
    clf.expand(3)
    fresh = IncrementalClassifier(4, [2])
    fresh.load_state_dict(clf.state_dict())
    x = torch.randn(3, 4)
    assert fresh.classes_per_step == [2, 3] and torch.equal(fresh(x), clf(x))
