"""Forward/backward and inference of the MaskFormer meta-architecture on tiny inputs."""
import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances

import fmwiss_d2.modeling  # noqa: F401
from _model_cfg import tiny_cfg


def _inputs(n=2, size=64, num_classes=11):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        sem = torch.randint(0, 3, (size // 8, size // 8), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
        classes = torch.unique(sem)
        inst = Instances((size, size))
        inst.gt_classes = classes
        inst.gt_masks = sem[None] == classes[:, None, None]
        batch.append({"image": torch.randint(0, 256, (3, size, size), generator=g).to(torch.uint8),
                      "height": size, "width": size, "instances": inst, "sem_seg": sem})
    return batch


def test_forward_backward_and_raw_outputs():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.train()
    batch = _inputs()
    losses = model(batch)
    layers = cfg.MODEL.MASK_FORMER.DEC_LAYERS  # predictions: initial + each decoder layer
    assert len(losses) == 3 * layers
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []

    images = model.preprocess_images(batch)
    out = model.forward_outputs(images.tensor)
    q, k = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert out["pred_logits"].shape == (2, q, k + 1)
    assert out["pred_masks"].shape == (2, q, 16, 16)  # stride 4
    assert len(out["aux_outputs"]) == layers - 1
    weighted = model.losses(out, model.prepare_targets(batch, images))
    assert set(weighted) == set(losses)


def test_inference_outputs():
    torch.manual_seed(0)
    cfg = tiny_cfg("shapes/mask2former_panoptic.yaml", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True")
    model = build_model(cfg).eval()
    batch = [{"image": torch.randint(0, 256, (3, 60, 64)).to(torch.uint8), "height": 30, "width": 32}]
    with torch.no_grad():
        (res,) = model(batch)
    assert res["sem_seg"].shape == (14, 30, 32)
    seg, info = res["panoptic_seg"]
    assert seg.shape == (30, 32)
    assert res["instances"].pred_masks.shape[-2:] == (30, 32)


def test_classifier_expansion_through_the_model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    images = model.preprocess_images(_inputs(1))
    with torch.no_grad():
        before = model.forward_outputs(images.tensor)["pred_logits"]
        model.classifier.expand(2)
        after = model.forward_outputs(images.tensor)["pred_logits"]
    assert after.shape[-1] == before.shape[-1] + 2
    assert torch.equal(after[..., :11], before[..., :11]) and torch.equal(after[..., -1], before[..., -1])


def test_per_pixel_logits_are_the_normalised_semantic_scores():
    """sigmoid(per_pixel_logits) = S_k / sum_j S_j with S Mask2Former's semantic inference (per image, from
    postprocessing.semantic_inference); finite with a gradient where two queries of one class overlap (S > 1)."""
    from fmwiss_d2.modeling.meta_arch import MaskFormer
    from fmwiss_d2.modeling.postprocessing import semantic_inference

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, generator=g) * 3  # 2 images, 5 queries, 3 classes + no-object
    masks = torch.randn(2, 5, 6, 7, generator=g) * 4
    logits[0, :2] = torch.tensor([0.0, 20.0, 0.0, 0.0])  # two confident queries of class 1 ...
    masks[0, :2] = 20.0  # ... whose masks both cover every pixel: S_1 close to 2
    logits.requires_grad_(True)
    outputs = {"pred_logits": logits, "pred_masks": masks}
    class Model:  # the scores of the outputs above, without building a model
        per_pixel_scores = staticmethod(lambda o: MaskFormer.per_pixel_scores(None, o))

    z = MaskFormer.per_pixel_logits(Model(), outputs)
    s = torch.stack([semantic_inference(logits[b].detach(), masks[b]) for b in range(2)])
    assert s[0, 1].min() > 1.9
    assert torch.allclose(z.sigmoid(), s / s.sum(1, keepdim=True), atol=1e-5)
    assert torch.equal(z.argmax(1), s.argmax(1))
    z.sum().backward()
    assert torch.isfinite(z).all() and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
