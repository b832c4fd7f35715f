"""Forward/backward and inference of the DeepLabV3 meta-architecture on tiny inputs."""
import torch
from torch.nn import functional as F

from detectron2.modeling import build_model

import fmwiss_d2.modeling  # noqa: F401
from _model_cfg import tiny_cfg


def test_forward_backward_output_stride_and_loss():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("shapes/deeplabv3_semantic.yaml"))
    model.train()
    sem = torch.randint(0, 11, (64, 64))
    sem[:4] = 255
    batch = [{"image": torch.randint(0, 256, (3, 64, 64)).to(torch.uint8), "sem_seg": sem} for _ in range(2)]
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"}
    losses["loss_sem_seg"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        images = model.preprocess_images(batch)
        out = model.forward_outputs(images.tensor)
        assert out["features"].shape[-2:] == (4, 4)  # output stride 16
        assert out["pred_logits"].shape == (2, 11, 64, 64)
        # the loss is the mean cross-entropy over non-ignored pixels, written out
        logp = F.log_softmax(out["pred_logits"], 1)
        valid = sem != 255
        target = sem.clamp(max=10)
        nll = -logp.gather(1, target[None].expand(2, -1, -1)[:, None])[:, 0]
        expected = nll[:, valid].mean()
        got = model.losses(out, model.prepare_targets(batch, images))["loss_sem_seg"]
        assert torch.allclose(got, expected, atol=1e-5)
        (res, _) = model(batch)
        assert res["sem_seg"].shape == (11, 64, 64)


def test_per_pixel_classifier_expands():
    model = build_model(tiny_cfg("shapes/deeplabv3_semantic.yaml")).eval()
    x = torch.randint(0, 256, (1, 3, 32, 32)).float()
    with torch.no_grad():
        before = model.forward_outputs(x)["pred_logits"]
        model.classifier.expand(3)
        after = model.forward_outputs(x)["pred_logits"]
    assert after.shape[1] == 14 and torch.equal(after[:, :11], before)
