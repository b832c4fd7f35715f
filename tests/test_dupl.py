"""DuPL: the batched GMM noise filter, the pure losses and label functions (hand-worked numbers and slow
references), and the method itself (a few training iterations that never read a mask)."""
import math

import numpy as np
import pytest
import torch

from fmwiss_d2.modeling.losses.gmm import fit_gmm_1d, gmm_noise_filter


def _reference_em(x, iters=200):
    """Plain per-sample EM in float64 numpy (a slow, independent reference): scipy-free Gaussian densities."""
    x = np.asarray(x, np.float64)
    mu = np.array([x[x <= x.mean()].mean(), x[x > x.mean()].mean()])
    var = np.array([x[x <= x.mean()].var(), x[x > x.mean()].var()]) + 5e-4
    w = np.array([0.5, 0.5])
    for _ in range(iters):
        dens = w / np.sqrt(2 * np.pi * var) * np.exp(-(x[:, None] - mu) ** 2 / (2 * var))
        r = dens / dens.sum(1, keepdims=True)
        nk = r.sum(0)
        w, mu = nk / len(x), (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + 5e-4
    return w, mu, var


def _mixture(gen, n, w, mu, sd):
    k = torch.rand(n, generator=gen) < w[1]
    return torch.where(k, mu[1] + sd[1] * torch.randn(n, generator=gen), mu[0] + sd[0] * torch.randn(n, generator=gen))


def test_gmm_recovers_the_parameters_of_a_known_mixture():
    gen = torch.Generator().manual_seed(0)
    x = _mixture(gen, 20000, (0.7, 0.3), (0.5, 3.0), (0.2, 0.5))
    gmm = fit_gmm_1d(x[None], iters=50)
    assert gmm.means[0].tolist() == pytest.approx([0.5, 3.0], abs=0.03)
    assert gmm.variances[0].sqrt().tolist() == pytest.approx([0.2, 0.5], abs=0.02)
    assert gmm.weights[0].tolist() == pytest.approx([0.7, 0.3], abs=0.01)
    # the same fit as a float64 per-sample EM, and the posterior of Bayes' rule with those parameters
    w, mu, var = _reference_em(x.numpy())
    assert gmm.means[0].tolist() == pytest.approx(mu.tolist(), abs=1e-3)
    probe = torch.tensor([[0.5, 1.5, 1.8, 3.0]], dtype=torch.float64)
    dens = torch.tensor(w) / torch.tensor(2 * math.pi * var).sqrt() * torch.exp(
        -(probe[0, :, None] - torch.tensor(mu)) ** 2 / (2 * torch.tensor(var)))
    expected = dens[:, 1] / dens.sum(1)
    assert gmm.noise_posterior(probe.float())[0].tolist() == pytest.approx(expected.tolist(), abs=2e-3)


def test_masked_entries_do_not_enter_the_fit():
    gen = torch.Generator().manual_seed(1)
    x = _mixture(gen, 4000, (0.5, 0.5), (0.0, 2.0), (0.1, 0.1))
    polluted = torch.cat([x, torch.full((4000,), 50.0)])  # huge values, masked out
    mask = torch.cat([torch.ones(4000, dtype=torch.bool), torch.zeros(4000, dtype=torch.bool)])
    a, b = fit_gmm_1d(x[None], iters=30), fit_gmm_1d(polluted[None], mask[None], iters=30)
    assert b.means[0].tolist() == pytest.approx(a.means[0].tolist(), abs=1e-4)
    assert int(b.count) == 4000


def test_single_cluster_is_clean_through_eta_and_a_batch_gets_per_image_answers():
    gen = torch.Generator().manual_seed(2)
    two = _mixture(gen, 3000, (0.8, 0.2), (0.3, 4.0), (0.1, 0.3))
    one = 0.5 + 0.2 * torch.randn(3000, generator=gen)  # one cluster: EM splits it, but the means stay close
    losses = torch.stack([two, one])
    fit = fit_gmm_1d(losses)
    assert float(fit.means[1, 1] - fit.means[1, 0]) < 1.0 < float(fit.means[0, 1] - fit.means[0, 0])
    noisy = gmm_noise_filter(losses, torch.ones_like(losses, dtype=torch.bool), gamma=0.95, eta=1.0)
    assert not noisy[1].any()  # the single-cluster image is clean as a whole
    truth = two > 2.0  # the samples drawn from the high component (3 sd from either mean)
    assert (noisy[0] == truth).float().mean() > 0.995
    # the same images alone give the same answers as in the batch
    alone = gmm_noise_filter(two[None], torch.ones(1, 3000, dtype=torch.bool), gamma=0.95, eta=1.0)
    assert torch.equal(alone[0], noisy[0])
    # too few samples to fit: clean
    few = gmm_noise_filter(losses, torch.ones_like(losses, dtype=torch.bool), gamma=0.95, eta=1.0, min_pixels=5000)
    assert not few.any()
