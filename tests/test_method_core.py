"""The method interface: a method owns trainable and frozen parts, runs without a task, trains from image
labels alone without touching a mask, and the pieces it builds on (image labels, pseudo-label sources and their
cache, stages, schedules, learning-rate multipliers)."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

import _example_method  # noqa: F401  (registers ImageLabelHeadExample)
from _hooks import Crash, LossRecorder
from _model_cfg import tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPLAB = "shapes/deeplabv3_semantic.yaml"
TINY = ["DATASETS.TRAIN", '("tiny_shapes_sem_seg_train",)', "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.WARMUP_ITERS", "0", "SEED", "7"]


def _train(cfg, log, *, resume=False, crash_after=None):
    from detectron2.utils.env import seed_all_rng

    from fmwiss_d2.engine import Trainer

    seed_all_rng(cfg.SEED)  # what default_setup does for tools/train_net.py
    trainer = Trainer(cfg)
    trainer.register_hooks([LossRecorder(log, crash_after)])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_a_method_without_a_task_owns_its_parts_resumes_exactly_and_evaluates(tiny_world, tmp_path):
    from fmwiss_d2.engine import Trainer

    def cfg_for(out):
        cfg = tiny_cfg(DEEPLAB, *TINY, "METHOD.NAME", "ImageLabelHeadExample", "OUTPUT_DIR", str(out),
                       "DATASETS.TEST", '("tiny_shapes_sem_seg_val",)')
        cfg.freeze()
        return cfg

    straight, first, resumed = {}, {}, {}
    trainer = _train(cfg_for(tmp_path / "a"), straight)
    method = trainer._trainer.model
    head = set(method.head.parameters())
    in_optimizer = {p for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == set(method.model.parameters()) | head  # trainable parts optimized, frozen ones not
    assert not in_optimizer & set(method.frozen("projection").parameters())
    for g in trainer.optimizer.param_groups:  # the head's own learning rate
        want = trainer.cfg.SOLVER.BASE_LR * (10.0 if g["params"][0] in head else 1.0)
        assert g["initial_lr"] == pytest.approx(want)
    assert method.training and not method.frozen("projection").training  # frozen parts stay in eval mode
    assert "loss_image_labels" in straight[0] and "loss_sem_seg" in straight[0]

    ckpt = torch.load(tmp_path / "a" / "model_final.pth", weights_only=False)
    assert set(ckpt["method"]) == {"head.weight", "head.bias"}  # frozen projection never saved
    assert set(ckpt["model"]) == set(method.model.state_dict())

    with pytest.raises(Crash):
        _train(cfg_for(tmp_path / "b"), first, crash_after=1)
    _train(cfg_for(tmp_path / "b"), resumed, resume=True)
    assert sorted(first) == [0, 1] and sorted(resumed) == [2, 3]
    for it in range(4):
        got = (first if it < 2 else resumed)[it]
        for k, v in straight[it].items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (it, k)
    resumed_ckpt = torch.load(tmp_path / "b" / "model_final.pth", weights_only=False)
    for part in ("model", "method"):
        for k, v in ckpt[part].items():
            assert torch.allclose(v.float(), resumed_ckpt[part][k].float(), rtol=1e-5, atol=1e-6), (part, k)

    evaluated = Trainer.build_eval_model(cfg_for(tmp_path / "a"), str(tmp_path / "a" / "model_final.pth"))
    assert torch.equal(evaluated.head.weight, ckpt["method"]["head.weight"])  # its own parts are loaded too
    assert evaluated.frozen("projection") is None  # evaluation does not build what only training needs
    results = Trainer.test(cfg_for(tmp_path / "a"), evaluated)
    assert 0 <= results["sem_seg"]["mIoU"] <= 100


def test_a_weak_step_reads_no_mask_and_its_losses_ignore_the_masks(tmp_path, monkeypatch):
    """Image-level supervision at step 1: every training mask replaced by noise leaves the losses unchanged,
    and no mask file is opened by the mapper."""
    from detectron2.data import detection_utils

    from fmwiss_d2.data.dataset_mappers import build_dataset_mapper
    from fmwiss_d2.data.datasets.shapes import WorldSpec, ensure_world, register_shapes
    from fmwiss_d2.data.datasets.tasks import register_incremental_task
    from fmwiss_d2.engine.data_loader import training_records
    from fmwiss_d2.engine.incremental import configure_step
    from fmwiss_d2.methods import build_method

    spec = WorldSpec(seed=11, image_size=64, num_train=12, num_val=4)
    root = ensure_world(spec, str(tmp_path / "world"), workers=1)
    register_shapes("weak_shapes", spec, str(tmp_path / "world"))
    task = register_incremental_task("weak_6-4", {"train": "weak_shapes_sem_seg_train", "val": "weak_shapes_sem_seg_val",
                                                  "steps": [list(range(0, 7)), list(range(7, 11))]})
    cfg = tiny_cfg(DEEPLAB, *TINY, "INCREMENTAL.TASK", "weak_6-4", "INCREMENTAL.STEP", "1",
                   "INCREMENTAL.NEW_CLASS_LABELS", "image", "METHOD.NAME", "ImageLabelHeadExample",
                   "OUTPUT_DIR", str(tmp_path / "out"))
    configure_step(cfg)
    assert cfg.INPUT.SUPERVISION == "image"

    opened = []
    real_read = detection_utils.read_image
    monkeypatch.setattr(detection_utils, "read_image", lambda fn, *a, **k: opened.append(fn) or real_read(fn, *a, **k))

    def losses():
        records = training_records(cfg)
        mapper = build_dataset_mapper(cfg, is_train=True)
        torch.manual_seed(0)
        np.random.seed(0)
        method = build_method(cfg, __import__("detectron2.modeling", fromlist=["build_model"]).build_model(cfg),
                              task, 1)
        method.prepare_training(cfg)
        batch = [mapper(r) for r in records[:4]]
        assert all("sem_seg" not in x and "instances" not in x for x in batch)
        return records, {k: v.item() for k, v in method.train()(batch).items()}

    records, before = losses()
    assert records and all(set(r["image_labels"]) <= {7, 8, 9, 10} for r in records)  # current classes only
    assert any(r["image_labels"] for r in records)
    masks = sorted(os.path.join(root, "sem_seg", "train", f) for f in os.listdir(os.path.join(root, "sem_seg", "train")))
    rng = np.random.default_rng(0)
    for fn in masks:
        size = Image.open(fn).size
        Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(fn)
    from fmwiss_d2.utils.manifest import write_manifest

    write_manifest(root)  # the world's own check would (rightly) call the noisy masks damage
    opened.clear()
    _, after = losses()
    assert after == before
    assert opened and not {os.path.realpath(f) for f in opened} & {os.path.realpath(f) for f in masks}


def test_image_labels_are_model_ids_of_the_steps_classes(handmade):
    from fmwiss_d2.data.datasets.tasks import dataset_image_labels, register_incremental_task

    def labels(task_name, step, split="train"):
        return {r["image_id"]: r["image_labels"] for r in DatasetCatalog.get(f"{task_name}_overlap_step{step}_{split}")}

    register_incremental_task("hand_ab-cd", {"train": "handmade_train", "val": "handmade_val",
                                             "steps": [["background", "a", "b"], ["c", "d"]]})
    # model ids: background 0, a 1, b 2, c 3, d 4; images (conftest): 0 {a} 1 {a,c} 2 {c} 3 {c,d} 4 {d,b} 6 {b}
    assert labels("hand_ab-cd", 0) == {0: [1], 1: [1], 4: [2], 6: [2]}  # future c, d are background: no label
    assert labels("hand_ab-cd", 1) == {1: [3], 2: [3], 3: [3, 4], 4: [4]}  # old a, b are background: no label
    register_incremental_task("hand_cd-ab", {"train": "handmade_train", "val": "handmade_val",
                                             "steps": [["background", "c", "d"], ["a", "b"]]})
    # reordered: c 1, d 2, a 3, b 4
    assert labels("hand_cd-ab", 0) == {1: [1], 2: [1], 3: [1, 2], 4: [2]}
    assert labels("hand_cd-ab", 1) == {0: [3], 1: [3], 4: [4], 6: [4]}
    assert labels("hand_cd-ab", 1, "val")[1] == [1, 3]  # evaluation: every seen class
    plain = dataset_image_labels("handmade_train", DatasetCatalog.get("handmade_train"))
    assert [r["image_labels"] for r in plain] == [[1], [1, 3], [3], [3, 4], [2, 4], [], [2]]


class _FakeCLIP:
    """Two patches with embeddings (1, 0) and (0, 1); text embeddings from a table."""

    pixel_mean = torch.zeros(1)
    TEXT = {"cat": (1.0, 0.0), "dog": (0.6, 0.8), "sky": (0.0, 1.0)}

    def dense_embeddings(self, images):
        return torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2).repeat(len(images), 1, 1, 1)

    def text_embeddings(self, names):
        return torch.tensor([self.TEXT[n] for n in names])


def test_clip_source_scores_only_the_images_labels_and_the_background():
    from fmwiss_d2.pseudo_labels import PseudoLabelContext
    from fmwiss_d2.pseudo_labels.sources import CLIPSource

    source = CLIPSource(clip=_FakeCLIP(), background_names=["sky"], temperature=0.5, threshold=0.8)
    ctx = PseudoLabelContext(class_names=["background", "cat", "dog"])
    out = source(torch.zeros(1, 3, 1, 2), [torch.tensor([1])], ctx)  # the image is labelled "cat" only
    hi = math.exp(2) / (math.exp(2) + 1)  # softmax([1, 0] / 0.5)
    expected = torch.tensor([[[1 - hi, hi]], [[hi, 1 - hi]], [[0.0, 0.0]]])  # background, cat, dog
    assert torch.allclose(out.scores[0], expected, atol=1e-6)
    assert out.valid.tolist() == [[[True, True]]] and out.hard().tolist() == [[[1, 0]]]
    strict = CLIPSource(clip=_FakeCLIP(), background_names=["sky"], temperature=0.5, threshold=0.9)
    assert strict(torch.zeros(1, 3, 1, 2), [torch.tensor([1])], ctx).hard().tolist() == [[[255, 255]]]


class _CountingSource:
    """A source whose score for each labelled class is the image's mean value / 255; counts its images."""

    def __init__(self, fail_on_call=None):
        self.images, self.calls, self.fail_on_call = 0, 0, fail_on_call

    def cache_key(self):
        return {"source": "counting"}

    def __call__(self, images, image_labels, context):
        from fmwiss_d2.pseudo_labels import PseudoLabels

        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("killed")
        self.images += len(images)
        n, _, h, w = images.shape
        scores = torch.zeros(n, len(context.class_names), h, w)
        for b, labels in enumerate(image_labels):
            scores[b, labels] = images[b].mean() / 255
        return PseudoLabels(scores, torch.ones(n, h, w, dtype=torch.bool))


def test_the_pseudo_label_cache_is_reused_recomputed_on_change_and_never_half_written(tmp_path):
    from fmwiss_d2.pseudo_labels import PseudoLabelCache, PseudoLabelContext

    records = []
    for i in range(5):
        fn = str(tmp_path / f"{i}.png")
        Image.fromarray(np.full((4, 6, 3), 50 * i, np.uint8)).save(fn)
        records.append({"file_name": fn, "height": 4, "width": 6, "image_labels": [1 + i % 2]})
    ctx = PseudoLabelContext(class_names=["background", "a", "b"])
    cache_root = str(tmp_path / "cache")

    killed = _CountingSource(fail_on_call=2)
    cache = PseudoLabelCache(killed, "toy", records, cache_root, num_classes=3)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(ctx, batch_size=2)
    assert cache.missing() == [2, 3, 4] and not cache.complete  # the first batch is whole, nothing else
    assert not [f for f in os.listdir(cache.folder) if f.startswith(".tmp")]
    source = _CountingSource()
    assert PseudoLabelCache(source, "toy", records, cache_root, 3).fill(ctx, batch_size=2) == 3
    assert source.images == 3  # only the missing images were computed
    for i in range(5):
        got = cache.load(i)
        assert got.scores.shape == (1, 3, 4, 6)
        assert torch.allclose(got.scores[0, 1 + i % 2], torch.full((4, 6), round(50 * i / 255 * 255) / 255), atol=1 / 255)
        assert got.scores[0, 2 - i % 2].abs().sum() == 0 and bool(got.valid.all())

    again = _CountingSource()
    reused = PseudoLabelCache(again, "toy", records, cache_root, 3)
    assert reused.folder == cache.folder and reused.fill(ctx) == 0 and again.calls == 0

    Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(records[3]["file_name"])  # the dataset changed
    os.utime(records[3]["file_name"], ns=(1, 1))
    changed = PseudoLabelCache(_CountingSource(), "toy", records, cache_root, 3)
    assert changed.folder != cache.folder and changed.missing() == list(range(5))


def test_stages_run_once_rerun_on_a_new_key_and_are_stamped_only_when_finished(tmp_path):
    from fmwiss_d2.engine.protocol import Stage, run_stages

    runs = []

    def work(name, fail=False):
        def run():
            runs.append(name)
            if fail:
                raise RuntimeError("interrupted")
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "out.txt").write_text(name)
        return run

    a = Stage("a", str(tmp_path / "a"), work("a"), outputs=["out.txt"], key={"lr": 1})
    b = Stage("b", str(tmp_path / "b"), work("b", fail=True), outputs=["out.txt"])
    with pytest.raises(RuntimeError, match="interrupted"):
        run_stages([a, b])
    assert not (tmp_path / "b" / "stage.json").exists()
    b.run = work("b")
    assert run_stages([a, b]) == ["skipped", "ran"] and runs == ["a", "b", "b"]
    a2 = Stage("a", str(tmp_path / "a"), work("a"), outputs=["out.txt"], key={"lr": 2})
    assert run_stages([a2, b]) == ["ran", "skipped"]
    os.remove(tmp_path / "b" / "out.txt")  # an output gone: not finished
    assert run_stages([b]) == ["ran"]
    lost = Stage("c", str(tmp_path / "c"), lambda: None, outputs=["never.txt"])
    with pytest.raises(RuntimeError, match="without writing"):
        run_stages([lost])


def test_a_stage_key_changes_when_its_config_or_a_base_file_is_edited(tmp_path):
    """Editing the config file, or a file it inherits through ``_BASE_``, must rerun the stages that used it."""
    from argparse import Namespace

    from fmwiss_d2.engine.protocol import stage_key

    (tmp_path / "base").mkdir()
    base = tmp_path / "base" / "Base.yaml"
    base.write_text("SOLVER:\n  MAX_ITER: 800\n")
    child = tmp_path / "run.yaml"
    child.write_text("_BASE_: base/Base.yaml\nSEED: 1\n")
    args = Namespace(config_file=str(child), opts=["SEED", "2"])
    key = stage_key(args, ["OUTPUT_DIR", "x"])
    assert stage_key(args, ["OUTPUT_DIR", "x"]) == key  # nothing edited: the same key
    assert key["opts"] == ["SEED", "2", "OUTPUT_DIR", "x"]
    base.write_text("SOLVER:\n  MAX_ITER: 150\n")
    key2 = stage_key(args, ["OUTPUT_DIR", "x"])
    assert key2["config_digest"] != key["config_digest"]
    child.write_text("_BASE_: base/Base.yaml\nSEED: 3\n")
    assert stage_key(args, ["OUTPUT_DIR", "x"])["config_digest"] not in (key["config_digest"], key2["config_digest"])


def test_schedule_reads_the_iteration_from_one_place():
    from fmwiss_d2.methods import Method, cosine_schedule

    assert cosine_schedule(0.7, 0.55, 2000, 20000, 0) == 0.7
    assert cosine_schedule(0.7, 0.55, 2000, 20000, 11000) == pytest.approx(0.625)  # half-way: the mean
    assert cosine_schedule(0.7, 0.55, 2000, 20000, 6500) == pytest.approx(0.55 + 0.15 * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_schedule(0.7, 0.55, 2000, 20000, 25000) == 0.55
    method = Method(torch.nn.Linear(1, 1), max_iter=10)
    assert method.iteration == 0  # outside a training loop
    with EventStorage(start_iter=7):
        assert method.iteration == 7 and method.max_iter == 10


def test_backbone_multiplier_reaches_the_backbone_inside_a_method_at_an_incremental_step():
    from detectron2.modeling import build_model

    from fmwiss_d2.data.datasets.tasks import get_task
    from fmwiss_d2.engine.incremental import configure_step
    from fmwiss_d2.engine.solver import build_optimizer
    from fmwiss_d2.methods import build_method

    cfg = configure_step(tiny_cfg(DEEPLAB, "INCREMENTAL.TASK", "shapes_6-4", "METHOD.NAME", "MiB",
                                  "SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.BASE_LR", "0.01"))
    model = build_model(cfg)
    method = build_method(cfg, model, get_task("shapes_6-4"), 0)
    lr = {id(g["params"][0]): g["lr"] for g in build_optimizer(cfg, method).param_groups}
    assert all(lr[id(p)] == pytest.approx(0.001) for p in model.backbone.parameters())
    assert all(lr[id(p)] == pytest.approx(0.01) for p in model.classifier.parameters())


def test_a_manifest_leaves_out_the_file_another_writer_is_still_writing(tmp_path):
    """Two runs may fill one pseudo-label cache at once: the first to finish writes the manifest while the other
    still holds a temporary file, which it renames a moment later. That file must not be listed."""
    import json

    from fmwiss_d2.utils.io import atomic_open
    from fmwiss_d2.utils.manifest import check_manifest, write_manifest

    (tmp_path / "0000000.npz").write_bytes(b"done")
    with atomic_open(str(tmp_path / "0000001.npz"), "wb") as f:  # the other run, mid-write
        f.write(b"half")
        write_manifest(str(tmp_path))
    assert json.loads((tmp_path / "manifest.json").read_text())["files"] == {"0000000.npz": 4}
    assert check_manifest("the pseudo-label cache", str(tmp_path))


def test_damaged_derived_caches_are_named_with_their_fix(tmp_path, handmade):
    """The pseudo-label cache and the per-image class table check themselves (the world: test_shapes)."""
    import json

    from fmwiss_d2.data.datasets.tasks import image_class_table
    from fmwiss_d2.pseudo_labels import PseudoLabelCache, PseudoLabelContext
    from fmwiss_d2.utils.errors import DamagedCacheError

    records = []
    for i in range(3):
        fn = str(tmp_path / f"{i}.png")
        Image.fromarray(np.full((4, 6, 3), 9 * i, np.uint8)).save(fn)
        records.append({"file_name": fn, "height": 4, "width": 6, "image_labels": [1]})
    cache = PseudoLabelCache(_CountingSource(), "toy", records, str(tmp_path / "cache"), num_classes=2)
    cache.fill(PseudoLabelContext(class_names=["background", "a"]))
    assert cache.complete
    data = open(cache.path(1), "rb").read()
    open(cache.path(1), "wb").write(data[: len(data) // 2])
    with pytest.raises(DamagedCacheError, match=r"pseudo-label cache .* 0000001.npz has \d+ bytes, expected \d+.*rm -rf"):
        cache.complete
    with pytest.raises(DamagedCacheError, match=r"0000001.npz.*\(image .*1.png\) cannot be read.*delete it"):
        cache.load(1)

    table_dir = str(tmp_path / "tables")
    assert image_class_table("handmade_train", handmade, cache_dir=table_dir)[1] == [0, 1, 3]
    (path,) = [os.path.join(table_dir, "splits", f) for f in os.listdir(os.path.join(table_dir, "splits"))]
    with open(path, "w") as f:
        f.write(json.dumps([[0]])[:-2])  # cut short
    with pytest.raises(DamagedCacheError, match="per-image class cache .* is unreadable.*delete it and rerun"):
        image_class_table("handmade_train", handmade, cache_dir=table_dir)
