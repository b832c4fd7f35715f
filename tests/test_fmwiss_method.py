"""FMWISS end to end on a tiny world, on both model families (DeepLabV3 and Mask2Former, one code path): step 0
fills the memory bank from its masks; the weak step 1 trains from image labels, pseudo masks (CLIP, random weights:
only the plumbing is under test), the teacher and copy-paste, never opening a mask file; the teacher learns; a step
0 trained by another method gets its bank from its masks; a trained DuPL serves as the pseudo-label source."""
import os

import pytest
import torch

from detectron2.data import DatasetCatalog, detection_utils

from _model_cfg import tiny_cfg
from fmwiss_d2.data.dataset_mappers import base as mapper_base
from fmwiss_d2.data.memory_bank import MemoryBank
from fmwiss_d2.engine.incremental import configure_step

TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3",
        "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.WARMUP_ITERS", "0", "SEED", "7", "MODEL.CLIP.CHECKPOINT", "",
        "INCREMENTAL.NEW_CLASS_LABELS", "image", "METHOD.FMWISS.BANK_SIZE", "4", "METHOD.FMWISS.BANK_CROP", "16",
        "METHOD.FMWISS.CONTRASTIVE_PIXELS", "256", "MODEL.DEEPLAB.ASPP_CHANNELS", "64"]
DEEPLAB = "shapes/deeplabv3_semantic.yaml"
M2F = "shapes/mask2former_semantic.yaml"
BOTH = pytest.mark.parametrize("config", [DEEPLAB, M2F], ids=["deeplabv3", "mask2former"])


@pytest.fixture(scope="module")
def task(tiny_world):
    from fmwiss_d2.data.datasets.tasks import register_incremental_task

    return register_incremental_task("tiny_fm_6-4", {"train": "tiny_shapes_sem_seg_train", "val": "tiny_shapes_sem_seg_val",
                                                     "steps": [list(range(0, 7)), list(range(7, 11))]})


def _cfg(step, out, method="FMWISS", *opts, config=DEEPLAB):
    cfg = tiny_cfg(config, *TINY, "INCREMENTAL.TASK", "tiny_fm_6-4", "INCREMENTAL.STEP",
                   str(step), "METHOD.NAME", method, "OUTPUT_DIR", str(out), *opts)
    configure_step(cfg)
    cfg.freeze()
    return cfg


def _train(cfg):
    from detectron2.utils.env import seed_all_rng

    from fmwiss_d2.engine import Trainer

    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _mask_files(task):
    files = set()
    for name in DatasetCatalog.list():
        if name.startswith("tiny_shapes_sem_seg") or name.startswith("tiny_fm_6-4"):
            files |= {os.path.realpath(r["sem_seg_file_name"]) for r in DatasetCatalog.get(name) if "sem_seg_file_name" in r}
    return files


@BOTH
def test_weak_step_trains_teacher_and_copy_paste_without_reading_a_mask(task, tmp_path, monkeypatch, config):
    trainer0 = _train(_cfg(0, tmp_path, config=config))
    bank0 = trainer0._trainer.model.memory_bank
    assert bank0.count[1:7].sum() > 0 and bank0.count[7:].sum() == 0  # step 0's classes, from its masks
    saved = MemoryBank.read(str(tmp_path / "step0" / "model_final.pth"))
    assert saved["identity"]["step"] == 0 and torch.equal(saved["count"], bank0.count.cpu())

    opened = []
    real_image, real_label = detection_utils.read_image, mapper_base.read_label_map
    monkeypatch.setattr(detection_utils, "read_image", lambda fn, *a, **k: opened.append(fn) or real_image(fn, *a, **k))
    monkeypatch.setattr(mapper_base, "read_label_map", lambda fn, *a, **k: opened.append(fn) or real_label(fn, *a, **k))
    cfg1 = _cfg(1, tmp_path, config=config)
    from fmwiss_d2.engine import Trainer

    method = Trainer.build_train_model(cfg1)
    teacher0 = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    assert torch.equal(method.memory_bank.count[:7], bank0.count[:7])  # the bank starts as step 0's
    opened.clear()
    trainer1 = _train(cfg1)
    training_reads = {os.path.realpath(f) for f in opened}
    assert training_reads and not training_reads & _mask_files(task)  # images only, never a mask

    method = trainer1._trainer.model
    teacher = method.teacher.state_dict()
    assert any(not torch.equal(teacher[k], teacher0[k]) for k in teacher0 if "weight" in k)  # the teacher learnt
    ckpt = torch.load(tmp_path / "step1" / "model_final.pth", weights_only=False)
    assert any(k.startswith("teacher.") for k in ckpt["method"])
    assert not any("old_model" in k or "pseudo_label_source" in k for k in ckpt["method"])  # frozen parts unsaved
    bank1 = MemoryBank.read(str(tmp_path / "step1" / "model_final.pth"))
    assert bank1["identity"]["step"] == 1 and torch.equal(bank1["count"][:7], bank0.count[:7].cpu())

    # --eval-only builds the same method (teacher, bank) and loads its own parts strictly
    cfg_eval = tiny_cfg(config, *TINY, "INCREMENTAL.TASK", "tiny_fm_6-4", "INCREMENTAL.STEP", "1",
                        "METHOD.NAME", "FMWISS", "OUTPUT_DIR", str(tmp_path))
    configure_step(cfg_eval, eval_only=True)
    evaluated = Trainer.build_eval_model(cfg_eval, cfg_eval.MODEL.WEIGHTS)
    assert torch.equal(evaluated.teacher.classifier.weight, method.teacher.classifier.weight)
    assert torch.equal(evaluated.memory_bank.images, method.memory_bank.images)
    assert cfg_eval.DATASETS.TEST == ("tiny_fm_6-4_overlap_step1_val",)
    assert 0 <= Trainer.test(cfg_eval, evaluated)["sem_seg"]["mIoU_new"] <= 100


@BOTH
def test_losses_reach_the_teacher_and_the_student(task, tmp_path, config):
    from fmwiss_d2.data.dataset_mappers import build_dataset_mapper
    from fmwiss_d2.engine import Trainer
    from fmwiss_d2.engine.data_loader import training_records

    _train(_cfg(0, tmp_path, config=config))
    cfg1 = _cfg(1, tmp_path, config=config)
    method = Trainer.build_train_model(cfg1).train()
    mapper = build_dataset_mapper(cfg1, is_train=True)
    batch = [mapper(r) for r in training_records(cfg1)[:3]]
    assert all("sem_seg" not in x for x in batch)
    torch.manual_seed(0)
    losses = method(batch)
    assert set(losses) == {"loss_teacher_bce", "loss_teacher_contrastive", "loss_soft_labels"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grad = lambda ps: sum(float(p.grad.abs().sum()) for p in ps if p.grad is not None)  # noqa: E731
    assert grad(method.teacher.classifier.parameters()) > 0 and grad(method.teacher.projection.parameters()) > 0
    assert grad(method.model.classifier.cls[1].parameters()) > 0  # the new classes learn
    assert all(p.grad is None for p in method.old_model.parameters())
    # every trainable parameter takes part (DistributedDataParallel is built without find_unused_parameters)
    assert [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None] == []
    # the contrastive loss alone reaches the teacher's embedding head and the shared backbone
    method.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    method(batch)["loss_teacher_contrastive"].backward()
    assert grad(method.teacher.projection.parameters()) > 0 and grad(method.model.backbone.parameters()) > 0
    assert grad(method.teacher.classifier.parameters()) == 0


def test_step0_of_another_method_gets_a_bank_from_its_masks(task, tmp_path):
    _train(_cfg(0, tmp_path, "Finetune"))
    from fmwiss_d2.engine import Trainer

    method = Trainer.build_train_model(_cfg(1, tmp_path))
    path = tmp_path / "step0" / "memory_bank.pth"
    saved = MemoryBank.read(str(path))
    assert saved["identity"] == {"task": "tiny_fm_6-4", "step": 0, "classes": task.seen_classes(0)}
    assert saved["count"][1:7].sum() > 0 and saved["count"][0] == 0
    assert torch.equal(method.memory_bank.count[:7], saved["count"])
    # a later step whose previous step kept no bank is refused with the fix
    from detectron2.modeling import build_model

    from fmwiss_d2.data.datasets.tasks import register_incremental_task
    from fmwiss_d2.methods import MethodConfigError, build_method

    task3 = register_incremental_task("tiny_fm_6-2-2", {"train": "tiny_shapes_sem_seg_train", "val": "tiny_shapes_sem_seg_val",
                                                        "steps": [list(range(0, 7)), [7, 8], [9, 10]]})
    cfg2 = _cfg(2, tmp_path, "FMWISS", "INCREMENTAL.TASK", "tiny_fm_6-2-2",
                "INCREMENTAL.PREVIOUS_WEIGHTS", str(tmp_path / "step1" / "model_final.pth"))
    with pytest.raises(MethodConfigError, match="memory bank of step 1.*COPY_PASTE False"):
        build_method(cfg2, build_model(cfg2), task3, 2).prepare_training(cfg2)


def test_fmwiss_refuses_pixel_labels_at_a_weak_step(task, tmp_path):
    from fmwiss_d2.methods import MethodConfigError, build_method
    from detectron2.modeling import build_model

    cfg = _cfg(1, tmp_path, "FMWISS", "INCREMENTAL.NEW_CLASS_LABELS", "pixel")
    with pytest.raises(MethodConfigError, match="NEW_CLASS_LABELS image"):
        build_method(cfg, build_model(cfg), task, 1).prepare_training(cfg)


def test_foundation_pretraining_runs_when_first_needed_inside_no_grad(tiny_world):
    """CLIPSource builds its CLIP lazily inside its no_grad forward; an "auto:shapes" checkpoint is then
    pretrained right there, which must still compute gradients."""
    from fmwiss_d2.modeling.foundation.pretrain_clip import CLIPPretrainConfig, pretrain_clip
    from fmwiss_d2.modeling.foundation.pretrain_dino import DINOPretrainConfig, pretrain_dino

    spec, cache, _ = tiny_world
    with torch.no_grad():
        clip, _ = pretrain_clip(spec, cache, config=CLIPPretrainConfig(steps=1, batch_size=4, warmup=1), progress=False)
        student, _, _ = pretrain_dino(spec, cache, config=DINOPretrainConfig(steps=1, batch_size=2, local_crops=0,
                                                                             warmup=1, out_dim=16), progress=False)
    assert any(p.requires_grad for p in clip.parameters()) and any(p.requires_grad for p in student.parameters())


def test_the_teacher_starts_as_the_previous_steps_head(task, tmp_path):
    from fmwiss_d2.engine import Trainer

    _train(_cfg(0, tmp_path, "Finetune"))
    cfg1 = _cfg(1, tmp_path)
    trainer = Trainer(cfg1)
    trainer.resume_or_load(resume=False)  # a fresh step: start_step runs
    method = trainer._trainer.model.eval()
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        images = (x - method.model.pixel_mean) / method.model.pixel_std
        old = method.old_model.forward_outputs(images)["pred_logits"]
        t = method.teacher(method.model.pixel_features(method.model.forward_outputs(images)), (64, 64))["logits"]
    assert torch.allclose(t[:, :7], old, atol=1e-4)  # the old classes' logits, as the previous step had them


def _fresh_step_outputs(tmp_path, family: dict):
    """A Finetune step 0, then an FMWISS step 1 (prior 0.02) before any iteration: the method, and the old model's,
    the student's and the teacher's outputs on 4 random images."""
    from fmwiss_d2.engine import Trainer

    _train(_cfg(0, tmp_path, "Finetune", **family))
    trainer = Trainer(_cfg(1, tmp_path, "FMWISS", "METHOD.FMWISS.NEW_CLASS_PRIOR", "0.02", **family))
    trainer.resume_or_load(resume=False)
    method = trainer._trainer.model.eval()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64) * 255
    with torch.no_grad():
        images = (x - method.model.pixel_mean) / method.model.pixel_std
        old = method.old_model.forward_outputs(images)
        new = method.model.forward_outputs(images)
        t = method.teacher(method.model.pixel_features(new), (64, 64))["logits"]
    return method, old, new, t


def test_a_fresh_step_predicts_what_the_old_model_did(task, tmp_path):
    """The new classes start at zero weights and the prior's logit: before any weak-step iteration the student's
    argmax over all classes is the old model's, and the teacher's and student's new classes answer the prior."""
    method, old, new, t = _fresh_step_outputs(tmp_path, {})
    old, new = old["pred_logits"], new["pred_logits"]
    assert torch.equal(new.argmax(1), old.argmax(1))
    assert torch.allclose(new[:, 7:].sigmoid(), torch.full_like(new[:, 7:], 0.02), atol=1e-6)
    assert torch.allclose(t[:, 7:].sigmoid(), torch.full_like(t[:, 7:], 0.02), atol=1e-6)


def test_a_fresh_mask2former_step_predicts_what_the_old_model_did(task, tmp_path):
    """On Mask2Former the new rows take the prior's share of "no object" in every query: each query's old-class
    probabilities are exactly the old model's, each new class gets prior x the old no-object probability, and the
    semantic prediction (argmax of the per-pixel scores) is the old model's."""
    method, old, new, t = _fresh_step_outputs(tmp_path, {"config": M2F})
    p_old, p_new = old["pred_logits"].softmax(-1), new["pred_logits"].softmax(-1)  # [7 old, (4 new,) no-object]
    assert p_old.shape[-1] == 8 and p_new.shape[-1] == 12
    assert torch.allclose(p_new[..., :7], p_old[..., :7], atol=1e-6)
    assert torch.allclose(p_new[..., 7:11], 0.02 * p_old[..., 7:], atol=1e-6)
    assert torch.allclose(p_new[..., 11], (1 - 4 * 0.02) * p_old[..., 7], atol=1e-6)
    s_old, s_new = method.old_model.per_pixel_scores(old), method.model.per_pixel_scores(new)
    assert torch.equal(s_new.argmax(1), s_old.argmax(1))
    assert torch.equal(method.model.per_pixel_logits(new).argmax(1), s_old.argmax(1))
    assert torch.allclose(t[:, 7:].sigmoid(), torch.full_like(t[:, 7:], 0.02), atol=1e-6)


def test_the_mask2former_config_is_the_deeplabv3_recipe_on_the_other_family():
    """configs/shapes/fmwiss_mask2former.yaml: the Mask2Former MiB uses, with every FMWISS recipe key (incremental
    schedule, METHOD.FMWISS, ablation variants) of fmwiss_deeplabv3.yaml; it builds an FMWISS weak step."""
    from detectron2.modeling import build_model

    from fmwiss_d2.data.datasets.tasks import get_task
    from fmwiss_d2.methods import build_method

    m2f, deeplab = tiny_cfg("shapes/fmwiss_mask2former.yaml"), tiny_cfg("shapes/fmwiss_deeplabv3.yaml")
    mib = tiny_cfg("shapes/mib_mask2former.yaml")
    assert m2f.MODEL.META_ARCHITECTURE == "MaskFormer" and m2f.MODEL.MASK_FORMER == mib.MODEL.MASK_FORMER
    assert m2f.MODEL.TINY == mib.MODEL.TINY and m2f.MODEL.SEM_SEG_HEAD == mib.MODEL.SEM_SEG_HEAD
    assert m2f.METHOD.FMWISS == deeplab.METHOD.FMWISS and m2f.INCREMENTAL == deeplab.INCREMENTAL
    assert m2f.PSEUDO_LABELS == deeplab.PSEUDO_LABELS
    names = lambda cfg: [v.split(":")[0] for v in cfg.PROTOCOL.VARIANTS]  # noqa: E731
    assert names(m2f) == names(deeplab)
    mib_pixel = [v for v in m2f.PROTOCOL.VARIANTS if v.startswith("MiB-pixel:")][0]
    assert "METHOD.MIB.PSEUDO_LABEL True" in mib_pixel  # the Mask2Former MiB recipe
    cfg = configure_step(tiny_cfg("shapes/fmwiss_mask2former.yaml", "INCREMENTAL.STEP", "1"))
    method = build_method(cfg, build_model(cfg), get_task("shapes_6-4"), 1)
    assert method.teacher.aspp.convs[0].in_channels == cfg.MODEL.SEM_SEG_HEAD.MASK_DIM == 64


def test_a_weak_step_learns_from_a_dupl_model_through_the_source_key(task, tmp_path, monkeypatch):
    """METHOD.FMWISS.SOURCE DuPL: the step loads the DuPL checkpoint named by PSEUDO_LABELS.DUPL.*, trains from
    it without reading a mask, keeps it out of its checkpoint, and the teacher's BCE targets are DuPL's scores
    completed by the old model (recomputed here from the source's own output)."""
    from detectron2.modeling import build_model

    from fmwiss_d2.data.dataset_mappers import build_dataset_mapper
    from fmwiss_d2.engine import Trainer
    from fmwiss_d2.engine.data_loader import training_records
    from fmwiss_d2.modeling.losses.fmwiss import combine_pseudo_masks, soft_bce
    from fmwiss_d2.pseudo_labels.dupl import DuPL

    dupl_cfg = tiny_cfg("shapes/dupl.yaml")  # DuPL's student: the shapes DeepLabV3, 11 classes
    torch.manual_seed(1)
    dupl_model = build_model(dupl_cfg)
    (tmp_path / "dupl.yaml").write_text(dupl_cfg.dump())
    torch.save({"model": dupl_model.state_dict()}, tmp_path / "dupl.pth")
    _train(_cfg(0, tmp_path))  # FMWISS: its bank is in its checkpoint (a Finetune step 0's is built from its masks)
    opts = ["METHOD.FMWISS.SOURCE", "DuPL", "PSEUDO_LABELS.DUPL.CONFIG_FILE", str(tmp_path / "dupl.yaml"),
            "PSEUDO_LABELS.DUPL.CHECKPOINT", str(tmp_path / "dupl.pth")]

    calls, opened = [], []
    real_forward = DuPL.forward
    monkeypatch.setattr(DuPL, "forward", lambda self, images, labels, ctx: calls.append(
        [int(c) for l in labels for c in l]) or real_forward(self, images, labels, ctx))
    real_image, real_label = detection_utils.read_image, mapper_base.read_label_map
    monkeypatch.setattr(detection_utils, "read_image", lambda fn, *a, **k: opened.append(fn) or real_image(fn, *a, **k))
    monkeypatch.setattr(mapper_base, "read_label_map", lambda fn, *a, **k: opened.append(fn) or real_label(fn, *a, **k))
    trainer = _train(_cfg(1, tmp_path, "FMWISS", *opts))
    assert len(calls) == 3 and all(set(c) <= set(range(7, 11)) for c in calls)  # one call per iteration
    reads = {os.path.realpath(f) for f in opened}
    assert reads and not reads & _mask_files(task)
    source = trainer._trainer.model.frozen("pseudo_label_source")
    assert isinstance(source, DuPL)
    assert all(torch.equal(v, dupl_model.state_dict()[k]) for k, v in source.model.state_dict().items())
    ckpt = torch.load(tmp_path / "step1" / "model_final.pth", weights_only=False)
    assert not any("pseudo_label_source" in k for k in ckpt["method"])

    # one batch without copy-paste: the teacher's BCE is against combine_pseudo_masks(DuPL's scores, old model)
    cfg1 = _cfg(1, tmp_path / "again", "FMWISS", *opts, "METHOD.FMWISS.COPY_PASTE", "False",
                "INCREMENTAL.PREVIOUS_WEIGHTS", str(tmp_path / "step0" / "model_final.pth"))
    method = Trainer.build_train_model(cfg1).train()
    mapper = build_dataset_mapper(cfg1, is_train=True)
    batch = [mapper(r) for r in training_records(cfg1)[:3]]
    losses = method(batch)
    model = method.model
    with torch.no_grad():
        images = model.preprocess_images(batch)
        raw = images.tensor * model.pixel_std + model.pixel_mean
        labels = [torch.as_tensor(x["image_labels"]) for x in batch]
        pseudo = real_forward(source, raw, labels, method._context())
        old = method.old_model.per_pixel_scores(method.old_model.forward_outputs(images.tensor))
        masks = combine_pseudo_masks(pseudo.scores, old / old.sum(1, keepdim=True), method.new_ids)
        t = method.teacher(model.pixel_features(model.forward_outputs(images.tensor)), raw.shape[-2:])["logits"]
    assert pseudo.scores[:, 1:7].sum() == 0 and pseudo.scores[:, 7:].sum() > 0  # DuPL's, on the new classes only
    expected = soft_bce(t, masks, pseudo.valid)
    assert torch.allclose(losses["loss_teacher_bce"].detach(), expected, rtol=1e-5)
def test_pastes_avoid_the_new_pseudo_masks_and_the_old_model_vetoes_them(task, tmp_path, monkeypatch):
    """``PASTE_AVOID_NEW``: copy-paste is told to avoid exactly the pixels the source gives to a new class;
    ``OLD_MODEL_VETO``: the teacher's targets are the source's scores scaled by the old model's background;
    ``HARD_PSEUDO_MASKS``: they are the one-hot of the pseudo masks' argmax."""
    from detectron2.modeling import build_model

    from fmwiss_d2.data.dataset_mappers import build_dataset_mapper
    from fmwiss_d2.engine import Trainer
    from fmwiss_d2.engine.data_loader import training_records
    from fmwiss_d2.methods import fmwiss as fmwiss_method
    from fmwiss_d2.modeling.losses.fmwiss import combine_pseudo_masks, soft_bce

    dupl_cfg = tiny_cfg("shapes/dupl.yaml")  # a random DuPL student as a cheap source with new-class scores
    torch.manual_seed(2)
    (tmp_path / "dupl.yaml").write_text(dupl_cfg.dump())
    torch.save({"model": build_model(dupl_cfg).state_dict()}, tmp_path / "dupl.pth")
    _train(_cfg(0, tmp_path))
    opts = ["METHOD.FMWISS.SOURCE", "DuPL", "PSEUDO_LABELS.DUPL.CONFIG_FILE", str(tmp_path / "dupl.yaml"),
            "PSEUDO_LABELS.DUPL.CHECKPOINT", str(tmp_path / "dupl.pth")]

    def one_batch(*more):
        cfg1 = _cfg(1, tmp_path / "step", "FMWISS", *opts, *more,
                    "INCREMENTAL.PREVIOUS_WEIGHTS", str(tmp_path / "step0" / "model_final.pth"))
        method = Trainer.build_train_model(cfg1).train()
        mapper = build_dataset_mapper(cfg1, is_train=True)
        batch = [mapper(r) for r in training_records(cfg1)[:3]]
        torch.manual_seed(0)
        losses = method(batch)
        model = method.model
        with torch.no_grad():
            images = model.preprocess_images(batch)
            raw = images.tensor * model.pixel_std + model.pixel_mean
            pseudo = method.frozen("pseudo_label_source")(raw, [torch.as_tensor(x["image_labels"]) for x in batch],
                                                          method._context())
        return method, images, pseudo, losses

    seen = []
    real_paste = fmwiss_method.paste_instances
    monkeypatch.setattr(fmwiss_method, "paste_instances",
                        lambda *a, **k: seen.append(k.get("avoid")) or real_paste(*a, **k))
    _, _, pseudo, _ = one_batch("METHOD.FMWISS.PASTE_AVOID_NEW", "True")
    new_fg = (pseudo.scores.argmax(1) >= 7) & pseudo.valid  # classes 7-10 are the step's
    assert len(seen) == 1 and new_fg.any() and torch.equal(seen[0], new_fg)
    seen.clear()
    one_batch()  # off by default: nothing to avoid
    assert seen == [None]

    method, images, pseudo, losses = one_batch("METHOD.FMWISS.COPY_PASTE", "False", "METHOD.FMWISS.OLD_MODEL_VETO", "True")
    model = method.model
    with torch.no_grad():
        old = method.old_model.per_pixel_scores(method.old_model.forward_outputs(images.tensor))
        old = old / old.sum(1, keepdim=True)
        veto = pseudo.scores[:, 7:] * old[:, :1]  # by hand: new scores times the old model's background
        masks = combine_pseudo_masks(pseudo.scores, old, method.new_ids, veto_background=0)
        t = method.teacher(model.pixel_features(model.forward_outputs(images.tensor)), images.tensor.shape[-2:])
    assert torch.allclose(masks[:, 7:], veto)
    assert torch.allclose(losses["loss_teacher_bce"].detach(), soft_bce(t["logits"], masks, pseudo.valid), rtol=1e-5)

    method, images, pseudo, losses = one_batch("METHOD.FMWISS.COPY_PASTE", "False",
                                               "METHOD.FMWISS.HARD_PSEUDO_MASKS", "True")
    model = method.model
    with torch.no_grad():
        old = method.old_model.per_pixel_scores(method.old_model.forward_outputs(images.tensor))
        soft = combine_pseudo_masks(pseudo.scores, old / old.sum(1, keepdim=True), method.new_ids)
        hard = torch.zeros_like(soft)
        for b, y, x in torch.cartesian_prod(*(torch.arange(n) for n in (soft.shape[0], *soft.shape[2:]))).tolist():
            hard[b, soft[b, :, y, x].argmax(), y, x] = 1.0  # by hand, pixel by pixel
        t = method.teacher(model.pixel_features(model.forward_outputs(images.tensor)), images.tensor.shape[-2:])
    assert (soft[:, 7:] > 0).any() and not torch.equal(hard, soft)
    assert torch.allclose(losses["loss_teacher_bce"].detach(), soft_bce(t["logits"], hard, pseudo.valid), rtol=1e-5)


def test_the_new_rows_learn_at_their_own_rate(task, tmp_path):
    """``NEW_ROWS_LR_MULTIPLIER`` reaches the optimizer: the student's new-class rows (and only they) get the step's
    rate times it; the old rows keep the step's rate and the teacher its own multiplier."""
    from fmwiss_d2.engine import Trainer

    _train(_cfg(0, tmp_path, "Finetune"))
    cfg1 = _cfg(1, tmp_path, "FMWISS", "METHOD.FMWISS.NEW_ROWS_LR_MULTIPLIER", "7.0",
                "METHOD.FMWISS.TEACHER_LR_MULTIPLIER", "3.0")
    trainer = Trainer(cfg1)
    trainer.resume_or_load(resume=False)
    method = trainer._trainer.model
    lr = {p: g["lr"] for g in trainer._trainer.optimizer.param_groups for p in g["params"]}
    base = cfg1.SOLVER.BASE_LR
    new_layer = method.model.classifier.cls[1]
    assert new_layer.out_features == 4
    for p in new_layer.parameters():
        assert lr[p] == pytest.approx(base * 7.0)
    for p in method.model.classifier.cls[0].parameters():
        assert lr[p] == pytest.approx(base)
    for p in method.teacher.parameters():
        assert lr[p] == pytest.approx(base * 3.0)



def test_the_shapes_config_names_the_wilson_baseline_and_the_ablations():
    """The protocol's named variants of the shapes config: WILSON is FMWISS's training with the localizer's pseudo
    masks; each ablation changes one key of the method."""
    from fmwiss_d2.engine.launch import load_config
    from fmwiss_d2.engine.protocol import resolve_variant

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "shapes", "fmwiss_deeplabv3.yaml"), [])
    expected = {"WILSON": ("METHOD.FMWISS.SOURCE", "Localizer"), "FMWISS-noteacher": ("METHOD.FMWISS.TEACHER", "False"),
                "FMWISS-nocontrastive": ("METHOD.FMWISS.CONTRASTIVE_WEIGHT", "0.0"),
                "FMWISS-nocopypaste": ("METHOD.FMWISS.COPY_PASTE", "False"),
                "FMWISS-CLIP": ("METHOD.FMWISS.SOURCE", "CLIPSource")}
    for name, opts in expected.items():
        v = resolve_variant(name, cfg)
        assert (v.method, v.transform, v.opts) == ("FMWISS", "", opts), name
    assert cfg.METHOD.FMWISS.SOURCE == "CoSegmentation"
