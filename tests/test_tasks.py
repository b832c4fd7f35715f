"""Incremental task splits: MiB's image filtering and label remapping, checked on hand-made masks."""
import numpy as np
import pytest
from PIL import Image

from fmwiss_d2.data.datasets.tasks import (
    TaskDefinitionError, builtin_task_table, get_task, register_incremental_task, task_from_dict,
)

from conftest import HANDMADE_CLASSES as CLASSES  # noqa: E402


def _ids(name):
    from detectron2.data import DatasetCatalog

    return sorted(r["image_id"] for r in DatasetCatalog.get(name))


def test_mib_filtering_overlap_vs_disjoint(handmade):
    register_incremental_task("hand_2-1-1", {"train": "handmade_train", "val": "handmade_val",
                                             "steps": [[0, 1, 2], [3], [4]]})
    # worked by hand from IMAGES: overlap keeps images showing a current class; disjoint also needs
    # every present class to be old or current
    expected = {
        ("overlap", 0): [0, 1, 4, 6], ("disjoint", 0): [0, 6],
        ("overlap", 1): [1, 2, 3], ("disjoint", 1): [1, 2],
        ("overlap", 2): [3, 4], ("disjoint", 2): [3, 4],
    }
    for (setting, step), ids in expected.items():
        assert _ids(f"hand_2-1-1_{setting}_step{step}_train") == ids, (setting, step)
    # evaluation keeps images with at least one seen (non-background) class, in both settings
    for setting in ("overlap", "disjoint"):
        assert _ids(f"hand_2-1-1_{setting}_step0_val") == [0, 1, 4, 6]
        assert _ids(f"hand_2-1-1_{setting}_step1_val") == [0, 1, 2, 3, 4, 6]
        assert _ids(f"hand_2-1-1_{setting}_step2_val") == [0, 1, 2, 3, 4, 6]


def test_label_remapping_train_and_val(handmade):
    from detectron2.data import MetadataCatalog

    register_incremental_task("hand_2-1-1", {"train": "handmade_train", "val": "handmade_val",
                                             "steps": [[0, 1, 2], [3], [4]]})
    mask = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    lut = np.array(MetadataCatalog.get("hand_2-1-1_overlap_step1_train").label_lut, np.uint8)
    # step 1 training: only c (3) keeps its label; old a, b and future d become background
    assert lut[mask].tolist() == [[0, 0, 0], [3, 0, 255]]
    lut = np.array(MetadataCatalog.get("hand_2-1-1_disjoint_step1_val").label_lut, np.uint8)
    # evaluation after step 1: seen classes kept, future d ignored
    assert lut[mask].tolist() == [[0, 1, 2], [3, 255, 255]]
    meta = MetadataCatalog.get("hand_2-1-1_overlap_step2_val")
    assert meta.stuff_classes == CLASSES and meta.old_classes == [1, 2, 3] and meta.new_classes == [4]
    assert MetadataCatalog.get("hand_2-1-1_overlap_step0_train").old_classes == []


def test_class_order_other_than_ids_uses_the_lookup(handmade):
    from detectron2.data import MetadataCatalog

    task = register_incremental_task("hand_perm", {"train": "handmade_train", "val": "handmade_val",
                                                   "steps": [["background", "d"], ["b", "a"], ["c"]]})
    assert task.class_order == ["background", "d", "b", "a", "c"]
    mask = np.array([0, 1, 2, 3, 4, 255], np.uint8)
    train1 = np.array(MetadataCatalog.get("hand_perm_overlap_step1_train").label_lut, np.uint8)
    assert train1[mask].tolist() == [0, 3, 2, 0, 0, 255]
    val2 = np.array(MetadataCatalog.get("hand_perm_overlap_step2_val").label_lut, np.uint8)
    assert val2[mask].tolist() == [0, 3, 2, 4, 1, 255]


@pytest.mark.parametrize("steps,message", [
    ([["background", "a", "b"], ["c"], ["zebra"]], "unknown class 'zebra'"),
    ([["background", "a", "b"], ["b", "c"], ["d"]], "class 'b' appears in step 0 and step 1"),
    ([["background", "a", "b"], ["c"]], "classes in no step: ['d']"),
    ([["background", "a", "b"], [], ["c", "d"]], "step 1 has no classes"),
    ([["background", "a", "b"], ["c"], [9]], "class id 9 is out of range"),
    ([["a", "background", "b"], ["c"], ["d"]], "step 0 must begin with the background"),
])
def test_malformed_definitions_name_the_offending_entry(handmade, steps, message):
    with pytest.raises(TaskDefinitionError) as e:
        task_from_dict("bad", {"train": "handmade_train", "val": "handmade_val", "steps": steps})
    assert message in str(e.value) and "task 'bad'" in str(e.value)


def test_other_malformed_fields(handmade):
    base = {"train": "handmade_train", "val": "handmade_val", "steps": [[0, 1, 2, 3, 4]]}
    with pytest.raises(TaskDefinitionError, match="unknown setting 'sideways'"):
        task_from_dict("bad", {**base, "settings": ["sideways"]})
    with pytest.raises(TaskDefinitionError, match=r"unknown keys \['stepz'\]"):
        task_from_dict("bad", {**base, "stepz": []})
    with pytest.raises(TaskDefinitionError, match="'nowhere' is not registered"):
        task_from_dict("bad", {**base, "train": "nowhere"})


@pytest.mark.parametrize("field,message", [
    ({"steps": "abc"}, "'steps' expects a list, e.g. [[background, disc], [square]], not str 'abc'"),
    ({"steps": [["background", "a", "b"], "cd"]}, "step 1 expects a list, e.g. [disc, square], not str 'cd'"),
    ({"steps": [["background", "a", "b"], {"classes": "cd"}]}, "'classes' of step 1 expects a list"),
    ({"settings": "overlap"}, "'settings' expects a list, e.g. [overlap, disjoint], not str 'overlap'"),
    ({"aliases": ["a", "b"]}, "'aliases' expects a mapping {dataset class: task class}"),
    ({"background": ["background"]}, "'background' must be a class name or null"),
])
def test_a_string_where_a_list_belongs_is_refused(handmade, field, message):
    """Strings are iterable: without a type check "abc" would be read as the classes 'a', 'b', 'c'."""
    spec = {"train": "handmade_train", "val": "handmade_val", "steps": [["background", "a", "b"], ["c", "d"]]}
    with pytest.raises(TaskDefinitionError) as e:
        task_from_dict("bad", {**spec, **field})
    assert message in str(e.value) and "task 'bad'" in str(e.value)


def test_unknown_task_and_step_out_of_range(handmade):
    with pytest.raises(KeyError, match="Unknown incremental task 'voc_16-4'.*shapes_6-4"):
        get_task("voc_16-4")
    task = get_task("shapes_6-4")
    with pytest.raises(IndexError, match="Step 2 is out of range for task 'shapes_6-4'.*0..1"):
        task.label_lut(2, "train", CLASSES)
    with pytest.raises(IndexError, match="out of range"):
        task.seen_classes(-1)


def test_builtin_tables_follow_mib():
    table = builtin_task_table()
    voc_names = ["background"] + [f"v{i}" for i in range(1, 21)]
    ade_names = ["background"] + [f"a{i}" for i in range(1, 151)]
    build = lambda n, names: task_from_dict(n, table[n], dataset_classes=lambda _: names)
    t = build("voc_15-1", voc_names)
    assert t.num_steps == 6 and [t.new_class_ids(k) for k in range(1, 6)] == [[16], [17], [18], [19], [20]]
    assert t.old_class_ids(3) == list(range(1, 18))
    assert build("voc_19-1", voc_names).new_class_ids(1) == [20]
    assert build("voc_15-5", voc_names).new_class_ids(1) == list(range(16, 21))
    assert build("voc_10-10", voc_names).old_class_ids(1) == list(range(1, 11))
    assert [len(s.classes) for s in build("ade_100-10", ade_names).steps] == [101] + [10] * 5
    assert [len(s.classes) for s in build("ade_50-50", ade_names).steps] == [51, 50, 50]
    assert build("ade_100-50", ade_names).settings == ("overlap",)


def test_shapes_tasks_registered_for_every_setting_step_split():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = set(DatasetCatalog.list())
    for task, steps in (("shapes_6-4", 2), ("shapes_6-2-2", 3), ("shapes_6-1", 5)):
        for setting in ("overlap", "disjoint"):
            for k in range(steps):
                for split in ("train", "val"):
                    assert f"{task}_{setting}_step{k}_{split}" in names
    meta = MetadataCatalog.get("shapes_6-2-2_disjoint_step2_val")
    assert meta.old_classes == list(range(1, 9)) and meta.new_classes == [9, 10] and len(meta.stuff_classes) == 11


def test_real_dataset_tasks_registered_without_data():
    """Every built-in task on VOC / ADE / COCO is registered for each setting, step and split."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = set(DatasetCatalog.list())
    expected_steps = {"voc_19-1": 2, "voc_15-5": 2, "voc_15-1": 6, "voc_10-10": 2,
                      "ade_100-50": 2, "ade_100-10": 6, "ade_50-50": 3, "coco-to-voc": 2}
    for task, n in expected_steps.items():
        settings = ("overlap", "disjoint") if task.startswith("voc") else ("overlap",)
        for setting in settings:
            for k in range(n):
                assert f"{task}_{setting}_step{k}_train" in names and f"{task}_{setting}_step{k}_val" in names
        assert f"{task}_disjoint_step0_train" in names or not task.startswith("voc")
    assert len(MetadataCatalog.get("voc_15-1_disjoint_step5_val").stuff_classes) == 21
    assert len(MetadataCatalog.get("ade_100-10_overlap_step2_val").stuff_classes) == 121
    # COCO-to-VOC: VOC masks are read into COCO's class space by name (aeroplane -> airplane, ...)
    meta = MetadataCatalog.get("coco-to-voc_overlap_step1_val_voc")
    assert meta.base_dataset == "voc_2012_sem_seg_val" and len(meta.stuff_classes) == 81
    voc_ids = {"aeroplane": 1, "diningtable": 11, "tvmonitor": 20}
    for voc_name, coco_name in (("aeroplane", "airplane"), ("diningtable", "dining table"), ("tvmonitor", "tv")):
        assert meta.stuff_classes[meta.label_lut[voc_ids[voc_name]]] == coco_name
    step0 = MetadataCatalog.get("coco-to-voc_overlap_step0_train").stuff_classes
    assert len(step0) == 61 and "person" not in step0 and "giraffe" in step0


def test_yaml_task_equals_python_registration(handmade, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fmwiss_d2.data.datasets.tasks import export_split, load_task_file, resolve_task

    spec = {"train": "handmade_train", "val": "handmade_val", "settings": ["disjoint"],
            "steps": [["background", "a", "b"], ["c", "d"]]}
    py = register_incremental_task("hand_py", spec)
    f = tmp_path / "hand_yaml.yaml"
    f.write_text("name: hand_yaml\ntrain: handmade_train\nval: handmade_val\nsettings: [disjoint]\n"
                 "steps:\n  - [background, a, b]\n  - [c, d]\n")
    ym = resolve_task(str(f))
    assert ym.steps == py.steps and ym.settings == py.settings
    for k in range(2):
        for split in ("train", "val"):
            a, b = f"hand_py_disjoint_step{k}_{split}", f"hand_yaml_disjoint_step{k}_{split}"
            assert DatasetCatalog.get(a) == DatasetCatalog.get(b)
            ma, mb = MetadataCatalog.get(a).as_dict(), MetadataCatalog.get(b).as_dict()
            for key in ("name", "task"):
                ma.pop(key), mb.pop(key)
            assert ma == mb
    out = tmp_path / "lists" / "step1_train.txt"
    # disjoint step 1 (c, d): every image showing c or d, all classes being seen by then -> 1, 2, 3, 4
    assert export_split(py, "disjoint", 1, "train", str(out)) == 4
    assert [l.rsplit("/", 1)[-1] for l in out.read_text().splitlines()] == ["1.png", "2.png", "3.png", "4.png"]
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_task_file(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: handmade_train\n")
    with pytest.raises(TaskDefinitionError, match="needs a top-level 'name:'"):
        load_task_file(str(bad))


def test_shipped_task_files_load(tmp_path):
    import glob
    import os

    from fmwiss_d2.data.datasets.tasks import load_task_file

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "tasks", "*.yaml")))
    assert files
    tasks = [load_task_file(f) for f in files]
    reordered = [t for t in tasks if t.name == "shapes_2-2-2-4_reordered"][0]
    assert reordered.class_order[:5] == ["background", "heart", "ring", "star", "disc"]
    assert reordered.old_class_ids(2) == [1, 2, 3, 4] and reordered.new_class_ids(2) == [5, 6]


def test_class_table_cache_is_reused_and_recomputed_when_files_change(handmade, tmp_path, monkeypatch):
    import PIL.Image

    from fmwiss_d2.data.datasets.tasks import image_class_table

    records = [dict(r) for r in handmade]
    first = image_class_table("handmade_cache", records, cache_dir=str(tmp_path))
    # worked from HANDMADE_IMAGES: background 0 everywhere, plus the painted classes' ids (a=1 ... d=4)
    assert first == [[0, 1], [0, 1, 3], [0, 3], [0, 3, 4], [0, 2, 4], [0], [0, 2]]
    assert len(list((tmp_path / "splits").iterdir())) == 1

    def no_reading(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(PIL.Image, "open", no_reading)
    assert image_class_table("handmade_cache", records, cache_dir=str(tmp_path)) == first
    monkeypatch.undo()
    fewer = image_class_table("handmade_cache", records[:3], cache_dir=str(tmp_path))  # another file list
    assert fewer == first[:3] and len(list((tmp_path / "splits").iterdir())) == 2
