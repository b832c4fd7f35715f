"""CLIP wrapper: public (OpenAI / open_clip) checkpoint layouts, dense maps (aspect, class-order invariance,
MaskCLIP value path against an independent computation), clear checkpoint errors. Tiny random models only."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from fmwiss_d2.modeling.foundation.checkpoint import CheckpointMismatchError
from fmwiss_d2.modeling.foundation.clip import build_clip

# A micro open_clip ViT config (same structure as ViT-B-16, tiny widths).
EMBED, VW, VLAYERS, PATCH, IMG = 16, 32, 2, 8, 32
TW, TLAYERS, CTX, VOCAB = 32, 1, 16, 49408
CONFIG = {
    "embed_dim": EMBED,
    "vision_cfg": {"image_size": IMG, "layers": VLAYERS, "width": VW, "head_width": 16, "patch_size": PATCH},
    "text_cfg": {"context_length": CTX, "vocab_size": VOCAB, "width": TW, "heads": 2, "layers": TLAYERS},
}
CLASSES = ["disc", "square", "triangle", "star"]


def _block_keys(prefix: str, width: int, g: torch.Generator) -> dict:
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    return {
        f"{prefix}.ln_1.weight": 1 + r(width), f"{prefix}.ln_1.bias": r(width),
        f"{prefix}.attn.in_proj_weight": r(3 * width, width), f"{prefix}.attn.in_proj_bias": r(3 * width),
        f"{prefix}.attn.out_proj.weight": r(width, width), f"{prefix}.attn.out_proj.bias": r(width),
        f"{prefix}.ln_2.weight": 1 + r(width), f"{prefix}.ln_2.bias": r(width),
        f"{prefix}.mlp.c_fc.weight": r(4 * width, width), f"{prefix}.mlp.c_fc.bias": r(4 * width),
        f"{prefix}.mlp.c_proj.weight": r(width, 4 * width), f"{prefix}.mlp.c_proj.bias": r(width),
    }


def public_clip_state_dict(seed: int = 0, openai_extras: bool = True) -> dict:
    """The key names and shapes of OpenAI's CLIP ViT files (and open_clip's ``open_clip_pytorch_model.bin``)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    grid = IMG // PATCH
    sd = {
        "visual.class_embedding": r(VW), "visual.positional_embedding": r(1 + grid * grid, VW),
        "visual.proj": r(VW, EMBED), "visual.conv1.weight": r(VW, 3, PATCH, PATCH),
        "visual.ln_pre.weight": 1 + r(VW), "visual.ln_pre.bias": r(VW),
        "visual.ln_post.weight": 1 + r(VW), "visual.ln_post.bias": r(VW),
        "positional_embedding": r(CTX, TW), "text_projection": r(TW, EMBED), "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": r(VOCAB, TW), "ln_final.weight": 1 + r(TW), "ln_final.bias": r(TW),
    }
    for i in range(VLAYERS):
        sd.update(_block_keys(f"visual.transformer.resblocks.{i}", VW, g))
    for i in range(TLAYERS):
        sd.update(_block_keys(f"transformer.resblocks.{i}", TW, g))
    if openai_extras:  # hyper-parameters stored next to the weights in OpenAI's files
        sd.update({"input_resolution": torch.tensor(IMG), "context_length": torch.tensor(CTX),
                   "vocab_size": torch.tensor(VOCAB)})
    return sd


@pytest.fixture(scope="module")
def config_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("clipcfg") / "MicroCLIP-Test.json"
    path.write_text(json.dumps(CONFIG))
    return str(path)


@pytest.fixture(scope="module")
def loaded(config_json, tmp_path_factory):
    sd = public_clip_state_dict()
    path = str(tmp_path_factory.mktemp("clipckpt") / "openai_style.pt")
    torch.save(sd, path)
    return build_clip(config_json, path), sd


def test_public_state_dict_loads_exactly(loaded):
    clip, sd = loaded
    own = clip.model.state_dict()
    weights = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    assert set(own) == set(weights), "hand-written public key set differs from open_clip's"
    for k, v in weights.items():
        assert torch.equal(own[k], v.reshape(own[k].shape)), k


def test_open_clip_training_checkpoint_format(config_json, tmp_path):
    """open_clip's training script saves {"epoch", "name", "state_dict"} with DDP's "module." prefix."""
    sd = public_clip_state_dict(seed=1, openai_extras=False)
    path = str(tmp_path / "epoch_5.pt")
    torch.save({"epoch": 5, "name": "x", "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    own = build_clip(config_json, path).model.state_dict()
    assert all(torch.equal(own[k], v.reshape(own[k].shape)) for k, v in sd.items())


def test_missing_checkpoint_names_file(config_json, tmp_path):
    missing = str(tmp_path / "nowhere" / "clip.pt")
    with pytest.raises(FileNotFoundError, match="nowhere/clip.pt"):
        build_clip(config_json, missing)


def test_mismatched_checkpoint_names_file_and_architecture(config_json, tmp_path):
    sd = public_clip_state_dict()
    sd["visual.proj"] = torch.zeros(VW, EMBED * 2)  # a wider joint space: another architecture
    del sd["ln_final.bias"]
    path = str(tmp_path / "wrong_arch.pt")
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as e:
        build_clip(config_json, path)
    msg = str(e.value)
    assert "wrong_arch.pt" in msg and "MicroCLIP-Test" in msg
    assert "visual.proj" in msg and "(32, 32)" in msg and "(32, 16)" in msg and "ln_final.bias" in msg


def test_dense_maps_keep_input_aspect(loaded):
    clip, _ = loaded
    images = torch.rand(2, 3, 40, 72) * 255
    full = clip.dense_logits(images, CLASSES)
    grid = clip.dense_logits(images, CLASSES, output_size=None)
    assert full.shape == (2, len(CLASSES), 40, 72)
    assert grid.shape == (2, len(CLASSES), 5, 9)
    odd = clip.dense_logits(torch.rand(1, 3, 37, 70) * 255, CLASSES, output_size=None)
    assert odd.shape == (1, len(CLASSES), 5, 9)  # rounded up to whole patches
    assert full.abs().max() <= 1 + 1e-5  # cosine similarities


def test_dense_maps_follow_class_order(loaded):
    clip, _ = loaded
    images = torch.rand(2, 3, 48, 32) * 255
    perm = [2, 0, 3, 1]
    a = clip.dense_logits(images, CLASSES)
    b = clip.dense_logits(images, [CLASSES[i] for i in perm])
    torch.testing.assert_close(b, a[:, perm], atol=1e-5, rtol=1e-5)
    t = clip.text_embeddings(CLASSES)
    assert clip.text_embeddings(CLASSES) is t  # cached per class list
    torch.testing.assert_close(clip.text_embeddings([CLASSES[i] for i in perm]), t[perm], atol=1e-6, rtol=1e-5)


def _last_block_input(clip, x):
    """Tokens entering the last residual block, from open_clip's own forward (a hook; native input size)."""
    captured = {}
    blk = clip.model.visual.transformer.resblocks[-1]
    handle = blk.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        global_emb = clip.model.encode_image(x)
    handle.remove()
    return captured["x"], global_emb


def test_maskclip_value_path_matches_manual_computation(loaded):
    clip, sd = loaded
    images = torch.rand(2, 3, IMG, IMG) * 255
    x, global_emb = _last_block_input(clip, clip.normalize(images))
    p = f"visual.transformer.resblocks.{VLAYERS - 1}"
    tokens = x[:, 1:]
    y = F.layer_norm(tokens, (VW,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"])
    v = y @ sd[f"{p}.attn.in_proj_weight"][2 * VW:].T + sd[f"{p}.attn.in_proj_bias"][2 * VW:]
    o = v @ sd[f"{p}.attn.out_proj.weight"].T + sd[f"{p}.attn.out_proj.bias"]
    o = F.layer_norm(o, (VW,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    expected = F.normalize(o, dim=-1).transpose(1, 2).reshape(2, EMBED, IMG // PATCH, IMG // PATCH)
    torch.testing.assert_close(clip.dense_embeddings(images), expected, atol=1e-5, rtol=1e-4)

    # the same value path seen another way: the block's own attention with each token attending only to itself
    blk = clip.model.visual.transformer.resblocks[-1]
    n = x.shape[1]
    self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0)
    with torch.no_grad():
        o2 = blk.attention(blk.ln_1(x), attn_mask=self_only)[:, 1:]
        o2 = clip.model.visual.ln_post(o2) @ clip.model.visual.proj
    torch.testing.assert_close(clip.dense_embeddings(images).flatten(2).transpose(1, 2), F.normalize(o2, dim=-1),
                               atol=1e-5, rtol=1e-4)
    # and the global embedding of the wrapper is open_clip's at the native size
    torch.testing.assert_close(clip.encode_image(images), F.normalize(global_emb, dim=-1), atol=1e-5, rtol=1e-4)


def test_positional_embedding_interpolation(loaded):
    clip, sd = loaded
    pos = clip._positional_embedding((IMG // PATCH, IMG // PATCH))
    assert torch.equal(pos, sd["visual.positional_embedding"])
    pos2 = clip._positional_embedding((8, 2))
    assert pos2.shape == (1 + 16, VW) and torch.equal(pos2[0], pos[0])
    assert clip.encode_image(torch.rand(1, 3, 64, 16) * 255).shape == (1, EMBED)


def test_prompt_templates_validated(config_json):
    with pytest.raises(ValueError, match="placeholder"):
        build_clip(config_json, "", templates=("a picture without a slot",))


def test_unknown_model_and_tag(config_json):
    with pytest.raises(KeyError, match="unknown open_clip model"):
        build_clip("NoSuchModel-XYZ")
    with pytest.raises(FileNotFoundError, match="neither a file nor a pretrained tag"):
        build_clip(config_json, "laion_made_up_tag")


def test_shapes_tiny_config_builds():
    clip = build_clip("ShapesCLIP-Tiny")  # the project's registered config, random weights
    assert clip.dense_logits(torch.rand(1, 3, 64, 96) * 255, CLASSES, output_size=None).shape == (1, 4, 8, 12)
    assert os.path.isfile(os.path.join(os.path.dirname(__import__(
        "fmwiss_d2.modeling.foundation.clip", fromlist=["x"]).__file__), "model_configs", "ShapesCLIP-Tiny.json"))
