"""PADing's losses and generators (modeling/losses/pading.py, modeling/pading.py) on hand-worked numbers."""
import math

import pytest
import torch

from fmwiss_d2.modeling.losses.pading import (
    class_conditional_mmd, mmd_loss, reconstruction_loss, relation_alignment_loss, semantic_classification_loss, unrelated_prior_loss,
)
from fmwiss_d2.modeling.pading import FeatureDisentangler, MLPGenerator, PrimitiveGenerator


def test_mmd_hand_worked():
    x, y = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]])
    # sigma 1: k(d) = exp(-d^2 / 2); Kxx = mean(1, e^-2, e^-2, 1), Kyy = 1, Kxy = mean(e^-1/2, e^-1/2)
    expected = (1 + math.exp(-2)) / 2 + 1 - 2 * math.exp(-0.5)
    assert mmd_loss(x, y, sigmas=(1.0,)).item() == pytest.approx(expected, rel=1e-6)
    # two kernels add
    two = sum((1 + math.exp(-4 / (2 * s * s))) / 2 + 1 - 2 * math.exp(-1 / (2 * s * s)) for s in (1.0, 3.0))
    assert mmd_loss(x, y, sigmas=(1.0, 3.0)).item() == pytest.approx(two, rel=1e-6)


def test_mmd_zero_for_identical_sets_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    assert mmd_loss(x, x.clone()).abs().item() < 1e-5
    values = [mmd_loss(x, x + shift).item() for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_class_conditional_mmd_hand_worked():
    x = torch.tensor([[0.0], [2.0], [5.0]])
    labels = torch.tensor([0, 0, 1])
    assert class_conditional_mmd(x, x.clone(), labels).abs().item() < 1e-6
    # the same mixture with the classes swapped: zero for the whole-set MMD, not per class
    y = torch.tensor([[0.0], [5.0], [2.0]])
    assert mmd_loss(x, y).abs().item() < 1e-6
    swapped = class_conditional_mmd(x, y, labels, sigmas=(1.0,)).item()
    # class 0: {0, 2} vs {0, 5}; class 1: {5} vs {2}; k(d) = exp(-d^2 / 2)
    k = lambda d: math.exp(-d * d / 2)  # noqa: E731
    c0 = (2 + 2 * k(2)) / 4 + (2 + 2 * k(5)) / 4 - 2 * (k(0) + k(5) + k(2) + k(3)) / 4
    c1 = 1 + 1 - 2 * k(3)
    assert swapped == pytest.approx((c0 + c1) / 2, rel=1e-6)


def test_relation_alignment_hand_worked():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # identical geometry: zero
    assert relation_alignment_loss(text * 3, text * 3, text, text, temperature=1.0).item() == pytest.approx(0, abs=1e-7)
    # both visual features the same: Q rows uniform; P rows softmax([1, 0])
    visual = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    p = math.e / (math.e + 1)
    kl = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert relation_alignment_loss(visual, visual, text, text, temperature=1.0).item() == pytest.approx(kl, rel=1e-6)


def test_relation_alignment_cross_term_uses_both_sets():
    seen_text, unseen_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    # row i: P_i = softmax_j over the one unseen item = 1, so KL = 0 whatever the visual features
    assert relation_alignment_loss(torch.randn(2, 2), torch.randn(1, 2), seen_text, unseen_text).item() == \
        pytest.approx(0, abs=1e-7)


def test_disentanglement_losses_hand_worked():
    assert reconstruction_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(1.5)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ce = semantic_classification_loss(torch.tensor([[2.0, 0.0]]), text, torch.tensor([0]), temperature=1.0)
    assert ce.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # mean 2, variance 1 -> (1 + 4 - 1 - log 1) / 2 = 2
    assert unrelated_prior_loss(torch.tensor([[1.0], [3.0]])).item() == pytest.approx(2.0, rel=1e-5)
    u = torch.randn(20000, 3, generator=torch.Generator().manual_seed(1))
    assert unrelated_prior_loss(u).item() < 1e-3


@pytest.mark.parametrize("cls", [PrimitiveGenerator, MLPGenerator])
def test_generator_shapes_and_determinism(cls):
    torch.manual_seed(0)
    gen = cls(12, 20, noise_dim=6, num_primitives=7, num_layers=3, hidden_dim=16)
    text = torch.randn(5, 12)
    a = gen(text, torch.Generator().manual_seed(3))
    b = gen(text, torch.Generator().manual_seed(3))
    c = gen(text, torch.Generator().manual_seed(4))
    assert a.shape == (5, 20)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # the noise matters
    assert not torch.allclose(a[0], gen(text[1:2].expand(5, -1), torch.Generator().manual_seed(3))[0])  # so does the text


def test_primitive_generator_layer_noise_by_hand():
    """The public code's form: the query is the projected text alone; N(0, I) is added after the cross-attention
    of every layer (here one layer, noise drawn from the given generator), then norm, FFN, norm, final norm."""
    torch.manual_seed(0)
    gen = PrimitiveGenerator(4, 8, noise_dim=2, num_primitives=5, num_layers=1, hidden_dim=8, layer_noise=True,
                             dropout=0.1).eval()
    assert gen.noise_proj is None
    text = torch.randn(3, 4)
    noise = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    layer, prims = gen.layers[0], gen.primitives.weight[None].expand(3, -1, -1)
    q = gen.text_proj(text)[:, None]
    q = layer.norm1(q + layer.attn(q, prims, prims)[0] + noise[:, None])
    expected = gen.norm(layer.norm2(q + layer.ffn(q))[:, 0])
    torch.testing.assert_close(gen(text, torch.Generator().manual_seed(5)), expected)
    assert not torch.allclose(gen(text, torch.Generator().manual_seed(6)), expected)


def test_primitive_generator_assembles_primitives():
    torch.manual_seed(0)
    gen = PrimitiveGenerator(4, 8, noise_dim=2, num_primitives=5, num_layers=3, hidden_dim=8)
    assert len(gen.layers) == 3 and gen.primitives.weight.shape == (5, 8)
    gen(torch.randn(3, 4)).pow(2).sum().backward()
    assert gen.primitives.weight.grad.abs().sum() > 0


def test_disentangler_shapes():
    d = FeatureDisentangler(8, 4, hidden_dim=16)
    r, u, rec = d(torch.randn(3, 8))
    assert r.shape == u.shape == rec.shape == (3, 8)
    assert d.text_proj(torch.randn(2, 4)).shape == (2, 8)


@pytest.mark.parametrize("cls", [PrimitiveGenerator, MLPGenerator])
def test_mmd_training_fits_class_conditional_embeddings(cls):
    """Trained with the class-conditional MMD on three classes (real embeddings: Gaussians around far-apart means), a generator
    puts each class's synthetic embeddings nearest to that class's real mean."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    text = torch.eye(3, 5)
    gen = cls(5, 4, noise_dim=2, num_primitives=16, num_layers=2, hidden_dim=32)
    gen.norm = torch.nn.Identity()  # the real embeddings here are not layer-normalised
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    labels = torch.arange(3).repeat_interleave(16)
    losses = []
    for _ in range(150):
        real = means[labels] + 0.3 * torch.randn(len(labels), 4, generator=g)
        loss = class_conditional_mmd(gen(text[labels], g), real, labels, sigmas=(0.5, 1.0, 2.0, 4.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    with torch.no_grad():
        fake = gen(text.repeat_interleave(50, 0), g).view(3, 50, 4).mean(1)
    assert torch.cdist(fake, means).argmin(1).tolist() == [0, 1, 2]
