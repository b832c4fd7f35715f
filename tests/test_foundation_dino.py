"""DINO wrapper: public DINO checkpoint layouts (plain backbone, full student/teacher checkpoint with prefixes
and head keys), last-layer CLS attention against an independent computation, any input size, clear errors."""
import json

import pytest
import torch
import torch.nn.functional as F

from fmwiss_d2.modeling.foundation.checkpoint import CheckpointMismatchError
from fmwiss_d2.modeling.foundation.dino import build_dino

D, DEPTH, HEADS, PATCH, IMG = 32, 2, 2, 8, 32
ARCH = {"img_size": IMG, "patch_size": PATCH, "embed_dim": D, "depth": DEPTH, "num_heads": HEADS, "mlp_ratio": 4.0,
        "qkv_bias": True}


def public_dino_backbone(seed: int = 0, grid: int = IMG // PATCH) -> dict:
    """Key names and shapes of DINO's released ViT backbones (``dino_vitbase8_pretrain.pth``)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, 1 + grid * grid, D),
          "patch_embed.proj.weight": r(D, 3, PATCH, PATCH), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(DEPTH):
        p = f"blocks.{i}"
        sd.update({f"{p}.norm1.weight": 1 + r(D), f"{p}.norm1.bias": r(D),
                   f"{p}.attn.qkv.weight": r(3 * D, D), f"{p}.attn.qkv.bias": r(3 * D),
                   f"{p}.attn.proj.weight": r(D, D), f"{p}.attn.proj.bias": r(D),
                   f"{p}.norm2.weight": 1 + r(D), f"{p}.norm2.bias": r(D),
                   f"{p}.mlp.fc1.weight": r(4 * D, D), f"{p}.mlp.fc1.bias": r(4 * D),
                   f"{p}.mlp.fc2.weight": r(D, 4 * D), f"{p}.mlp.fc2.bias": r(D)})
    return sd


def _head(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"head.mlp.0.weight": torch.randn(64, D, generator=g), "head.mlp.0.bias": torch.zeros(64),
            "head.mlp.2.weight": torch.randn(16, 64, generator=g), "head.last_layer.weight_g": torch.ones(100, 1),
            "head.last_layer.weight_v": torch.randn(100, 16, generator=g)}


@pytest.fixture(scope="module")
def arch_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinocfg") / "dino_micro_test.json"
    path.write_text(json.dumps(ARCH))
    return str(path)


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """DINO's ``*_full_checkpoint.pth`` layout: DDP student (``module.backbone.``), bare teacher (``backbone.``)."""
    student, teacher = public_dino_backbone(1), public_dino_backbone(2)
    ckpt = {
        "student": {**{"module.backbone." + k: v for k, v in student.items()},
                    **{"module." + k: v for k, v in _head(3).items()}},
        "teacher": {**{"backbone." + k: v for k, v in teacher.items()}, **_head(4)},
        "optimizer": {}, "epoch": 100, "dino_loss": {"center": torch.zeros(1, 100)},
    }
    path = str(tmp_path_factory.mktemp("dinockpt") / "dino_full_checkpoint.pth")
    torch.save(ckpt, path)
    return path, student, teacher


def _assert_loaded(dino, expected):
    own = dino.vit.state_dict()
    assert set(own) == set(expected), "hand-written DINO key set differs from timm's"
    for k, v in expected.items():
        assert torch.equal(own[k], v), k


def test_full_checkpoint_teacher_and_student(arch_json, full_checkpoint):
    path, student, teacher = full_checkpoint
    _assert_loaded(build_dino(arch_json, path), teacher)  # DINO evaluates the teacher: the default
    _assert_loaded(build_dino(arch_json, path, checkpoint_key="student"), student)


def test_plain_backbone_checkpoint(arch_json, tmp_path):
    sd = public_dino_backbone(5)
    path = str(tmp_path / "dino_vitmicro8_pretrain.pth")
    torch.save(sd, path)
    _assert_loaded(build_dino(arch_json, path), sd)


def test_pos_embed_of_another_resolution_is_resampled(arch_json, tmp_path):
    sd = public_dino_backbone(6, grid=28)  # made at 224 px like the public ones
    path = str(tmp_path / "at224.pth")
    torch.save(sd, path)
    dino = build_dino(arch_json, path)
    assert dino.vit.pos_embed.shape == (1, 1 + 16, D)
    assert torch.equal(dino.vit.pos_embed[0, 0], sd["pos_embed"][0, 0])


def test_missing_checkpoint_names_file(arch_json, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_dino_here.pth"):
        build_dino(arch_json, str(tmp_path / "no_dino_here.pth"))


def test_mismatched_checkpoint_names_file_and_architecture(arch_json, tmp_path):
    sd = public_dino_backbone()
    sd["blocks.1.attn.qkv.weight"] = torch.zeros(3 * 48, D)
    sd["blocks.2.norm1.weight"] = torch.zeros(D)  # a deeper network
    path = str(tmp_path / "vit_other.pth")
    torch.save({"teacher": sd}, path)
    with pytest.raises(CheckpointMismatchError) as e:
        build_dino(arch_json, path)
    msg = str(e.value)
    assert "vit_other.pth" in msg and "dino_micro_test" in msg and f"embed_dim={D}" in msg and f"depth={DEPTH}" in msg
    assert "blocks.1.attn.qkv.weight" in msg and "(144, 32)" in msg and "blocks.2.norm1.weight" in msg


def test_outputs_any_size(arch_json, full_checkpoint):
    dino = build_dino(arch_json, full_checkpoint[0])
    out = dino(torch.rand(2, 3, 40, 72) * 255)
    assert out["attentions"].shape == (2, HEADS, 5, 9)
    assert out["keys"].shape == (2, D, 5, 9) and out["features"].shape == (2, D, 5, 9) and out["cls"].shape == (2, D)
    total = out["attentions"].sum((2, 3))
    assert torch.all(total > 0) and torch.all(total < 1)  # the rest goes to the CLS token itself
    assert dino(torch.rand(1, 3, 33, 17) * 255)["attentions"].shape == (1, HEADS, 5, 3)


def test_attention_matches_manual_computation(arch_json, full_checkpoint):
    path, _, sd = full_checkpoint
    dino = build_dino(arch_json, path)
    images = torch.rand(2, 3, IMG, IMG) * 255
    captured = {}
    handle = dino.vit.blocks[-1].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        final = dino.vit.forward_features(dino.normalize(images))  # timm's own forward at the native size
    handle.remove()
    x = captured["x"]
    p = f"blocks.{DEPTH - 1}"
    y = F.layer_norm(x, (D,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], eps=1e-6)
    qkv = y @ sd[f"{p}.attn.qkv.weight"].T + sd[f"{p}.attn.qkv.bias"]
    q, k, _ = qkv.split(D, dim=-1)
    hd = D // HEADS
    q = q.view(2, -1, HEADS, hd).transpose(1, 2)
    k = k.view(2, -1, HEADS, hd).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)
    grid = IMG // PATCH
    out = dino(images)
    torch.testing.assert_close(out["attentions"], attn[:, :, 0, 1:].reshape(2, HEADS, grid, grid), atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(out["keys"], k[:, :, 1:].transpose(2, 3).reshape(2, D, grid, grid), atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(out["features"], final[:, 1:].transpose(1, 2).reshape(2, D, grid, grid), atol=1e-5,
                               rtol=1e-4)


def test_dino_named_architectures():
    dino = build_dino("vit_small", patch_size=8)  # DINO ViT-S/8 shape, random weights
    assert dino.patch_size == (8, 8) and dino.num_heads == 6
    assert dino.vit.pos_embed.shape == (1, 1 + 28 * 28, 384)
    with pytest.raises(KeyError, match="unknown DINO architecture"):
        build_dino("vit_gigantic")
