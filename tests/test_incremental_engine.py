"""Incremental steps on the real models: MiB's initialization, the old model, stamped checkpoints, the runner."""
import json
import os

import pytest
import torch
from detectron2.modeling import build_model

from _model_cfg import tiny_cfg
from fmwiss_d2.data.dataset_mappers.semantic import semantic_to_instances
from fmwiss_d2.data.datasets.tasks import get_task
from fmwiss_d2.engine.incremental import CheckpointMismatchError, IncrementalCheckpointer, configure_step
from fmwiss_d2.engine.launch import argument_parser
from fmwiss_d2.engine.protocol import run_incremental
from fmwiss_d2.methods import build_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPLAB = "shapes/deeplabv3_semantic.yaml"
M2F = "shapes/mask2former_semantic.yaml"


def _step_cfg(config, step, method="MiB", out="/tmp/unused", transform=""):
    cfg = tiny_cfg(config, "INCREMENTAL.TASK", "shapes_6-4", "INCREMENTAL.STEP", str(step),
                   "METHOD.NAME", method, "INCREMENTAL.TRANSFORM", transform, "OUTPUT_DIR", out)
    return configure_step(cfg)


def _pair(config):
    """(old step-0 model, new step-1 model loaded from it and initialized by MiB), both in eval mode."""
    torch.manual_seed(0)
    old = build_model(_step_cfg(config, 0)).eval()
    cfg1 = _step_cfg(config, 1)
    new = build_model(cfg1).eval()
    missing = new.load_state_dict(old.state_dict(), strict=False).missing_keys
    assert all(".cls.1." in k for k in missing) and missing  # only the new classifier group is absent
    build_method(cfg1, new, get_task("shapes_6-4"), 1).start_step()
    return old, new


def test_configure_step_fills_datasets_classes_and_previous_weights():
    cfg = _step_cfg(DEEPLAB, 1, out="/runs/x")
    assert cfg.DATASETS.TRAIN == ("shapes_6-4_overlap_step1_train",)
    assert cfg.DATASETS.TEST == ("shapes_6-4_overlap_step1_test", "shapes_6-4_overlap_step1_val")
    assert list(cfg.MODEL.CLASSES_PER_STEP) == [7, 4] and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 11
    assert cfg.OUTPUT_DIR == "/runs/x/step1" and cfg.MODEL.WEIGHTS == "/runs/x/step0/model_final.pth"
    joint = _step_cfg(DEEPLAB, 1, method="Finetune", out="/runs/j", transform="Joint")
    assert joint.DATASETS.TRAIN == ("shapes_6-4-joint_overlap_step0_train",)
    assert joint.DATASETS.TEST == ("shapes_6-4_overlap_step1_test", "shapes_6-4_overlap_step1_val") and list(joint.MODEL.CLASSES_PER_STEP) == [11]
    assert joint.OUTPUT_DIR == "/runs/j/joint" and joint.MODEL.WEIGHTS == cfg.MODEL.WEIGHTS.__class__()
    with pytest.raises(IndexError, match="Step 2 is out of range"):
        _step_cfg(DEEPLAB, 2)


def test_mib_init_preserves_the_old_per_pixel_prediction():
    old, new = _pair(DEEPLAB)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        p_old = old.forward_outputs(x)["pred_logits"].softmax(1)
        p_new = new.forward_outputs(x)["pred_logits"].softmax(1)
    assert p_new.shape[1] == 11 and p_old.shape[1] == 7
    assert torch.allclose(p_new[:, 1:7], p_old[:, 1:7], atol=1e-5)  # old classes unchanged
    assert torch.allclose(p_new[:, [0, 7, 8, 9, 10]].sum(1), p_old[:, 0], atol=1e-5)  # bg mass shared
    assert torch.allclose(p_new[:, 7], p_old[:, 0] / 5, atol=1e-5)


def test_mib_init_preserves_the_old_query_classes_in_mask_classification():
    old, new = _pair(M2F)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        o, n = old.forward_outputs(x), new.forward_outputs(x)
    p_old, p_new = o["pred_logits"].softmax(-1), n["pred_logits"].softmax(-1)  # [..7 classes, no-object]
    assert p_new.shape[-1] == 12 and p_old.shape[-1] == 8
    assert torch.allclose(p_new[..., :7], p_old[..., :7], atol=1e-5)
    assert torch.allclose(p_new[..., 7:].sum(-1), p_old[..., 7], atol=1e-5)  # no-object + new = old no-object
    assert torch.allclose(n["pred_masks"], o["pred_masks"])


def _step1_batch(config, *opts):
    """(step-1 config with ``opts``, two mapped images of the tiny world) for one MiB training step."""
    from fmwiss_d2.data.dataset_mappers import build_dataset_mapper
    from detectron2.data import DatasetCatalog

    cfg1 = _step_cfg(config, 1)
    cfg1.defrost()
    cfg1.merge_from_list(["DATASETS.TRAIN", ("tiny_shapes_sem_seg_train",), *opts])
    mapper = build_dataset_mapper(cfg1, is_train=True)
    return cfg1, [mapper(r) for r in DatasetCatalog.get("tiny_shapes_sem_seg_train")[:2]]


@pytest.mark.parametrize("config", [DEEPLAB, M2F])
def test_mib_training_step_uses_the_frozen_old_model(config, tiny_world):
    old, new = _pair(config)
    cfg1, batch = _step1_batch(config)
    method = build_method(cfg1, new, get_task("shapes_6-4"), 1)
    method.add_frozen("old_model", old)
    method.train()
    assert not old.training and all(not p.requires_grad for p in old.parameters())
    assert set(method.state_dict()) == {"model." + k for k in new.state_dict()}  # old model never saved
    assert {id(p) for p in method.parameters()} == {id(p) for p in new.parameters()}  # nor optimized
    losses = method(batch)
    assert "loss_kd" in losses and torch.isfinite(losses["loss_kd"]) and losses["loss_kd"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in old.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in new.classifier.cls[1].parameters())


def test_checkpoints_are_stamped_and_refused_across_tasks_and_steps(tmp_path):
    model = build_model(_step_cfg(DEEPLAB, 0))
    stamp0 = {"task": "shapes_6-4", "step": 0, "classes": get_task("shapes_6-4").seen_classes(0)}
    IncrementalCheckpointer(model, str(tmp_path), identity=stamp0, allowed_steps={0}).save("step0")
    path = str(tmp_path / "step0.pth")
    assert torch.load(path, weights_only=False)["incremental"] == stamp0
    stamp1 = {"task": "shapes_6-4", "step": 1, "classes": get_task("shapes_6-4").seen_classes(1)}
    ck = IncrementalCheckpointer(model, identity=stamp1, allowed_steps={0, 1})
    ck.load(path)
    assert ck.loaded_step == 0
    other = {"task": "shapes_6-2-2", "step": 1, "classes": get_task("shapes_6-2-2").seen_classes(1)}
    with pytest.raises(CheckpointMismatchError, match="belongs to task 'shapes_6-4'.*not to task 'shapes_6-2-2'"):
        IncrementalCheckpointer(model, identity=other, allowed_steps={0, 1}).load(path)
    stamp2 = {"task": "shapes_6-4", "step": 2, "classes": stamp1["classes"]}
    with pytest.raises(CheckpointMismatchError, match=r"from step 0 .* step 2 can load only step\(s\) \[1, 2\]"):
        IncrementalCheckpointer(model, identity=stamp2, allowed_steps={1, 2}).load(path)
    torch.save({"model": model.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointMismatchError, match="not written by an incremental step"):
        IncrementalCheckpointer(model, identity=stamp1, allowed_steps={0, 1}).load(str(tmp_path / "plain.pth"))
    IncrementalCheckpointer(model, identity=stamp0, allowed_steps={0}).load(str(tmp_path / "plain.pth"))


def test_runner_trains_every_step_then_skips_finished_steps(tiny_world, tmp_path, monkeypatch):
    spec, cache, _ = tiny_world
    argv = ["--config-file", os.path.join(ROOT, "configs", DEEPLAB), "INCREMENTAL.TASK", "shapes_6-4", "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
            "SHAPES.CACHE_DIR", cache, "SHAPES.SEED", str(spec.seed), "SHAPES.IMAGE_SIZE", str(spec.image_size),
            "SHAPES.NUM_TRAIN", str(spec.num_train), "SHAPES.NUM_VAL", str(spec.num_val), "SHAPES.NUM_TEST", "6",
            "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "INPUT.CROP.SIZE", "(64, 64)",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64"]
    try:
        summary = run_incremental(argument_parser().parse_args(argv), ["MiB", "Finetune"])
        root = tmp_path / "shapes_6-4_overlap"
        assert [(r["method"], r["step"]) for r in summary["steps"]] == [("MiB", 0), ("MiB", 1), ("Finetune", 0), ("Finetune", 1)]
        assert (root / "summary.csv").is_file() and (root / "summary.png").is_file()
        # reported on the held-out test split; val (where recipes are chosen) is evaluated and kept beside it
        assert summary["split"] == "test" and {r["split"] for r in summary["steps"]} == {"test"}
        assert sorted((r["method"], r["step"], r["split"]) for r in summary["all_splits"]) == sorted(
            (m, k, s) for m in ("MiB", "Finetune") for k in (0, 1) for s in ("val", "test"))
        assert {r["dataset"] for r in summary["steps"]} == {"shapes_6-4_overlap_step0_test", "shapes_6-4_overlap_step1_test"}
        assert (root / "step0" / "model_final.pth").is_file()  # step 0 is shared by the methods
        stamp = torch.load(root / "MiB" / "step1" / "model_final.pth", weights_only=False)["incremental"]
        assert stamp["step"] == 1 and len(stamp["classes"]) == 11
        log1 = (root / "MiB" / "step1" / "log.txt").read_text()
        assert "Step 1 starts from step 0's model" in log1 and "loss_kd" in log1
        ft_log = (root / "Finetune" / "step1" / "log.txt").read_text()
        assert f"Loading from {root / 'step0' / 'model_final.pth'}" in ft_log and "loss_kd" not in ft_log
        assert not (root / "MiB" / "step0").exists() and not (root / "Finetune" / "step0").exists()

        def must_not_train(*a, **k):
            raise AssertionError("a finished step was trained again")

        again = run_incremental(argument_parser().parse_args(argv), ["MiB", "Finetune"], train=must_not_train)
        assert again["steps"] == json.loads(json.dumps(summary["steps"]))
    finally:
        from detectron2.config import get_cfg

        from fmwiss_d2.config import add_fmwiss_config
        from fmwiss_d2.data.datasets.shapes import register_shapes_from_cfg

        cfg = get_cfg()
        add_fmwiss_config(cfg)
        register_shapes_from_cfg(cfg)  # back to the default world for other tests


def test_user_task_on_a_detectron2_load_sem_seg_dataset_trains_and_evaluates(tmp_path):
    """A dataset registered the detectron2 way (load_sem_seg over two folders) becomes an incremental
    benchmark with one YAML file; step 0 trains and is evaluated with the old/new/all split."""
    import numpy as np
    from PIL import Image
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_sem_seg

    from fmwiss_d2.data.datasets.tasks import load_task_file

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        (tmp_path / split / "img").mkdir(parents=True)
        (tmp_path / split / "gt").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((32, 32), np.uint8)
            mask[4:14, 4:14] = 1 + i % 3  # one object of class 1, 2 or 3
            img = (rng.random((32, 32, 3)) * 60).astype(np.uint8)
            img[mask > 0] = (200, 60 * (i % 3), 30)
            Image.fromarray(img).save(tmp_path / split / "img" / f"{i}.png")
            Image.fromarray(mask).save(tmp_path / split / "gt" / f"{i}.png")
        name = f"mydata_{split}"
        DatasetCatalog.register(name, lambda s=split: load_sem_seg(str(tmp_path / s / "gt"), str(tmp_path / s / "img"),
                                                                   gt_ext="png", image_ext="png"))
        MetadataCatalog.get(name).set(stuff_classes=["background", "cat", "dog", "cow"], ignore_label=255)
    task_file = tmp_path / "mytask.yaml"
    task_file.write_text("name: my_2-1\ntrain: mydata_train\nval: mydata_val\nsteps:\n"
                         "  - [background, cat, dog]\n  - [cow]\n")
    load_task_file(str(task_file))
    from fmwiss_d2.engine.launch import main

    args = argument_parser().parse_args([
        "--config-file", os.path.join(ROOT, "configs", DEEPLAB), "INCREMENTAL.TASK", str(task_file),
        "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2", "INPUT.CROP.ENABLED", "False", "INPUT.MIN_SIZE_TRAIN", "(32,)",
        "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64"])
    results = main(args)
    res = results["sem_seg"] if "sem_seg" in results else results["my_2-1_overlap_step0_val"]["sem_seg"]
    assert {"mIoU_old", "mIoU_new", "mIoU_all", "IoU_background"} <= set(res)
    saved = tmp_path / "out" / "step0" / "inference" / "incremental_results_my_2-1_overlap_step0_val.json"
    assert json.loads(saved.read_text())["classes"] == ["background", "cat", "dog"]


def test_mib_pseudo_labels_reach_the_mask_classification_criterion(tiny_world):
    """With METHOD.MIB.PSEUDO_LABEL the criterion sees old-class targets that the step-1 labels lack,
    and each of them covers only pixels the step-1 labels call background."""
    old, new = _pair(M2F)
    cfg1, batch = _step1_batch(M2F, "METHOD.MIB.PSEUDO_LABEL", True)
    for x in batch:  # step-1 labels: only background and new classes, as the task's label_lut makes them
        sem = x["sem_seg"].clone()
        sem[(sem >= 1) & (sem <= 6)] = 0
        x["sem_seg"], x["instances"] = sem, semantic_to_instances(sem, 255)
    seen = []
    real_losses = new.losses
    new.losses = lambda outputs, targets, **kw: seen.append(targets) or real_losses(outputs, targets, **kw)
    method = build_method(cfg1, new, get_task("shapes_6-4"), 1)
    method.add_frozen("old_model", old)
    losses = method.train()(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    (targets,) = seen
    for x, t in zip(batch, targets):
        bg = x["sem_seg"] == 0
        for c, m in zip(t["labels"].tolist(), t["masks"] > 0.5):
            if 1 <= c <= 6:
                h, w = bg.shape
                assert not (m[:h, :w] & ~bg).any()  # pseudo labels only on background pixels
    assert any(1 <= c <= 6 for t in targets for c in t["labels"].tolist())


def test_epochs_set_each_steps_iterations_from_its_own_data(tiny_world):
    """INCREMENTAL.EPOCHS at step 0 and STEP_EPOCHS at later steps: MAX_ITER = ceil(epochs x images / batch), the
    images being the step's filtered training set."""
    import math

    from detectron2.data import DatasetCatalog

    from fmwiss_d2.data.datasets.tasks import register_incremental_task

    register_incremental_task("tiny_ep_6-4", {"train": "tiny_shapes_sem_seg_train", "val": "tiny_shapes_sem_seg_val",
                                              "steps": [list(range(0, 7)), list(range(7, 11))]})

    def max_iter(step, *opts):
        cfg = tiny_cfg(DEEPLAB, "INCREMENTAL.TASK", "tiny_ep_6-4", "INCREMENTAL.STEP", str(step),
                       "SOLVER.IMS_PER_BATCH", "4", "INCREMENTAL.EPOCHS", "3", *opts)
        return configure_step(cfg).SOLVER.MAX_ITER

    n0 = len(DatasetCatalog.get("tiny_ep_6-4_overlap_step0_train"))
    n1 = len(DatasetCatalog.get("tiny_ep_6-4_overlap_step1_train"))
    assert n0 != n1 and n1 > 0
    assert max_iter(0) == math.ceil(3 * n0 / 4) and max_iter(1) == math.ceil(3 * n1 / 4)
    assert max_iter(0, "INCREMENTAL.STEP_EPOCHS", "5") == math.ceil(3 * n0 / 4)  # step 0 keeps EPOCHS
    assert max_iter(1, "INCREMENTAL.STEP_EPOCHS", "5") == math.ceil(5 * n1 / 4)
