"""PADing's losses (He et al., "Primitive Generation and Semantic-related Alignment for Universal Zero-Shot
Segmentation", CVPR 2023, arXiv 2306.11087).

The generator is trained so that its synthetic class embeddings of seen classes match the real ones in
distribution, class by class (kernel MMD, as in GMMN), are classified as their class (a small cross-entropy), and, split into a
semantic-related and a semantic-unrelated part (feature disentanglement, Sec. 3.3), keep the class-to-class
structure of the text space in their related part (relation alignment, Sec. 3.4). Each term is a pure function
of tensors, so it is tested on hand-worked numbers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_SIGMAS = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)  # GMMN's kernel widths, PADing's default


def gaussian_kernel_mixture(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> torch.Tensor:
    """``K_ij = sum_s exp(-|x_i - y_j|^2 / (2 s^2))`` for (N, D) and (M, D) inputs: a mixture of Gaussian
    kernels, so that both fine and coarse differences between the sets are seen (GMMN, Li et al. 2015)."""
    d2 = (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)
    return sum(torch.exp(-d2 / (2.0 * s * s)) for s in sigmas)


def mmd_loss(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> torch.Tensor:
    """Squared maximum mean discrepancy between two samples (biased estimator, every pair counted)::

        MMD^2 = mean_ij K(x_i, x_j) + mean_ij K(y_i, y_j) - 2 mean_ij K(x_i, y_j)

    with the kernel mixture of :func:`gaussian_kernel_mixture`. Zero when the two sets are the same; grows as they
    move apart. Why MMD: it matches whole distributions (the synthetic embeddings' spread included), with no
    discriminator to train."""
    return (gaussian_kernel_mixture(x, x, sigmas).mean() + gaussian_kernel_mixture(y, y, sigmas).mean()
            - 2.0 * gaussian_kernel_mixture(x, y, sigmas).mean())


def class_conditional_mmd(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                          sigmas: Sequence[float] = DEFAULT_SIGMAS) -> torch.Tensor:
    """``mean_c MMD^2(fake[labels == c], real[labels == c])`` over the classes present in ``labels`` (the same for
    both sets: ``fake[i]`` was generated for the class of ``real[i]``). Why per class: an MMD over the whole batch
    matches only the mixture, and is as low when the generator permutes the classes (measured in
    tests/test_pading_losses.py: whole-batch MMD mapped three classes' texts to the wrong classes' embeddings)."""
    classes = labels.unique()
    return sum(mmd_loss(fake[labels == c], real[labels == c], sigmas) for c in classes) / len(classes)


def similarity_distribution(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Row-wise ``softmax_j(cos(a_i, b_j) / temperature)``: how item i relates to each item j."""
    return F.softmax(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature, dim=-1)


def relation_alignment_loss(visual_a: torch.Tensor, visual_b: torch.Tensor, text_a: torch.Tensor,
                            text_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Semantic-visual relation alignment (Sec. 3.4): the relations of the semantic-related visual features,
    ``Q_i = softmax_j(cos(v^a_i, v^b_j) / T)``, are pulled to those of their classes' text embeddings,
    ``P_i = softmax_j(cos(t^a_i, t^b_j) / T)``::

        loss = mean_i KL(P_i || Q_i) = mean_i sum_j P_ij (log P_ij - log Q_ij)

    ``visual_a[i]`` is an embedding of the class whose text is ``text_a[i]`` (same for b). Why: "apple" should be
    closer to "orange" than to "cow" in the visual space as in the text space, which places an unseen class's
    synthetic features relative to the seen ones. a = b gives the within-set term, a = seen, b = unseen the cross
    term."""
    p = similarity_distribution(text_a, text_b, temperature)
    log_q = F.log_softmax(F.normalize(visual_a, dim=-1) @ F.normalize(visual_b, dim=-1).t() / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean")


def reconstruction_loss(reconstruction: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``mean |D([r, u]) - x|`` (L1): the related and unrelated parts together must keep all of the feature, so the
    split loses nothing (Sec. 3.3)."""
    return F.l1_loss(reconstruction, features)


def semantic_classification_loss(related: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                                 temperature: float = 0.1) -> torch.Tensor:
    """The semantic-related part must identify its class from the class texts (Sec. 3.3)::

        loss = mean_i CE(cos(r_i, t_k) / T over k, y_i)

    ``text`` (K, D) in the related space (projected), ``labels`` index its rows."""
    logits = F.normalize(related, dim=-1) @ F.normalize(text, dim=-1).t() / temperature
    return F.cross_entropy(logits, labels)


def unrelated_prior_loss(unrelated: torch.Tensor) -> torch.Tensor:
    """The semantic-unrelated part follows a class-free prior, N(0, 1) per dimension: with the batch mean ``mu_d``
    and variance ``s_d^2`` of dimension d (biased), ``loss = mean_d KL(N(mu_d, s_d^2) || N(0, 1))
    = mean_d (s_d^2 + mu_d^2 - 1 - log s_d^2) / 2``. Why: what the unrelated part holds should not depend on the
    class, so class cues are left to the related part (Sec. 3.3)."""
    mu = unrelated.mean(0)
    var = unrelated.var(0, unbiased=False).clamp_min(1e-6)
    return 0.5 * (var + mu.pow(2) - 1.0 - var.log()).mean()
