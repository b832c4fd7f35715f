"""The PADing method (methods/pading.py) on the tiny Mask2Former: stage 1 never lets an unseen class name reach a
loss; the generator stage trains only the generator; stage 2 changes only the class head."""
import os

import pytest
import torch

from _model_cfg import tiny_cfg
from fmwiss_d2.data.datasets.zero_shot import register_zero_shot_split
from fmwiss_d2.methods import MethodConfigError, build_method

from conftest import TINY_ZS_UNSEEN as UNSEEN  # noqa: E402



@pytest.fixture
def split(tiny_zs_split):
    return tiny_zs_split


def _cfg(stage="seen", *opts):
    return tiny_cfg("shapes/pading.yaml", "DATASETS.TRAIN", "('tiny_zs_train',)", "METHOD.PADING.SPLIT", "tiny_zs",
                    "METHOD.PADING.STAGE", stage, "MODEL.CLIP.CHECKPOINT", "", "METHOD.PADING.NUM_PRIMITIVES", "10",
                    "METHOD.PADING.GENERATOR_HIDDEN_DIM", "32", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", *opts)


def _method(cfg):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    method = build_method(cfg, build_model(cfg))
    method.prepare_training(cfg)
    return method.train()


def _batch(split, n=4):
    """Training records whose base image shows an unseen class (their unseen segments are already removed)."""
    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.dataset_mappers.panoptic import PanopticDatasetMapper

    mapper = PanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255)
    base = DatasetCatalog.get("tiny_shapes_panoptic_train")
    ids = {i for i, r in enumerate(base) for s in r["segments_info"] if s["category_id"] in split.unseen_ids}
    records = DatasetCatalog.get("tiny_zs_train")
    return [mapper(records[i]) for i in sorted(ids)[:n]]


def _total(losses):
    return sum(losses.values())


def test_stage1_unseen_names_never_reach_a_loss(split):
    method = _method(_cfg())
    clf = method.model.classifier
    assert clf.text_embeddings.abs().sum() > 0  # filled from CLIP (random weights here)
    batch = _batch(split)
    clf.text_embeddings.requires_grad_(True)
    torch.manual_seed(1)
    loss = _total(method.losses(batch))
    loss.backward()
    grad = clf.text_embeddings.grad
    assert torch.isfinite(loss)
    assert grad[split.unseen_ids].abs().sum() == 0
    assert grad[split.seen_ids].abs().sum(1).gt(0).all()
    # other embeddings for the unseen names: the same loss
    with torch.no_grad():
        clf.text_embeddings[split.unseen_ids] = torch.randn(len(UNSEEN), clf.text_embeddings.shape[1])
    torch.manual_seed(1)
    assert _total(method.losses(batch)).item() == pytest.approx(loss.item(), rel=1e-6)
    # control: without the method's masking, the unseen names do reach the model's loss
    clf.text_embeddings.grad = None
    torch.manual_seed(1)
    _total(method.model(batch)).backward()
    assert clf.text_embeddings.grad[split.unseen_ids].abs().sum() > 0
    # at inference the unseen classes compete
    method.eval()
    with torch.no_grad():
        out = method([{k: v for k, v in batch[0].items() if k not in ("instances", "sem_seg")}])
    assert out[0]["sem_seg"].shape[0] == len(split.classes)


def test_training_on_unfiltered_data_is_refused(split):
    with pytest.raises(MethodConfigError, match="not the training set of zero-shot split"):
        _method(_cfg("seen", "DATASETS.TRAIN", "('tiny_shapes_panoptic_train',)"))
    with pytest.raises(MethodConfigError, match="TEXT_CLASSIFIER"):
        _method(_cfg("seen", "MODEL.MASK_FORMER.TEXT_CLASSIFIER.ENABLED", "False"))


def _step(cfg, method, batch):
    from fmwiss_d2.engine.solver import build_optimizer

    opt = build_optimizer(cfg, method)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    buffers = {k: v.clone() for k, v in method.model.named_buffers()}
    losses = method.losses(batch)
    _total(losses).backward()
    opt.step()
    changed = {k for k, v in method.state_dict().items() if not torch.equal(v, before[k])}
    changed |= {f"model.{k}" for k, v in method.model.named_buffers() if not torch.equal(v, buffers[k])}
    return losses, changed


def test_generator_stage_then_stage2_changes_only_the_classifier(split, tmp_path):
    batch = _batch(split)
    cfg = _cfg("generator")
    gen_method = _method(cfg)
    losses, changed = _step(cfg, gen_method, batch)
    assert set(losses) == {"loss_mmd", "loss_fake_cls", "loss_structure"}
    assert changed and all(k.startswith(("generator.", "disentangler.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("generator.primitives") for k in changed)
    path = str(tmp_path / "generator.pth")
    torch.save({"model": gen_method.model.state_dict(), "method": gen_method.own_state_dict()}, path)

    cfg2 = _cfg("classifier", "METHOD.PADING.GENERATOR_WEIGHTS", path)
    method = _method(cfg2)
    method.model.load_state_dict(gen_method.model.state_dict())
    assert torch.equal(method.frozen("generator").primitives.weight, gen_method.generator.primitives.weight)
    assert method.own_state_dict() == {}  # the frozen generator is not saved again
    losses, changed = _step(cfg2, method, batch)
    assert set(losses) == {"loss_classifier"}
    head = "model.transformer_decoder.class_embed."
    assert changed and all(k.startswith(head) for k in changed), sorted(changed)[:5]
    assert head + "text_embeddings" not in changed
    assert head + "proj.weight" in changed


def test_stage2_without_generator_weights_is_a_clear_error(split):
    with pytest.raises(MethodConfigError, match="GENERATOR_WEIGHTS"):
        _method(_cfg("classifier"))


def test_zero_shot_runner_shares_stage1_chains_weights_and_skips_finished_stages(tmp_path, capsys):
    import json
    import os

    from fmwiss_d2.engine.launch import argument_parser
    from fmwiss_d2.engine.protocol import run_zero_shot

    trained = []

    def fake_train(args, opts, folder):
        trained.append((os.path.relpath(folder, str(tmp_path)), list(opts)))
        os.makedirs(os.path.join(folder, "inference"), exist_ok=True)
        torch.save({"model": {}}, os.path.join(folder, "model_final.pth"))
        if "()" not in opts:  # the generator stage is not evaluated
            hm = {"stage1": 10.0, os.path.join("GMMN", "classifier"): 20.0,
                  os.path.join("PADing", "classifier"): 30.0}[os.path.relpath(folder, str(tmp_path))]
            with open(os.path.join(folder, "inference", "results.json"), "w") as f:
                json.dump({d: {"sem_seg": {"hIoU": hm, "mIoU_seen": 50.0, "mIoU_unseen": hm / 2}}
                           for d in ("shapes_zs_val", "shapes_zs_sem_seg_val")}, f)

    argv = ["--config-file", "configs/shapes/pading.yaml", "OUTPUT_DIR", str(tmp_path),
            "PROTOCOL.METRICS", '["sem_seg/hIoU"]', "METHOD.PADING.STAGE_MAX_ITER", "7"]
    variants = ["PADing", "GMMN", "stage1-only"]
    summary = run_zero_shot(argument_parser().parse_args(argv), variants, train=fake_train)
    folders = [f for f, _ in trained]
    assert folders == ["stage1", os.path.join("PADing", "generator"), os.path.join("PADing", "classifier"),
                       os.path.join("GMMN", "generator"), os.path.join("GMMN", "classifier")]  # stage 1 once
    opts = dict(trained)
    o = opts[os.path.join("GMMN", "classifier")]
    gen_weights = os.path.join(str(tmp_path), "GMMN", "generator", "model_final.pth")
    assert o[o.index("MODEL.WEIGHTS") + 1] == gen_weights and o[o.index("METHOD.PADING.GENERATOR_WEIGHTS") + 1] == gen_weights
    assert o[o.index("METHOD.PADING.GENERATOR") + 1] == "MLPGenerator" and o[o.index("SOLVER.MAX_ITER") + 1] == "7"
    g = opts[os.path.join("PADing", "generator")]
    assert g[g.index("MODEL.WEIGHTS") + 1] == os.path.join(str(tmp_path), "stage1", "model_final.pth")
    assert "METHOD.PADING.GENERATOR" not in opts["stage1"] and "SOLVER.MAX_ITER" not in opts["stage1"]
    rows = {(r["variant"], r["dataset"]): r["sem_seg/hIoU"] for r in summary["rows"]}
    assert rows[("PADing", "shapes_zs_sem_seg_val")] == 30.0 and rows[("stage1-only", "shapes_zs_val")] == 10.0
    assert rows[("GMMN", "shapes_zs_val")] == 20.0
    again = run_zero_shot(argument_parser().parse_args(argv), variants, train=fake_train)
    assert len(trained) == 5 and again["rows"] == summary["rows"]  # everything finished: nothing runs


def test_a_variant_sets_its_own_stage_schedule(tmp_path):
    """METHOD.PADING.STAGE_{MAX_ITER,BASE_LR} of a variant reach its generator and classifier stages, and
    GENERATOR_BASE_LR its generator stage alone; the other variants keep the config's (150 iterations; generator
    rate 0.003, classifier rate 0.001)."""
    from fmwiss_d2.engine.launch import argument_parser, load_config
    from fmwiss_d2.engine.protocol import zero_shot_stages

    argv = ["--config-file", "configs/shapes/pading.yaml", "OUTPUT_DIR", str(tmp_path), "PROTOCOL.VARIANTS",
            '["long: METHOD.PADING.STAGE_MAX_ITER 9 METHOD.PADING.STAGE_BASE_LR 0.01 METHOD.PADING.GENERATOR_BASE_LR '
            '0.0", "fastgen: METHOD.PADING.GENERATOR_BASE_LR 0.02"]']
    args = argument_parser().parse_args(argv)
    seen = {}
    plan = zero_shot_stages(args, load_config(args.config_file, args.opts), ["PADing", "long", "fastgen"],
                            train=lambda a, opts, folder: seen.__setitem__(os.path.relpath(folder, str(tmp_path)),
                                                                           opts))
    for _, stages, _ in plan:
        for stage in stages[1:]:
            stage.run()

    def value(opts, key):  # the last setting wins when detectron2 merges the opts
        return [opts[i + 1] for i in range(0, len(opts), 2) if opts[i] == key][-1]

    expected = {("long", "generator"): ("9", 0.01), ("long", "classifier"): ("9", 0.01),
                ("PADing", "generator"): ("150", 0.003), ("PADing", "classifier"): ("150", 0.001),
                ("fastgen", "generator"): ("150", 0.02), ("fastgen", "classifier"): ("150", 0.001)}
    for (variant, stage), (iters, lr) in expected.items():
        o = seen[os.path.join(variant, stage)]
        assert value(o, "SOLVER.MAX_ITER") == iters and float(value(o, "SOLVER.BASE_LR")) == lr, (variant, stage)


def test_prompt_names():
    from fmwiss_d2.methods.pading import prompt_name

    assert [prompt_name(c) for c in ("sky-other-merged", "grass-merged", "wall-other", "playingfield", "hot dog",
                                     "tree-merged", "sand")] == ["sky", "grass", "wall", "playingfield", "hot dog",
                                                                 "tree", "sand"]


def test_class_text_descriptions_come_from_the_dataset_metadata(split, monkeypatch):
    """CLASS_TEXT 'description': each class is embedded from its name with the world's attribute words (written
    here by hand for two classes); a dataset without descriptions, or an unknown setting, is a clear error."""
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    cfg = _cfg("seen", "METHOD.PADING.CLASS_TEXT", "description")
    method = build_method(cfg, build_model(cfg))
    texts = dict(zip(split.classes, method.class_texts(cfg)))
    assert texts["star"] == "solid yellow green pointed star" and texts["sand"] == "grainy yellow sand"
    assert _method(_cfg()).class_texts(_cfg())[split.classes.index("star")] == "star"
    monkeypatch.delattr(MetadataCatalog.get("tiny_zs_train"), "class_descriptions")
    with pytest.raises(MethodConfigError, match="class_descriptions.*tiny_zs_train"):
        method.class_texts(cfg)
    bad = _cfg("seen", "METHOD.PADING.CLASS_TEXT", "caption")
    with pytest.raises(MethodConfigError, match="CLASS_TEXT"):
        build_method(bad, build_model(bad))


def test_the_unseen_logit_bias_raises_only_the_unseen_classes_at_inference(split, monkeypatch):
    """Calibrated stacking: ``UNSEEN_LOGIT_BIAS`` is added to the unseen classes' logits before the model's own
    inference, and to nothing else (seen classes, "no object"); training losses never see it."""
    cfg = _cfg("seen", "METHOD.PADING.UNSEEN_LOGIT_BIAS", "2.5")
    method = _method(cfg).eval()
    seen = []
    monkeypatch.setattr(method.model, "inference", lambda outputs, *a: seen.append(outputs["pred_logits"]) or [])
    batch = _batch(split, n=2)
    with torch.no_grad():
        method.inference(batch)
        method.test_bias.zero_()
        method.inference(batch)
    biased, plain = seen
    k = len(split.classes)
    unseen = torch.zeros(k + 1, dtype=torch.bool)
    unseen[split.unseen_ids] = True
    assert torch.allclose((biased - plain)[..., unseen], torch.tensor(2.5))
    assert torch.equal(biased[..., ~unseen], plain[..., ~unseen])
    assert unseen.sum() == len(UNSEEN) and not unseen[k]
