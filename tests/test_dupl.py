"""DuPL: the batched GMM noise filter, the pure losses and label functions (hand-worked numbers and slow
references), and the method itself (a few training iterations that never read a mask)."""
import math
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fmwiss_d2.modeling.losses.gmm import fit_gmm_1d, gmm_noise_filter

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


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


# ------------------------------------------------------------------------------ label functions and losses
def test_cam_normalisation_is_relu_then_max_min_per_image_and_class():
    from fmwiss_d2.modeling.losses.dupl import normalize_cams

    cams = torch.tensor([[[[-1.0, 1.0], [2.0, 3.0]], [[4.0, 4.0], [6.0, 8.0]]]])  # (1, 2, 2, 2)
    out = normalize_cams(cams, eps=0.0)
    # class 0: ReLU -> [0, 1, 2, 3], min 0, max 3; class 1: [4, 4, 6, 8], min 4, max 8
    assert out[0, 0].flatten().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert out[0, 1].flatten().tolist() == pytest.approx([0, 0, 0.5, 1])


def test_cams_become_background_uncertain_and_foreground_labels_of_the_images_classes():
    from fmwiss_d2.modeling.losses.dupl import cams_to_pseudo_labels

    # 3 foreground classes (model ids 1, 2, 3), one image labelled with classes 1 and 3 (channels 0 and 2)
    cams = torch.tensor([[[0.1, 0.9, 0.5, 0.25]],    # channel 0 -> class 1
                         [[0.9, 0.9, 0.9, 0.9]],     # channel 1 -> class 2: not in the labels, never used
                         [[0.2, 0.3, 0.7, 0.26]]])[None]  # channel 2 -> class 3
    labels = torch.tensor([[1, 0, 1]])
    out = cams_to_pseudo_labels(cams, labels, tau_l=0.25, tau_h=0.7)
    # pixel 0: max 0.2 <= 0.25 -> bg; 1: 0.9 (class 1) fg; 2: 0.7 (class 3) >= 0.7 fg; 3: 0.26 uncertain
    assert out[0, 0].tolist() == [0, 1, 3, 255]
    per_image = cams_to_pseudo_labels(cams.repeat(2, 1, 1, 1), labels.repeat(2, 1), 0.25, torch.tensor([0.7, 0.95]))
    assert per_image[1, 0].tolist() == [0, 255, 255, 255]  # a higher tau_h for image 1 only


def _slow_affinity(image, dilations, color_scale=0.3, position_weight=0.01):
    """Pixel by pixel in numpy: the formula of ``neighbour_affinity``'s docstring."""
    c, h, w = image.shape
    offsets = [(d * dy, d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    radius = np.array([math.hypot(oy, ox) for oy, ox in offsets])
    pos = -((radius / (radius.std(ddof=1) * color_scale)) ** 2)
    pos = np.exp(pos - pos.max()) / np.exp(pos - pos.max()).sum()
    out = np.zeros((len(offsets), h, w))
    for y in range(h):
        for x in range(w):
            ring = np.stack([image[:, min(max(y + oy, 0), h - 1), min(max(x + ox, 0), w - 1)] for oy, ox in offsets], 1)
            spread = ring.std(1, ddof=1, keepdims=True)
            logit = -((np.abs(ring - image[:, y, x, None]) / (spread * color_scale + 1e-8)) ** 2).mean(0)
            colour = np.exp(logit - logit.max()) / np.exp(logit - logit.max()).sum()
            a = colour + position_weight * pos
            out[:, y, x] = a / a.sum()
    return out, offsets


def test_image_affinity_and_one_refinement_step_match_a_pixel_by_pixel_reference():
    from fmwiss_d2.modeling.losses.dupl import neighbour_affinity, refine_with_image

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 7, 6, generator=gen)
    maps = torch.rand(1, 2, 7, 6, generator=gen)
    expected, offsets = _slow_affinity(image[0].double().numpy(), (1, 2))
    got = neighbour_affinity(image, (1, 2))
    assert got.shape == (1, 16, 7, 6)
    assert np.allclose(got[0].numpy(), expected, atol=1e-5)
    # one step: every pixel becomes the affinity-weighted mean of its (edge-replicated) neighbours
    m, (h, w) = maps[0].double().numpy(), maps.shape[-2:]
    step = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            for j, (oy, ox) in enumerate(offsets):
                step[:, y, x] += expected[j, y, x] * m[:, min(max(y + oy, 0), h - 1), min(max(x + ox, 0), w - 1)]
    assert np.allclose(refine_with_image(maps, image, 1, (1, 2))[0].numpy(), step, atol=1e-5)


def test_refinement_fills_the_object_the_image_shows_and_stops_at_its_edge():
    from fmwiss_d2.modeling.losses.dupl import refine_with_image

    gen = torch.Generator().manual_seed(0)
    image = 0.02 * torch.randn(1, 3, 32, 32, generator=gen)
    image[:, :, 8:24, 8:24] += 1.0  # a bright square on a dark ground
    cam = torch.zeros(1, 1, 32, 32)
    cam[:, :, 12:16, 12:16] = 1.0  # a CAM that found a corner of it only
    out = refine_with_image(cam, image, 10, (1, 2, 4, 8))[0, 0]
    inside, outside = out[8:24, 8:24], torch.ones(32, 32, dtype=torch.bool)
    outside[6:26, 6:26] = False
    # the mass spreads over the whole square (16 of its 256 pixels held it) and does not leak out of it
    assert inside.min() > 0.02 and inside.sum() / out.sum() > 0.99
    assert out[outside].max() < 1e-3
    # a constant map stays the same constant: thresholds mean the same before and after
    assert torch.allclose(refine_with_image(torch.full((1, 2, 32, 32), 0.4), image, 10, (1, 2, 4, 8)),
                          torch.tensor(0.4), atol=1e-5)
    assert refine_with_image(cam, image, 0) is cam


def test_dynamic_threshold_starts_descends_by_cosine_and_ends_at_each_class_floor():
    from fmwiss_d2.methods.dupl import high_thresholds, image_high_thresholds

    f = lambda it: high_thresholds(it, 0.7, [0.55, 0.7], 2000, 20000, 2).tolist()  # noqa: E731
    assert f(0) == pytest.approx([0.7, 0.7]) and f(2000) == pytest.approx([0.7, 0.7])  # start
    assert f(11000) == pytest.approx([0.625, 0.7])  # middle: cos(pi/2) = 0, half-way
    assert f(6500) == pytest.approx([0.55 + 0.15 * (1 + math.cos(math.pi / 4)) / 2, 0.7])
    assert f(20000) == pytest.approx([0.55, 0.7]) and f(30000) == pytest.approx([0.55, 0.7])  # end
    assert high_thresholds(11000, 0.7, [0.55], 2000, 20000, 3).tolist() == pytest.approx([0.625] * 3)
    with pytest.raises(ValueError, match="2 floors for 3 foreground classes"):
        high_thresholds(0, 0.7, [0.55, 0.7], 0, 1, 3)
    per_image = image_high_thresholds(torch.tensor([0.55, 0.7, 0.6]), torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 0]]))
    assert per_image.tolist() == pytest.approx([0.6, 0.55, 0.7])


def test_discrepancy_loss_is_one_plus_cosine_per_channel_and_each_term_moves_its_own_student():
    from fmwiss_d2.modeling.losses.dupl import discrepancy_loss

    f1 = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]], requires_grad=True)  # (1, 2 channels, 1, 2)
    f2 = torch.tensor([[[[0.0, 1.0]], [[2.0, 2.0]]]], requires_grad=True)
    # channel 0: orthogonal maps, cos 0; channel 1: parallel, cos 1 -> each term 1 + (0 + 1) / 2 = 1.5
    loss = discrepancy_loss(f1, f2)
    assert float(loss.detach()) == pytest.approx(3.0)
    # term 1 = 1 + cos(sg(f1), f2) reaches f2 only, term 2 = 1 + cos(sg(f2), f1) reaches f1 only: the gradient
    # f1 receives is that of cos(f1, const f2) alone
    loss.backward()
    f1_only = f1.detach().clone().requires_grad_(True)
    (1 + torch.nn.functional.cosine_similarity(f2.detach().flatten(2), f1_only.flatten(2), dim=-1).mean()).backward()
    assert torch.allclose(f1.grad, f1_only.grad)
    g1 = torch.autograd.grad(discrepancy_loss(f1, f2.detach()), f1)[0]  # with f2 frozen, f1 still gets term 2
    assert torch.allclose(g1, f1_only.grad)


def test_multilabel_classification_loss_by_hand():
    from fmwiss_d2.modeling.losses.dupl import multilabel_classification_loss

    logits, labels = torch.tensor([[0.0, 2.0]]), torch.tensor([[1, 0]])
    expected = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2
    assert float(multilabel_classification_loss(logits, labels)) == pytest.approx(expected)


def test_the_consistency_target_follows_the_same_affine_warp_as_the_image():
    from fmwiss_d2.modeling.losses.dupl import consistency_loss, random_affine, warp, warp_labels

    labels = torch.tensor([[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]])
    image = labels[:, None].float()  # an "image" whose pixel values are the labels
    flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]])
    assert torch.equal(warp_labels(labels, flip), labels.flip(-1))
    assert torch.equal(warp(image, flip)[:, 0], image[:, 0].flip(-1))
    shift = torch.tensor([[[1.0, 0, 0.5], [0, 1, 0]]])  # output x reads input x + 1 pixel (2/W = 0.5)
    expected = torch.tensor([[[1, 2, 3, 255], [5, 6, 7, 255], [9, 10, 11, 255], [13, 14, 15, 255]]])
    assert torch.equal(warp_labels(labels, shift), expected)
    # random maps: the warped labels equal the warped image (nearest) wherever both are inside
    theta = random_affine(3, generator=torch.Generator().manual_seed(0))
    big = torch.arange(3 * 16 * 16).view(3, 16, 16) % 200
    lab, img = warp_labels(big, theta), warp(big[:, None].float() + 1, theta, mode="nearest")[:, 0] - 1
    inside = lab != 255
    assert inside.float().mean() > 0.5 and torch.equal(lab[inside], img[inside].long())
    # the loss: CE over the valid target pixels only, divided by their number
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, 255]]])
    assert float(consistency_loss(logits, target)) == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))
    assert float(consistency_loss(logits, torch.full_like(target, 255))) == 0.0


# ------------------------------------------------------------------------------------------- the method
def _dupl_cfg(out, *opts):
    from _model_cfg import tiny_cfg

    tiny = ["DATASETS.TRAIN", '("tiny_shapes_sem_seg_train",)', "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "64",
            "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100",
            "SOLVER.WARMUP_ITERS", "0", "SEED", "7"]
    # every stage within 4 iterations: segmentation from 1, GMM + consistency from 2 (any confidence counts)
    dupl = ["METHOD.DUPL.SEG_START_ITER", "1", "METHOD.DUPL.GMM_START_ITER", "2", "METHOD.DUPL.GMM_MIN_PIXELS", "2",
            "METHOD.DUPL.CONSISTENCY_CONFIDENCE", "0.0"]
    return tiny_cfg("shapes/dupl.yaml", *tiny, *dupl, "OUTPUT_DIR", str(out), *opts)


def test_dupl_trains_from_image_labels_without_reading_a_mask_and_labels_a_split(tiny_world, tmp_path, monkeypatch):
    from detectron2.data import detection_utils
    from detectron2.utils.env import seed_all_rng

    from _hooks import LossRecorder
    from fmwiss_d2.engine import Trainer
    from fmwiss_d2.engine.data_loader import training_records
    from fmwiss_d2.pseudo_labels import PseudoLabelContext, build_pseudo_label_source

    cfg = _dupl_cfg(tmp_path / "run")
    cfg.freeze()
    records = training_records(cfg)  # image labels: the per-image class table, built (from the masks) once here
    assert all("image_labels" in r for r in records)
    opened = []
    real_read = detection_utils.read_image
    monkeypatch.setattr(detection_utils, "read_image", lambda fn, *a, **k: opened.append(fn) or real_read(fn, *a, **k))

    seed_all_rng(cfg.SEED)
    log = {}
    trainer = Trainer(cfg)
    trainer.register_hooks([LossRecorder(log)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    masks = {r["sem_seg_file_name"] for r in records}
    assert opened and not set(opened) & masks  # training read images only, never a mask
    assert sorted(log) == [0, 1, 2, 3]
    assert log[0]["loss_seg"] == 0 and log[0]["loss_consistency"] == 0  # CAM warm-up: cls + discrepancy only
    assert all(log[it]["loss_seg"] > 0 for it in (1, 2, 3)) and all(log[it]["loss_consistency"] > 0 for it in (2, 3))
    assert all(log[it]["loss_cls"] > 0 and log[it]["loss_discrepancy"] > 0 for it in log)

    method = trainer._trainer.model
    one, two = method.students
    assert type(one) is type(two) and not set(one.parameters()) & set(two.parameters())  # independent students
    in_optimizer = {p for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == set(method.parameters())
    assert set(two.parameters()) | set(method.cam_heads.parameters()) <= in_optimizer

    # --eval-only rebuilds the method and restores both students; inference is student 1's segmentation head
    ckpt = str(tmp_path / "run" / "model_final.pth")
    evaluated = Trainer.build_eval_model(cfg, ckpt)
    for a, b in zip(evaluated.second_student.state_dict().values(), two.state_dict().values()):
        assert torch.equal(a, b)
    batch = [{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}]
    assert evaluated(batch)[0]["sem_seg"].shape == (11, 64, 64)

    # the trained DuPL as a pseudo-label source (the "DuPL" entry of the registry), on another split
    config_file = tmp_path / "dupl.yaml"
    config_file.write_text(cfg.dump())
    src_cfg = _dupl_cfg(tmp_path / "other", "PSEUDO_LABELS.DUPL.CONFIG_FILE", str(config_file),
                        "PSEUDO_LABELS.DUPL.CHECKPOINT", ckpt)
    source = build_pseudo_label_source(src_cfg, "DuPL")
    images = torch.rand(2, 3, 64, 64) * 255
    labels = [torch.tensor([3]), torch.tensor([2, 5])]
    out = source(images, labels, PseudoLabelContext(class_names=[str(i) for i in range(11)]))
    assert out.scores.shape == (2, 11, 64, 64) and out.valid.all()
    assert set(out.hard()[0].unique().tolist()) <= {0, 3} and set(out.hard()[1].unique().tolist()) <= {0, 2, 5}
    assert torch.allclose(out.scores.sum(1), torch.ones(2, 64, 64), atol=1e-5)
    with pytest.raises(Exception, match="PSEUDO_LABELS.DUPL.CHECKPOINT"):
        build_pseudo_label_source(_dupl_cfg(tmp_path / "x", "PSEUDO_LABELS.DUPL.CONFIG_FILE", str(config_file)),
                                  "DuPL")(images, labels, PseudoLabelContext(class_names=[str(i) for i in range(11)]))


def test_single_student_variant_has_one_student_and_no_discrepancy(tiny_world, tmp_path):
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method

    cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.DUAL", "False")
    method = build_method(cfg, build_model(cfg))
    assert method.second_student is None and len(method.students) == 1 and len(method.cam_heads) == 1
    batch = [{"image": torch.rand(3, 64, 64) * 255, "image_labels": torch.tensor([1, 4])} for _ in range(2)]
    losses = method.train()(batch)
    assert float(losses["loss_discrepancy"]) == 0 and float(losses["loss_cls"].detach()) > 0
    with pytest.raises(Exception, match="INPUT.SUPERVISION image"):
        method([{"image": torch.rand(3, 64, 64)}])


def test_dupl_students_on_a_trainable_vit_backbone(tiny_world, tmp_path):
    """The paper's students are ViTs: a DINO-format ViT as a detectron2 backbone (random weights here), its patch
    features the same as the DINO wrapper's, trained through DuPL's losses."""
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method

    cfg = _dupl_cfg(tmp_path, "MODEL.BACKBONE.NAME", "build_vit_backbone", "MODEL.DINO.CHECKPOINT", "",
                    "MODEL.DEEPLAB.IN_FEATURE", "vit", "MODEL.DEEPLAB.ASPP_DILATIONS", "[1, 2, 3]")
    model = build_model(cfg)
    dino = model.backbone.dino
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(model.backbone(dino.normalize(images))["vit"], dino.eval()(images)["features"], atol=1e-5)
    method = build_method(cfg, model).train()
    batch = [{"image": images[i], "image_labels": torch.tensor([1 + i])} for i in range(2)]
    losses = method(batch)
    sum(losses.values()).backward()
    assert dino.vit.patch_embed.proj.weight.grad is not None and float(losses["loss_discrepancy"].detach()) > 0


def test_the_ablations_and_the_supervised_reference_are_named_variants_of_the_shapes_config():
    from fmwiss_d2.engine.launch import load_config
    from fmwiss_d2.engine.protocol import resolve_variant

    cfg = load_config(os.path.join(CONFIGS, "shapes", "dupl.yaml"), [])
    expected = {"SingleStudent": ("DuPL", ("METHOD.DUPL.DUAL", "False")),
                "NoDiscrepancy": ("DuPL", ("METHOD.DUPL.DISCREPANCY_WEIGHT", "0.0")),
                "FixedThreshold": ("DuPL", ("METHOD.DUPL.DYNAMIC_THRESHOLD", "False")),
                "NoGMM": ("DuPL", ("METHOD.DUPL.NOISE_FILTER", "False")),
                "NoConsistency": ("DuPL", ("METHOD.DUPL.CONSISTENCY_WEIGHT", "0.0")),
                "NoRefinement": ("DuPL", ("METHOD.DUPL.REFINE_ITERS", "0")),
                "SingleScaleCAM": ("DuPL", ("METHOD.DUPL.CAM_SCALES", "[1.0]", "METHOD.DUPL.CAM_FLIP", "False")),
                "FullySupervised": ("Supervised", ("METHOD.NAME", "Supervised", "INPUT.SUPERVISION", "pixel"))}
    for name, (method, opts) in expected.items():
        v = resolve_variant(name, cfg)
        assert (v.method, v.opts) == (method, opts)
        cfg.clone().merge_from_list(list(v.opts))  # every override is a real key
    for path in ("voc/dupl_vit_b16.yaml", "coco/dupl_vit_b16.yaml"):
        c = load_config(os.path.join(CONFIGS, path), [])
        assert c.METHOD.NAME == "DuPL" and c.INPUT.SUPERVISION == "image"
        assert len(c.METHOD.DUPL.TAU_H_END) in (1, c.MODEL.SEM_SEG_HEAD.NUM_CLASSES - 1)


def test_the_noise_filter_drops_the_high_loss_foreground_labels_only(tmp_path):
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method

    cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.DUAL", "False", "METHOD.DUPL.GMM_MIN_PIXELS", "10")
    method = build_method(cfg, build_model(cfg))
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :15] = 4  # 300 foreground pixels of class 4, 100 background pixels
    bad = torch.zeros(1, 20, 20, dtype=torch.bool)
    bad[0, :5] = True  # 100 of them with a label the head disagrees with
    # logit a on the labelled class, 0 elsewhere: CE = log(10 + e^a) - a, ~0.3 at a = 3.35 and ~4 at a = -1.68
    a = torch.where(bad, torch.tensor(-1.68), torch.tensor(3.35)) + 0.3 * torch.randn(1, 20, 20, generator=g)
    logits = torch.zeros(1, 11, 20, 20)
    logits.scatter_(1, labels[:, None], a[:, None])
    logits[:, 0] = torch.where(labels[0] == 0, torch.tensor(-5.0), logits[0, 0])  # background: high loss, never dropped
    out = method.filter_noise(logits, labels.clone())
    assert torch.equal(out[0, 15:], labels[0, 15:])  # background kept
    dropped = out == 255
    assert (dropped == bad).float().mean() > 0.99
    assert not method.filter_noise(logits, torch.where(bad, torch.tensor(255), labels)).eq(255).logical_and(~bad).any()


def test_the_per_class_noise_filter_keeps_a_hard_class_that_the_per_image_one_drops(tmp_path):
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method

    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(1, 30, 20, dtype=torch.long)
    labels[0, :15] = 4  # an easy class: 300 pixels, 100 of them mislabelled (rows 0-4)
    labels[0, 15:25] = 7  # a hard class the head has not learnt: 200 pixels, every loss ~2.5
    bad = torch.zeros(1, 30, 20, dtype=torch.bool)
    bad[0, :5] = True
    # logit a on the labelled class, 0 elsewhere: CE = log(10 + e^a) - a: ~0.3 at a = 3.35, ~4 at a = -1.68,
    # ~2.5 at a = -0.11
    a = torch.full((1, 30, 20), 3.35)
    a = torch.where(bad, torch.tensor(-1.68), a)
    a = torch.where(labels == 7, torch.tensor(-0.11), a) + 0.1 * torch.randn(1, 30, 20, generator=g)
    logits = torch.zeros(1, 11, 30, 20)
    logits.scatter_(1, labels[:, None], a[:, None])
    logits[:, 0] = torch.where(labels[0] == 0, torch.tensor(5.0), logits[0, 0])
    dropped = {}
    for per_class in ("False", "True"):
        cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.DUAL", "False", "METHOD.DUPL.GMM_MIN_PIXELS", "10",
                        "METHOD.DUPL.GMM_PER_CLASS", per_class)
        method = build_method(cfg, build_model(cfg))
        out = method.filter_noise(logits, labels.clone())
        assert torch.equal(out[labels == 0], labels[labels == 0])  # background never dropped
        dropped[per_class] = out == 255
    hard = labels == 7
    # per image: the hard class sits in the high-loss component with the mislabelled pixels and is dropped
    assert dropped["False"][hard].float().mean() > 0.99
    # per class: the hard class is one cluster (mean gap < eta), kept; the easy class loses its bad pixels only
    assert not dropped["True"][hard].any()
    assert (dropped["True"][labels == 4] == bad[labels == 4]).float().mean() > 0.99


def test_the_method_refines_each_images_labelled_classes_then_renormalises(tmp_path):
    """The method refines only the labelled classes of each image, both students in one call; on those classes
    the result is what refining every class at half size gives (computed here without the method), then, with
    ``REFINE_NORMALIZE``, max-min normalised again."""
    import torch.nn.functional as F
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method
    from fmwiss_d2.modeling.losses.dupl import refine_with_image

    cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.REFINE_ITERS", "3", "METHOD.DUPL.REFINE_DILATIONS", "[1, 2, 4]")
    method = build_method(cfg, build_model(cfg))
    g = torch.Generator().manual_seed(0)
    cams = [torch.rand(3, 10, 16, 16, generator=g) for _ in range(2)]
    labels = torch.zeros(3, 10)
    labels[0, [0, 2, 7]] = 1
    labels[1, 9] = 1  # image 2 has no label: nothing of it is labelled foreground anyway
    images = torch.rand(3, 3, 16, 16, generator=g)
    small = F.interpolate(images, size=[8, 8], mode="bilinear", align_corners=False)
    labelled = labels[:, :, None, None].expand(-1, -1, 16, 16) > 0
    for normalize in (False, True):
        method.refine_normalize = normalize
        for cam, got in zip(cams, method.refine(cams, labels, images)):
            half = F.interpolate(cam, size=[8, 8], mode="bilinear", align_corners=False)
            want = F.interpolate(refine_with_image(half, small, 3, (1, 2, 4)), size=[16, 16], mode="bilinear",
                                 align_corners=False)
            if normalize:
                lo, hi = want.amin((2, 3), keepdim=True), want.amax((2, 3), keepdim=True)
                want = (want - lo) / (hi - lo + 1e-5)
            assert torch.allclose(got[labelled], want[labelled], atol=1e-5)
            assert not got[~labelled].any()
    assert method.refine(cams, torch.zeros(3, 10), images) is cams


def test_image_scores_pool_the_feature_by_max_or_by_mean_before_the_cam_head(tmp_path):
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method
    from fmwiss_d2.methods.base import MethodConfigError

    cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.DUAL", "False")
    method = build_method(cfg, build_model(cfg))
    head = method.cam_heads[0]
    c = head.in_channels
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0] = 2.0  # class 1 reads channel 0
        head.weight[1, 1] = -1.0  # class 2 reads channel 1, negatively
    feature = torch.zeros(1, c, 2, 2)
    feature[0, 0] = torch.tensor([[0.0, 4.0], [0.0, 0.0]])  # a small object: one strong cell
    feature[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    outputs = {"backbone_features": feature}
    method.pooling = "max"
    scores = method.image_scores(0, outputs)
    assert scores.shape == (1, head.out_channels)
    assert scores[0, :2].tolist() == [8.0, -6.0]  # 2 * max(0, 4, 0, 0); -1 * max(1, 2, 3, 6)
    assert scores[0, 2:].abs().max() == 0
    method.pooling = "avg"
    assert method.image_scores(0, outputs)[0, :2].tolist() == [2.0, -3.0]  # 2 * 4/4; -1 * 12/4
    # "avg" is the mean of the CAM itself
    assert torch.allclose(method.image_scores(0, outputs), method.cams(0, outputs).mean((2, 3)))
    with pytest.raises(MethodConfigError, match="POOLING"):
        build_method(_dupl_cfg(tmp_path, "METHOD.DUPL.POOLING", "sum"), build_model(cfg))


def test_pseudo_label_cams_sum_scales_and_flips_without_touching_the_norm_statistics(tmp_path):
    from detectron2.modeling import build_model

    from fmwiss_d2.methods import build_method

    cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.DUAL", "False", "METHOD.DUPL.CAM_SCALES", "[1.0, 0.5, 1.5]",
                    "METHOD.DUPL.CAM_FLIP", "True")
    method = build_method(cfg, build_model(cfg)).train()
    student = method.model
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def cam(x):  # the student's CAM logits of a batch, upsampled to 64x64, by hand
        f = student.backbone(x)[student.in_feature]
        return F.interpolate(method.cam_heads[0](f), size=(64, 64), mode="bilinear", align_corners=False)

    with torch.no_grad():
        trained_pass = method.cams(0, student.forward_outputs(images))
        expected = 0
        for scale in (1.0, 0.5, 1.5):
            x = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            plain = cam(x) if scale != 1.0 else F.interpolate(trained_pass, size=(64, 64), mode="bilinear",
                                                               align_corners=False)
            expected = expected + torch.maximum(plain, cam(x.flip(-1)).flip(-1)).clamp(min=0)
    norms = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    got = method.view_cams(0, trained_pass, images)
    assert not got.requires_grad
    assert torch.allclose(got, expected, atol=1e-5)
    for m, (mean, var) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert m.momentum == 0.1  # restored
    # one scale without flip: the trained pass's CAM, upsampled, no other pass
    method.cam_scales, method.cam_flip = (1.0,), False
    student.backbone.forward = None  # any extra pass would fail
    single = method.view_cams(0, trained_pass, images)
    assert torch.equal(single, F.interpolate(trained_pass, size=(64, 64), mode="bilinear",
                                             align_corners=False).clamp(min=0))


def test_the_consistency_pass_leaves_the_norm_statistics_to_the_plain_view(tmp_path):
    """Inference normalises with the running batch-norm averages, and the strong view (warped, jittered) is not
    what it sees: after a late step (consistency on), each student's running averages are those one plain forward
    pass gives (computed here on copies), while the consistency loss still trains the student."""
    import copy

    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from fmwiss_d2.methods import build_method

    cfg = _dupl_cfg(tmp_path, "METHOD.DUPL.NOISE_FILTER", "False")
    method = build_method(cfg, build_model(cfg)).train()
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.rand(3, 64, 64, generator=g) * 255, "image_labels": [1, 3], "height": 64, "width": 64}
              for _ in range(2)]

    def norms(module):
        return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    copies = [copy.deepcopy(s) for s in method.students]
    with torch.no_grad():
        for c in copies:
            c.forward_outputs(c.preprocess_images(inputs).tensor)
    with EventStorage(start_iter=3):  # past GMM_START_ITER (2): the strong view is used
        losses = method.losses(inputs)
    assert float(losses["loss_consistency"]) > 0
    for s, c in zip(method.students, copies):
        assert norms(s)
        for m, ref in zip(norms(s), norms(c)):
            assert torch.allclose(m.running_mean, ref.running_mean) and torch.allclose(m.running_var, ref.running_var)
            assert m.momentum == ref.momentum  # restored
    losses["loss_consistency"].backward()
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters()) for s in method.students)
