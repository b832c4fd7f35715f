"""Pretraining tools: a few iterations on the tiny world give cached, loadable checkpoints in the public formats,
and configs with "auto:shapes" checkpoints trigger them."""
import importlib.util
import os
import re
from dataclasses import asdict

import pytest
import torch

from fmwiss_d2.modeling.foundation.pretrain_clip import CLIPPretrainConfig, ensure_tiny_clip
from fmwiss_d2.modeling.foundation.pretrain_dino import DINOPretrainConfig, dino_loss, ensure_tiny_dino

ROOT = os.path.join(os.path.dirname(__file__), "..")
CLIP_CFG = CLIPPretrainConfig(steps=2, batch_size=8, warmup=1)
DINO_CFG = DINOPretrainConfig(steps=2, batch_size=4, local_crops=2, warmup=1, out_dim=64)


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def clip_ckpt(tiny_world):
    spec, cache, _ = tiny_world
    return ensure_tiny_clip(spec, cache, config=CLIP_CFG, progress=False)


@pytest.fixture(scope="module")
def dino_ckpt(tiny_world):
    spec, cache, _ = tiny_world
    return ensure_tiny_dino(spec, cache, config=DINO_CFG, progress=False)


def test_clip_checkpoint_is_cached_and_loadable(tiny_world, clip_ckpt):
    import open_clip

    from fmwiss_d2.modeling.foundation.clip import build_clip

    spec, cache, _ = tiny_world
    mtime = os.path.getmtime(clip_ckpt)
    assert ensure_tiny_clip(spec, cache, config=CLIP_CFG) == clip_ckpt and os.path.getmtime(clip_ckpt) == mtime
    raw = torch.load(clip_ckpt, map_location="cpu", weights_only=True)
    assert raw["name"] == "ShapesCLIP-Tiny" and "visual.transformer.resblocks.0.attn.in_proj_weight" in raw["state_dict"]
    clip = build_clip("ShapesCLIP-Tiny", clip_ckpt)
    assert torch.equal(clip.model.state_dict()["visual.proj"], raw["state_dict"]["visual.proj"])
    # open_clip's own loader reads the same file
    ref = open_clip.create_model("ShapesCLIP-Tiny", pretrained=clip_ckpt)
    assert torch.equal(ref.state_dict()["text_projection"], raw["state_dict"]["text_projection"])
    # another training config is another cache entry
    from fmwiss_d2.modeling.foundation.pretrain_clip import clip_checkpoint_path

    assert clip_checkpoint_path(spec, cache, "ShapesCLIP-Tiny", CLIPPretrainConfig(steps=3)) != clip_ckpt


def test_dino_checkpoint_has_public_layout(dino_ckpt):
    from fmwiss_d2.modeling.foundation.dino import build_dino

    raw = torch.load(dino_ckpt, map_location="cpu", weights_only=True)
    assert "module.backbone.cls_token" in raw["student"] and "module.head.last_layer.weight_g" in raw["student"]
    assert "backbone.blocks.0.attn.qkv.weight" in raw["teacher"] and "head.mlp.0.weight" in raw["teacher"]
    teacher = build_dino("dino_shapes_tiny", dino_ckpt)
    student = build_dino("dino_shapes_tiny", dino_ckpt, checkpoint_key="student")
    assert torch.equal(teacher.vit.pos_embed, raw["teacher"]["backbone.pos_embed"])
    assert torch.equal(student.vit.pos_embed, raw["student"]["module.backbone.pos_embed"])
    out = teacher(torch.rand(1, 3, 64, 96) * 255)
    assert out["attentions"].shape[-2:] == (8, 12)


def test_cli_tools_print_cached_paths(tiny_world, clip_ckpt, dino_ckpt, capsys):
    spec, cache, _ = tiny_world
    world = ["--world-seed", str(spec.seed), "--num-train", str(spec.num_train), "--num-val", str(spec.num_val),
             "--image-size", str(spec.image_size), "--cache-dir", cache]
    clip_path = _tool("pretrain_clip").main(world + ["--steps", "1", "--batch-size", "8"])
    dino_path = _tool("pretrain_dino").main(world + ["--steps", "1", "--batch-size", "4", "--eval"])
    out = capsys.readouterr().out
    assert clip_path in out and dino_path in out and "foreground_iou" in out
    assert os.path.isfile(clip_path) and os.path.isfile(dino_path)


def _auto_cfg(spec, cache):
    """A config on the tiny world whose CLIP and DINO checkpoints are "auto:shapes" with 1-step pretraining."""
    from detectron2.config import get_cfg

    from fmwiss_d2.config import add_fmwiss_config

    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.SHAPES.merge_from_list(["CACHE_DIR", cache, "SEED", spec.seed, "NUM_TRAIN", spec.num_train,
                                "NUM_VAL", spec.num_val, "IMAGE_SIZE", spec.image_size])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.PRETRAIN.merge_from_list(["STEPS", 1, "BATCH_SIZE", 8])
    cfg.MODEL.DINO.PRETRAIN.merge_from_list(["STEPS", 1, "BATCH_SIZE", 4])
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("tiny_shapes_sem_seg_train",), ("tiny_shapes_sem_seg_test",)
    assert cfg.MODEL.CLIP.CHECKPOINT == cfg.MODEL.DINO.CHECKPOINT == "auto:shapes"
    return cfg


def test_config_auto_checkpoint_triggers_pretraining(tiny_world, tmp_path):
    """In an empty cache of its own (another test's checkpoints must not satisfy it), building from a config with
    "auto:shapes" checkpoints pretrains exactly the two files that config's keys name, and loads them."""
    from fmwiss_d2.modeling.foundation import build_clip_from_cfg, build_dino_from_cfg
    from fmwiss_d2.modeling.foundation import pretrain_clip, pretrain_dino

    spec = tiny_world[0]
    cache = str(tmp_path / "cache")
    cfg = _auto_cfg(spec, cache)
    _, _, clip_train = pretrain_clip.pretrain_config_from_cfg(cfg)
    _, _, dino_train = pretrain_dino.pretrain_config_from_cfg(cfg)
    assert (clip_train.steps, dino_train.steps) == (1, 1)
    expected = {
        "clip": pretrain_clip.clip_checkpoint_path(spec, cache, cfg.MODEL.CLIP.MODEL_NAME, clip_train),
        "dino": pretrain_dino.dino_checkpoint_path(spec, cache, cfg.MODEL.DINO.ARCH, cfg.MODEL.DINO.PATCH_SIZE,
                                                   dino_train),
    }
    assert not os.path.exists(os.path.join(cache, "foundation"))
    clip = build_clip_from_cfg(cfg)
    dino = build_dino_from_cfg(cfg)
    found = sorted(os.path.join(cache, "foundation", f) for f in os.listdir(os.path.join(cache, "foundation"))
                   if f.endswith(".pt"))
    assert found == sorted(expected.values())
    raw = torch.load(expected["clip"], map_location="cpu", weights_only=True)
    assert torch.equal(clip.model.state_dict()["visual.proj"], raw["state_dict"]["visual.proj"])
    raw = torch.load(expected["dino"], map_location="cpu", weights_only=True)
    assert torch.equal(dino.vit.pos_embed, raw["teacher"]["backbone.pos_embed"])


@pytest.mark.parametrize("node, key", [("CLIP", "MODEL.CLIP.CHECKPOINT"), ("DINO", "MODEL.DINO.CHECKPOINT")])
def test_auto_checkpoint_is_refused_for_other_datasets(tiny_world, tmp_path, node, key):
    """"auto:shapes" is for the synthetic world only: a config on real data fails before any pretraining, naming
    the key to set."""
    from fmwiss_d2.modeling.foundation import build_clip_from_cfg, build_dino_from_cfg

    spec = tiny_world[0]
    cache = str(tmp_path / "cache")
    cfg = _auto_cfg(spec, cache)
    cfg.DATASETS.TEST = ("tiny_shapes_sem_seg_val", "voc_2012_sem_seg_val")
    build = {"CLIP": build_clip_from_cfg, "DINO": build_dino_from_cfg}[node]
    with pytest.raises(ValueError, match=r"\['voc_2012_sem_seg_val'\] are not the synthetic world's\. "
                                         rf"Set {re.escape(key)} to a local (open_clip|DINO) checkpoint"):
        build(cfg)
    assert not os.path.exists(cache)  # refused before generating or pretraining anything


def test_auto_checkpoint_accepts_the_world_under_any_name(tiny_world, tmp_path):
    """The synthetic world registered under another prefix, and an incremental step on it, are the world's."""
    from fmwiss_d2.data.datasets.shapes import register_shapes
    from fmwiss_d2.data.datasets.tasks import register_incremental_task
    from fmwiss_d2.modeling.foundation.checkpoint import require_synthetic_world

    spec = tiny_world[0]
    cfg = _auto_cfg(spec, str(tmp_path))
    register_shapes("guard_world", spec, tiny_world[1])
    task = register_incremental_task("guard_task", {"train": "guard_world_sem_seg_train", "val": "guard_world_sem_seg_val",
                                                    "steps": [list(range(0, 6)), list(range(6, 11))]})
    cfg.DATASETS.TRAIN = (task.dataset_name("overlap", 1, "train"),)
    cfg.DATASETS.TEST = ("guard_world_sem_seg_test",)
    require_synthetic_world(cfg, "MODEL.CLIP.CHECKPOINT", "checkpoint")  # accepted: no exception
    cfg.DATASETS.TEST = ("guard_world_sem_seg_test", "voc_2012_sem_seg_val")
    with pytest.raises(ValueError, match="voc_2012_sem_seg_val"):
        require_synthetic_world(cfg, "MODEL.CLIP.CHECKPOINT", "checkpoint")


def test_config_defaults_match_pretraining_defaults():
    """``auto:shapes`` from a config and from build_clip/build_dino must hit the same cache entry."""
    from detectron2.config import get_cfg

    from fmwiss_d2.config import add_fmwiss_config

    cfg = get_cfg()
    add_fmwiss_config(cfg)
    for node, default in ((cfg.MODEL.CLIP.PRETRAIN, CLIPPretrainConfig()), (cfg.MODEL.DINO.PRETRAIN, DINOPretrainConfig())):
        d = asdict(default)
        assert (node.STEPS, node.BATCH_SIZE, node.LR, node.SEED) == (d["steps"], d["batch_size"], d["lr"], d["seed"])
    assert cfg.MODEL.DINO.PRETRAIN.CORPUS == DINOPretrainConfig().corpus


def test_dino_learns_from_the_object_centric_variant_of_the_world(tiny_world, dino_ckpt):
    """The checkpoint records its corpus: the world's generator with the object-centric layout, generated in the
    cache beside the world; ``corpus="world"`` is the world itself; an unknown corpus is refused by name."""
    from dataclasses import replace

    from fmwiss_d2.data.datasets.shapes import world_root
    from fmwiss_d2.modeling.foundation.pretrain_dino import pretraining_corpus

    spec, cache, _ = tiny_world
    meta = torch.load(dino_ckpt, map_location="cpu", weights_only=True)["fmwiss_meta"]
    corpus = pretraining_corpus(spec, DINO_CFG)
    assert meta["corpus"] == asdict(corpus) and meta["world"] == asdict(spec)
    assert (corpus.layout, corpus.min_objects, corpus.max_objects) == ("object_centric",) + DINO_CFG.corpus_objects
    assert (corpus.seed, corpus.image_size, corpus.num_train) == (spec.seed, spec.image_size, spec.num_train)
    assert os.path.isfile(os.path.join(world_root(corpus, cache), "world.json"))
    assert pretraining_corpus(spec, replace(DINO_CFG, corpus="world")) == spec
    with pytest.raises(ValueError, match="unknown DINO pretraining corpus 'imagenet'"):
        pretraining_corpus(spec, replace(DINO_CFG, corpus="imagenet"))


def test_dino_student_has_stochastic_depth_and_teacher_none(tiny_world):
    """Stochastic depth regularizes the student only: in training mode the student's output changes from call to
    call, the teacher's (DINO's targets) does not."""
    from dataclasses import replace

    from fmwiss_d2.modeling.foundation.pretrain_dino import pretrain_dino

    spec, cache, _ = tiny_world
    student, teacher, _ = pretrain_dino(spec, cache, config=replace(DINO_CFG, steps=1, drop_path=0.5),
                                        progress=False)
    x = [torch.randn(2, 3, 32, 32)]
    student.train()
    teacher.train()
    torch.manual_seed(0)
    with torch.no_grad():
        s1, s2, t1, t2 = student(x), student(x), teacher(x), teacher(x)
    assert not torch.allclose(s1, s2)
    assert torch.equal(t1, t2)
    assert student.backbone.blocks[-1].drop_path1.drop_prob == 0.5  # timm: linear in depth up to the rate


def test_gaussian_blur_matches_scipy():
    """Against scipy's separable Gaussian filter ('mirror' = torch's 'reflect' padding, same 2 * 3 + 1 taps);
    ``p`` picks which images are blurred."""
    from scipy.ndimage import gaussian_filter

    from fmwiss_d2.modeling.foundation.data import gaussian_blur

    x = torch.rand(3, 3, 12, 10, dtype=torch.float64) * 255
    gen = torch.Generator().manual_seed(0)
    out = gaussian_blur(x, gen, p=1.0, sigma=(1.3, 1.3), radius=3)
    for img, got in zip(x, out):
        ref = gaussian_filter(img.numpy(), sigma=(0, 1.3, 1.3), mode="mirror", truncate=3 / 1.3)
        torch.testing.assert_close(got, torch.from_numpy(ref), rtol=1e-6, atol=1e-4)  # float32 kernel weights
    assert torch.equal(gaussian_blur(x, gen, p=0.0), x)


def test_dino_loss_hand_worked():
    """Two global views and one local view, K = 2 prototypes, batch 1: the loss is the mean of the four
    cross-entropies (teacher 0, student 1), (0, 2), (1, 0), (1, 2) -- a view is never matched with itself."""
    t = torch.tensor([[0.0, 0.0], [1.0, -1.0]])  # teacher logits for global view 0 and 1 (batch 1)
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # student: uniform on every view
    center = torch.zeros(1, 2)
    # uniform student => every cross-entropy is log 2, whatever the teacher
    assert abs(float(dino_loss(s, t, center, 2, 0.1, 0.04)) - float(torch.log(torch.tensor(2.0)))) < 1e-6
    # a non-uniform student on the local view, worked out term by term
    s2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    q0 = torch.softmax(t[0] / 0.04, 0)
    q1 = torch.softmax(t[1] / 0.04, 0)
    ls = torch.log_softmax(s2 / 0.1, dim=1)
    expected = (-(q0 * ls[1]).sum() - (q0 * ls[2]).sum() - (q1 * ls[0]).sum() - (q1 * ls[2]).sum()) / 4
    assert abs(float(dino_loss(s2, t, center, 2, 0.1, 0.04)) - float(expected)) < 1e-6


def test_hue_rotation_keeps_gray_and_cycles_channels():
    from fmwiss_d2.modeling.foundation.data import hue_rotation_matrices

    r = hue_rotation_matrices(torch.tensor([0.0, 1 / 3, 0.07]))
    torch.testing.assert_close(r[0], torch.eye(3))
    torch.testing.assert_close(r[1] @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r[2] @ torch.ones(3), torch.ones(3))  # gray stays gray


def test_crop_captions_name_what_the_crop_shows():
    """A hand-drawn 10 x 10 segment map: sky (rows 0-4) and grass (rows 5-9) behind two discs (3 x 3 blocks at
    rows 1-3, cols 1-3 and rows 6-8, cols 6-8) and a star (rows 1-2, cols 6-9). An object is named when at
    least half of its pixels lie in the box; a stuff region when any of its pixels does."""
    from fmwiss_d2.modeling.foundation.data import crop_captions

    seg = torch.zeros(10, 10, dtype=torch.int16)
    seg[5:] = 1
    seg[1:4, 1:4] = 2
    seg[6:9, 6:9] = 3
    seg[1:3, 6:10] = 4
    cats = [10, 12, 0, 0, 3]  # sky, grass, disc, disc, star (THING_CLASSES + STUFF_CLASSES order)
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # everything
        [0.0, 0.0, 5.0, 5.0],  # the first disc on sky
        [0.0, 0.0, 2.5, 4.0],  # cols 0-2 of the first disc: 6 of its 9 pixels
        [0.0, 0.0, 2.0, 4.0],  # cols 0-1: 3 of 9, not named
        [6.0, 1.0, 8.0, 2.0],  # 2 of the star's 8 pixels and nothing else: no object, no stuff
        [5.0, 5.0, 10.0, 10.0],  # the second disc on grass
    ])
    got = crop_captions(seg.expand(len(boxes), -1, -1), [cats] * len(boxes), boxes)
    assert got == [
        "a picture of two discs and a star on sky and grass.",
        "a picture of a disc on sky.",
        "a picture of a disc on sky.",
        "a picture of sky.",
        "a picture of the background.",
        "a picture of a disc on grass.",
    ]


def test_attribute_captions_use_the_class_words_and_drop_them_at_random():
    """One star on sky (``CLASS_ATTRIBUTES``: solid / yellow green / pointed; sky: shaded / blue). Every caption
    is "a picture of a <kept star words> <star or shape> on <kept sky words> sky."; over 400 draws each word group
    and the name are kept about half / three quarters of the time, and no other class's name appears."""
    from fmwiss_d2.data.datasets.shapes import CLASS_ATTRIBUTES
    from fmwiss_d2.modeling.foundation.data import crop_captions

    assert CLASS_ATTRIBUTES["star"] == ("solid", "yellow green", "pointed")
    seg = torch.zeros(1, 6, 6, dtype=torch.int16)
    seg[0, 1:4, 1:4] = 1
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.0, 0.0, 6.0, 6.0]]).expand(400, -1)
    got = crop_captions(seg.expand(400, -1, -1), [[10, 3]] * 400, boxes, attributes=True, generator=gen)
    pattern = re.compile(r"^a picture of a (solid )?(yellow green )?(pointed )?(star|shape) on (shaded )?(blue )?sky\.$")
    matches = [pattern.match(c) for c in got]
    assert all(matches), [c for c, m in zip(got, matches) if not m][:3]
    for group in (1, 2, 3, 5, 6):
        share = sum(m.group(group) is not None for m in matches) / len(got)
        assert 0.4 < share < 0.6, (group, share)
    generic = [m for m in matches if m.group(4) == "shape"]
    assert all(m.group(1) or m.group(2) or m.group(3) for m in generic)  # "a shape" alone never
    assert 0.15 < len(generic) / len(got) < 0.3  # 1/4 of the draws with a word kept (7/8 of them): 0.22
    # without attributes: the names only, and no random draw
    assert crop_captions(seg, [[10, 3]], boxes[:1]) == ["a picture of a star on sky."]


def test_every_class_description_shares_words_with_another_class():
    """The world's descriptions are what lets a text model relate an unseen class to seen ones: each class's
    attribute words overlap another class's, and each description ends with the class name."""
    from fmwiss_d2.data.datasets.shapes import CLASS_ATTRIBUTES, PANOPTIC_CLASSES, class_description

    assert set(CLASS_ATTRIBUTES) == set(PANOPTIC_CLASSES)
    words = {c: set(" ".join(a).split()) for c, a in CLASS_ATTRIBUTES.items()}
    for c in PANOPTIC_CLASSES:
        assert any(words[c] & words[o] for o in PANOPTIC_CLASSES if o != c), c
    assert class_description("star") == "solid yellow green pointed star"


def test_clip_cache_key_depends_on_the_caption_style_only_when_attributes():
    """Checkpoints trained before the caption style existed ("names") keep their cache path."""
    from dataclasses import asdict, replace

    from fmwiss_d2.data.datasets.shapes import WorldSpec
    from fmwiss_d2.modeling.foundation import pretrain_clip as pc
    from fmwiss_d2.modeling.foundation.checkpoint import cache_key

    spec, config = WorldSpec(), pc.CLIPPretrainConfig()
    before = {k: v for k, v in asdict(config).items() if k != "captions"}  # the config's fields before the style
    names = pc.clip_checkpoint_path(spec, "/c", pc.DEFAULT_MODEL, config)
    assert cache_key("clip", pc.PRETRAIN_VERSION, asdict(spec), pc._model_config(pc.DEFAULT_MODEL), before) in names
    assert pc.clip_checkpoint_path(spec, "/c", pc.DEFAULT_MODEL, replace(config, captions="attributes")) != names
    with pytest.raises(ValueError, match=r"MODEL\.CLIP\.PRETRAIN\.CAPTIONS.*'attribute'"):
        replace(config, captions="attribute")


def test_mass_threshold_and_attention_foreground_hand_worked():
    """Attention 0.5 / 0.3 / 0.1 / 0.1 (row-major 2 x 2): the 60% rule keeps 0.5 and the crossing 0.3; a fake
    ViT whose two heads average to that map gives the same mask at the input's size (4 x 4, 2 x 2 patches)."""
    from fmwiss_d2.modeling.foundation.evaluation import attention_foreground, mass_threshold

    attn = torch.tensor([[[0.5, 0.3], [0.1, 0.1]]])
    assert mass_threshold(attn, 0.6).tolist() == [[[True, True], [False, False]]]
    assert mass_threshold(attn, 0.5).tolist() == [[[True, False], [False, False]]]  # 0.5 alone reaches 0.5

    heads = torch.stack([attn[0] * 2 - 0.1, torch.full((2, 2), 0.1)])  # mean = attn
    fake = lambda x: {"attentions": heads.expand(x.shape[0], -1, -1, -1)}
    up, mask = attention_foreground(fake, torch.zeros(1, 3, 2, 2))
    torch.testing.assert_close(up, attn)
    assert mask.tolist() == [[[True, True], [False, False]]]


def test_foreground_scores_hand_worked():
    """2 x 3 image, ground truth [[1, 1, 0], [0, 255, 0]] (2 foreground, 1 ignored); prediction
    [[1, 0, 1], [0, 1, 0]]: the ignored pixel is dropped, so intersection 1, prediction 2, union 3 ->
    IoU 1/3, precision 1/2, recall 1/2; attention 0.4 / 0.1 / 0.2 / 0.1 / 0.1 / 0.1 holds 0.5 of the
    0.9 on valid pixels on the foreground."""
    from fmwiss_d2.modeling.foundation.evaluation import foreground_scores

    gt = torch.tensor([[[1, 1, 0], [0, 255, 0]]], dtype=torch.uint8)
    pred = torch.tensor([[[True, False, True], [False, True, False]]])
    attn = torch.tensor([[[0.4, 0.1, 0.2], [0.1, 0.1, 0.1]]])
    got = foreground_scores(attn, pred, gt)
    assert got["iou"] == pytest.approx([1 / 3]) and got["inter"] == 1 and got["union"] == 3
    assert got["precision"] == pytest.approx([0.5]) and got["recall"] == pytest.approx([0.5])
    assert got["fg_mass"] == pytest.approx([0.5 / 0.9])


def test_ideal_attention_iou_hand_worked():
    """A 4 x 4 mask with a 2 x 2 object. At pixel resolution (grid 4) the ideal map is uniform on the object's
    4 pixels; the 60% and the 70% rule both keep 3 of them (0, 1/4, 1/2 of the mass before each): IoU 3/4.
    At grid 2 the object fills one patch; bilinear upsampling gives the outer product of [1, 3/4, 1/4, 0]
    with itself (sum 4): 1, 3/4, 3/4, 9/16 inside the object, 1/4 and less outside. 60% (2.4) keeps
    1, 3/4, 3/4 (IoU 3/4); 70% (2.8) also keeps 9/16 (2.5 before it): the whole object, IoU 1."""
    from fmwiss_d2.modeling.foundation.evaluation import ideal_attention_iou

    gt = torch.zeros(1, 4, 4, dtype=torch.uint8)
    gt[0, :2, :2] = 3
    assert ideal_attention_iou(gt, 4) == pytest.approx([0.75])
    assert ideal_attention_iou(gt, 4, mass=0.7) == pytest.approx([0.75])
    assert ideal_attention_iou(gt, 2) == pytest.approx([0.75])
    assert ideal_attention_iou(gt, 2, mass=0.7) == pytest.approx([1.0])
