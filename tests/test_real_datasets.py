"""Real-dataset registration (VOC 2012, ADE20K-151, COCO things) on tiny hand-made fixture folders."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image

from fmwiss_d2.data.datasets import ade, coco, voc
from fmwiss_d2.data.datasets.class_names import (
    ADE20K_151_CLASSES,
    COCO_THING_CLASSES,
    COCO_THING_IDS,
    COCO_THINGS_SEM_SEG_CLASSES,
    VOC_CLASSES,
    VOC_TO_COCO,
    voc_palette,
)

REPO = Path(__file__).resolve().parents[1]

# The first entries of the VOC colour map, written out by hand.
VOC_COLORS_BY_HAND = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                      15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpeg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width * 100 + height)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def _palette_png(path: Path, mask: np.ndarray) -> None:
    """A VOC-style palette PNG written with plain PIL (mode "P", colours of the VOC map)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("P", (mask.shape[1], mask.shape[0]))
    im.putdata(mask.ravel().tolist())
    flat = []
    for i in range(256):
        flat += list(VOC_COLORS_BY_HAND.get(i, (0, 0, 0)))
    im.putpalette(flat)
    im.save(path)


def _gray_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def _read_mask(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture
def catalog_names():
    """Remove the given names from detectron2's catalogs for the test and restore them afterwards."""
    saved = {}

    def take(*names):
        for name in names:
            if name in DatasetCatalog.list():
                meta = MetadataCatalog.get(name).as_dict()
                meta.pop("name", None)
                saved[name] = (DatasetCatalog[name], meta)
                DatasetCatalog.remove(name)
                if name in MetadataCatalog.list():
                    MetadataCatalog.remove(name)
            else:
                saved[name] = None

    yield take
    for name, entry in saved.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        if entry is not None:
            DatasetCatalog.register(name, entry[0])
            MetadataCatalog.get(name).set(**entry[1])


# ----------------------------------------------------------------------------------------------
# Pascal VOC 2012
# ----------------------------------------------------------------------------------------------
VOC_MASKS = {
    "2007_000032": np.array([[0, 0, 1, 1, 255, 0, 0], [0, 15, 15, 1, 255, 0, 0], [0, 15, 15, 0, 0, 20, 20],
                             [0, 0, 0, 0, 0, 20, 20], [255, 255, 0, 0, 0, 0, 0]], dtype=np.uint8),  # 7 x 5
    "2007_000039": np.full((6, 9), 2, dtype=np.uint8),
    "2007_000063": np.array([[3, 3, 0, 0], [3, 255, 0, 4], [0, 0, 0, 4]], dtype=np.uint8),  # 4 x 3
}


def _make_voc(root: Path, devkit: bool = False) -> Path:
    voc_dir = root / "VOCdevkit" / "VOC2012" if devkit else root / "VOC2012"
    for i, mask in VOC_MASKS.items():
        _jpeg(voc_dir / "JPEGImages" / f"{i}.jpg", mask.shape[1], mask.shape[0])
        _palette_png(voc_dir / "SegmentationClass" / f"{i}.png", mask)
    lists = voc_dir / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2007_000063\n")
    # the two-column format of the lists shipped with MiB / DeepLab
    (lists / "train_aug.txt").write_text(
        "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n\n"
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
    )
    for i in ("2007_000032", "2007_000039"):
        _gray_png(voc_dir / "SegmentationClassAug" / f"{i}.png", VOC_MASKS[i])
    return voc_dir


@pytest.mark.parametrize("devkit", [False, True])
def test_voc_train_records_and_masks(tmp_path, devkit):
    voc_dir = _make_voc(tmp_path, devkit=devkit)
    records = voc.load_voc_sem_seg(str(tmp_path), "train")
    assert [r["image_id"] for r in records] == ["2007_000032", "2007_000039"]
    assert records[0]["file_name"] == str(voc_dir / "JPEGImages" / "2007_000032.jpg")
    assert records[0]["sem_seg_file_name"] == str(voc_dir / "SegmentationClass" / "2007_000032.png")
    assert (records[0]["height"], records[0]["width"]) == (5, 7)
    assert (records[1]["height"], records[1]["width"]) == (6, 9)
    for r in records:
        assert Image.open(r["sem_seg_file_name"]).mode == "P"
        np.testing.assert_array_equal(_read_mask(r["sem_seg_file_name"]), VOC_MASKS[r["image_id"]])


def test_voc_val_and_train_aug(tmp_path):
    voc_dir = _make_voc(tmp_path)
    val = voc.load_voc_sem_seg(str(tmp_path), "val")
    assert [(r["image_id"], r["height"], r["width"]) for r in val] == [("2007_000063", 3, 4)]
    aug = voc.load_voc_sem_seg(str(tmp_path), "train_aug")
    assert [r["image_id"] for r in aug] == ["2007_000039", "2007_000032"]  # list order kept
    assert aug[1]["sem_seg_file_name"] == str(voc_dir / "SegmentationClassAug" / "2007_000032.png")
    np.testing.assert_array_equal(_read_mask(aug[1]["sem_seg_file_name"]), VOC_MASKS["2007_000032"])


def test_voc_palette_png_reads_back_as_indices(tmp_path):
    """detectron2's reader without a format (Mask2Former's mapper) and SemSegEvaluator's
    ``np.array(Image.open(f))`` give the class indices of a palette PNG. ``read_image(f, "L")`` (the
    default DatasetMapper) would convert the palette colours to grey levels: semantic mappers must
    read masks with ``format=None``."""
    _make_voc(tmp_path)
    path = voc.load_voc_sem_seg(str(tmp_path), "train")[0]["sem_seg_file_name"]
    expected = VOC_MASKS["2007_000032"]
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(np.array(Image.open(path), dtype=int), expected)
    assert not np.array_equal(read_image(path, "L")[..., 0], expected)


def test_voc_metadata():
    meta = voc.voc_sem_seg_metadata()
    assert meta["stuff_classes"] == [
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
        "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
        "train", "tvmonitor",
    ]
    assert list(VOC_CLASSES) == meta["stuff_classes"]
    assert meta["ignore_label"] == 255 and meta["evaluator_type"] == "sem_seg"
    assert len(meta["stuff_colors"]) == 21
    for i, rgb in VOC_COLORS_BY_HAND.items():
        assert voc_palette()[i] == rgb
        if i < 21:
            assert tuple(meta["stuff_colors"][i]) == rgb


def test_voc_sbd_aug_prepare(tmp_path):
    """train_aug = (SBD train + SBD val + VOC train) - VOC val; VOC masks win over SBD ones."""
    from scipy.io import savemat

    voc_dir = tmp_path / "VOC2012"
    sbd = tmp_path / "sbd"
    voc_mask_a = np.array([[1, 1, 255], [0, 0, 255]], dtype=np.uint8)
    voc_mask_b = np.array([[2, 255, 0], [2, 2, 0]], dtype=np.uint8)
    sbd_masks = {  # SBD masks have no 255 border
        "b": np.array([[2, 2, 0], [2, 2, 0]], dtype=np.uint8),
        "c": np.array([[5, 5, 5], [5, 5, 5]], dtype=np.uint8),
        "d": np.array([[0, 7, 7], [0, 7, 7]], dtype=np.uint8),
        "e": np.array([[20, 0, 0], [0, 0, 19]], dtype=np.uint8),
    }
    for i in "abcde":
        _jpeg(voc_dir / "JPEGImages" / f"{i}.jpg", 3, 2)
    _palette_png(voc_dir / "SegmentationClass" / "a.png", voc_mask_a)
    _palette_png(voc_dir / "SegmentationClass" / "b.png", voc_mask_b)
    _palette_png(voc_dir / "SegmentationClass" / "c.png", np.zeros((2, 3), np.uint8))
    lists = voc_dir / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\nb\n")
    (lists / "val.txt").write_text("c\n")
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("b\nd\nc\n")
    (sbd / "val.txt").write_text("e\n")
    for i, mask in sbd_masks.items():
        savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": mask, "CategoriesPresent": np.unique(mask)}})

    prepare = _load_script("prepare_voc_sbd_aug")
    assert prepare.build_train_aug(str(tmp_path), str(sbd)) == (4, 0)
    assert (lists / "train_aug.txt").read_text() == "a\nb\nd\ne\n"
    expected = {"a": voc_mask_a, "b": voc_mask_b, "d": sbd_masks["d"], "e": sbd_masks["e"]}
    for i, mask in expected.items():
        png = voc_dir / "SegmentationClassAug" / f"{i}.png"
        assert Image.open(png).mode == "L"
        np.testing.assert_array_equal(_read_mask(str(png)), mask)
    assert not (voc_dir / "SegmentationClassAug" / "c.png").exists()
    assert not [f for f in os.listdir(voc_dir / "SegmentationClassAug") if f.startswith(".tmp")]

    records = voc.load_voc_sem_seg(str(tmp_path), "train_aug")
    assert [r["image_id"] for r in records] == ["a", "b", "d", "e"]
    # a second run skips what exists; --overwrite redoes it
    prepare.main(["--root", str(tmp_path), "--sbd", str(sbd)])
    assert prepare.build_train_aug(str(tmp_path), str(sbd)) == (0, 4)
    assert prepare.build_train_aug(str(tmp_path), str(sbd), overwrite=True) == (4, 0)


# ----------------------------------------------------------------------------------------------
# ADE20K (151 classes, raw annotations)
# ----------------------------------------------------------------------------------------------
def _make_ade(root: Path):
    base = root / "ADEChallengeData2016"
    masks = {
        ("training", "ADE_train_00000002"): np.array([[0, 1, 150], [2, 2, 0]], dtype=np.uint8),
        ("training", "ADE_train_00000001"): np.array([[13, 13], [0, 91], [91, 91]], dtype=np.uint8),
        ("validation", "ADE_val_00000001"): np.array([[0, 0, 0, 5]], dtype=np.uint8),
    }
    for (split, stem), mask in masks.items():
        _jpeg(base / "images" / split / f"{stem}.jpg", mask.shape[1], mask.shape[0])
        _gray_png(base / "annotations" / split / f"{stem}.png", mask)
    return base, masks


def test_ade20k_151_records_and_masks(tmp_path):
    base, masks = _make_ade(tmp_path)
    train = ade.load_ade20k_151_sem_seg(str(tmp_path), "training")
    assert [r["image_id"] for r in train] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert train[0]["file_name"] == str(base / "images" / "training" / "ADE_train_00000001.jpg")
    assert train[0]["sem_seg_file_name"] == str(base / "annotations" / "training" / "ADE_train_00000001.png")
    assert [(r["height"], r["width"]) for r in train] == [(3, 2), (2, 3)]
    for r in train:
        np.testing.assert_array_equal(_read_mask(r["sem_seg_file_name"]), masks[("training", r["image_id"])])
    val = ade.load_ade20k_151_sem_seg(str(tmp_path), "validation")
    assert [(r["image_id"], r["height"], r["width"]) for r in val] == [("ADE_val_00000001", 1, 4)]


def test_ade20k_151_metadata():
    meta = ade.ade20k_151_metadata()
    names = meta["stuff_classes"]
    assert len(names) == 151 and len(set(names)) == 151
    assert names == list(ADE20K_151_CLASSES)
    # mask value -> name, from the objectInfo150 table
    for value, name in {0: "background", 1: "wall", 2: "building", 13: "person", 21: "car",
                        91: "airplane", 128: "bicycle", 150: "flag"}.items():
        assert names[value] == name
    assert meta["ignore_label"] == 255 and meta["evaluator_type"] == "sem_seg"
    assert len(meta["stuff_colors"]) == 151


def test_ade20k_150_names_follow_detectron2_order():
    """Same classes in the same order as detectron2's ADE20K-150 metadata (which lists synonyms)."""
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    renamed = {"windowpane": "window", "bathtub": "tub", "railing": "rail", "streetlight": "street lamp",
               "television receiver": "tv", "airplane": "plane", "apparel": "clothes",
               "swimming pool": "pool", "waterfall": "falls", "ashcan": "trash can"}
    assert len(ADE20K_SEM_SEG_CATEGORIES) == 150
    for ours, theirs in zip(ADE20K_151_CLASSES[1:], ADE20K_SEM_SEG_CATEGORIES):
        synonyms = [s.strip() for s in theirs.split(",")]
        assert ours in synonyms or renamed.get(ours) in synonyms, (ours, theirs)


# ----------------------------------------------------------------------------------------------
# COCO things
# ----------------------------------------------------------------------------------------------
def _rgb(segment_id: int):
    return (segment_id % 256, segment_id // 256 % 256, segment_id // 65536)


# segment id -> (category id, iscrowd); 0 is unlabeled
PAN_SEGMENTS = {5: (1, 0), 300: (44, 0), 70000: (67, 0), 7: (184, 0), 9: (90, 1)}
PAN_IDS = np.array([[5, 5, 300, 0],
                    [7, 7, 300, 70000],
                    [9, 0, 7, 70000]])
# person -> 1, bottle (id 44) -> 40, dining table (id 67) -> 61, stuff -> 0, toothbrush (id 90) -> 80
EXPECTED_THINGS = np.array([[1, 1, 40, 255],
                            [0, 0, 40, 61],
                            [80, 255, 0, 61]], dtype=np.uint8)


def _make_coco(root: Path, split: str = "val", image_id: int = 139):
    base = root / "coco"
    stem = f"{image_id:012d}"
    _jpeg(base / f"{split}2017" / f"{stem}.jpg", 4, 3)
    pan = np.zeros((3, 4, 3), dtype=np.uint8)
    for y in range(3):
        for x in range(4):
            pan[y, x] = _rgb(int(PAN_IDS[y, x]))
    (base / f"panoptic_{split}2017").mkdir(parents=True)
    Image.fromarray(pan).save(base / f"panoptic_{split}2017" / f"{stem}.png")
    data = {
        "images": [{"id": image_id, "file_name": f"{stem}.jpg", "height": 3, "width": 4}],
        "annotations": [{
            "image_id": image_id,
            "file_name": f"{stem}.png",
            "segments_info": [{"id": s, "category_id": c, "iscrowd": crowd} for s, (c, crowd) in PAN_SEGMENTS.items()],
        }],
        "categories": [
            {"id": 1, "name": "person", "isthing": 1},
            {"id": 44, "name": "bottle", "isthing": 1},
            {"id": 67, "name": "dining table", "isthing": 1},
            {"id": 90, "name": "toothbrush", "isthing": 1},
            {"id": 184, "name": "tree-merged", "isthing": 0},
        ],
    }
    (base / "annotations").mkdir(parents=True)
    (base / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))
    return base, stem


def test_panoptic_to_things_by_hand():
    pan = np.stack([np.vectorize(lambda s: _rgb(int(s))[c])(PAN_IDS) for c in range(3)], -1).astype(np.uint8)
    lut = coco.things_category_to_label([{"id": 1, "isthing": 1}, {"id": 44, "isthing": 1},
                                         {"id": 67, "isthing": 1}, {"id": 90, "isthing": 1},
                                         {"id": 184, "isthing": 0}])
    assert lut == {1: 1, 44: 40, 67: 61, 90: 80, 184: 0}
    segments = [{"id": s, "category_id": c, "iscrowd": k} for s, (c, k) in PAN_SEGMENTS.items()]
    np.testing.assert_array_equal(coco.panoptic_to_things_sem_seg(pan, segments, lut), EXPECTED_THINGS)
    crowd_ignored = EXPECTED_THINGS.copy()
    crowd_ignored[2, 0] = 255
    np.testing.assert_array_equal(
        coco.panoptic_to_things_sem_seg(pan, segments, lut, crowd_ignore=True), crowd_ignored
    )
    with pytest.raises(ValueError):
        coco.things_category_to_label([{"id": 44, "name": "cup", "isthing": 1}])


def test_coco_things_prepare_and_load(tmp_path):
    base, stem = _make_coco(tmp_path, "val")
    prepare = _load_script("prepare_coco_things_semantic")
    prepare.main(["--root", str(tmp_path), "--splits", "val", "--workers", "0"])
    out = base / "things_sem_seg_val2017" / f"{stem}.png"
    np.testing.assert_array_equal(_read_mask(str(out)), EXPECTED_THINGS)
    assert Image.open(out).mode == "L"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    records = coco.load_coco_things_sem_seg(str(tmp_path), "val")
    assert records == [{
        "file_name": str(base / "val2017" / f"{stem}.jpg"),
        "sem_seg_file_name": str(out),
        "height": 3,
        "width": 4,
        "image_id": 139,
    }]
    # existing masks are skipped; --overwrite with --crowd-ignore rewrites them
    assert prepare.convert_split(str(tmp_path), "val", workers=0) == (0, 1)
    assert prepare.convert_split(str(tmp_path), "val", workers=0, crowd_ignore=True, overwrite=True) == (1, 0)
    assert _read_mask(str(out))[2, 0] == 255


def test_coco_things_metadata_and_voc_mapping():
    meta = coco.coco_things_sem_seg_metadata()
    names = meta["stuff_classes"]
    assert len(names) == 81 and names[0] == "background"
    assert names == list(COCO_THINGS_SEM_SEG_CLASSES)
    assert (names[1], names[5], names[40], names[61], names[80]) == (
        "person", "airplane", "bottle", "dining table", "toothbrush")
    # names and order as detectron2's COCO metadata
    assert list(COCO_THING_CLASSES) == MetadataCatalog.get("coco_2017_val").thing_classes
    assert len(COCO_THING_IDS) == 80 and COCO_THING_IDS[-1] == 90 and 12 not in COCO_THING_IDS
    assert len(meta["stuff_colors"]) == 81 and meta["stuff_colors"][0] == [0, 0, 0]
    assert meta["ignore_label"] == 255 and meta["evaluator_type"] == "sem_seg"

    assert VOC_TO_COCO == {
        "aeroplane": "airplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat", "bottle": "bottle",
        "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow",
        "diningtable": "dining table", "dog": "dog", "horse": "horse", "motorbike": "motorcycle",
        "person": "person", "pottedplant": "potted plant", "sheep": "sheep", "sofa": "couch",
        "train": "train", "tvmonitor": "tv",
    }
    assert set(VOC_TO_COCO.values()) <= set(COCO_THING_CLASSES)


# ----------------------------------------------------------------------------------------------
# Missing datasets and lazy registration
# ----------------------------------------------------------------------------------------------
def _assert_missing(excinfo, path, section):
    message = str(excinfo.value)
    assert str(path) in message
    assert "datasets/README.md" in message and f'section "{section}"' in message


def test_missing_datasets_raise_with_path_and_readme_section(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        voc.load_voc_sem_seg(str(tmp_path), "train")
    _assert_missing(e, tmp_path / "VOC2012", "Pascal VOC 2012")
    with pytest.raises(FileNotFoundError) as e:
        ade.load_ade20k_151_sem_seg(str(tmp_path), "validation")
    _assert_missing(e, tmp_path / "ADEChallengeData2016" / "images" / "validation", "ADE20K")
    with pytest.raises(FileNotFoundError) as e:
        coco.load_coco_things_sem_seg(str(tmp_path), "train")
    _assert_missing(e, tmp_path / "coco" / "train2017", "COCO")

    # images present, masks not prepared yet: the error points to the prepare script
    _jpeg(tmp_path / "coco" / "val2017" / "000000000139.jpg", 4, 3)
    with pytest.raises(FileNotFoundError) as e:
        coco.load_coco_things_sem_seg(str(tmp_path), "val")
    _assert_missing(e, tmp_path / "coco" / "things_sem_seg_val2017", "COCO")
    assert "prepare_coco_things_semantic.py" in str(e.value)


def test_missing_files_inside_a_dataset(tmp_path):
    voc_dir = _make_voc(tmp_path)
    (voc_dir / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        voc.load_voc_sem_seg(str(tmp_path), "train")
    _assert_missing(e, voc_dir / "SegmentationClass" / "2007_000039.png", "Pascal VOC 2012")
    (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(FileNotFoundError) as e:
        voc.load_voc_sem_seg(str(tmp_path), "train_aug")
    _assert_missing(e, voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt", "Pascal VOC 2012")
    assert "prepare_voc_sbd_aug.py" in str(e.value)


ALL_NAMES = {
    "voc_2012_sem_seg_train": 21, "voc_2012_sem_seg_train_aug": 21, "voc_2012_sem_seg_val": 21,
    "ade20k_151_sem_seg_train": 151, "ade20k_151_sem_seg_val": 151,
    "coco_2017_things_sem_seg_train": 81, "coco_2017_things_sem_seg_val": 81,
}


def test_registration_never_touches_the_disk(tmp_path, monkeypatch, catalog_names):
    catalog_names(*ALL_NAMES)
    missing = str(tmp_path / "does_not_exist")

    touched = []

    def no_disk(*args, **kwargs):
        touched.append(args)
        raise OSError("registration touched the disk")

    for fn in ("listdir", "scandir", "stat"):
        monkeypatch.setattr(os, fn, no_disk)
    for fn in ("exists", "isdir", "isfile"):
        monkeypatch.setattr(os.path, fn, no_disk)
    try:
        voc.register_all_voc(missing)
        ade.register_all_ade(missing)
        coco.register_all_coco(missing)
    finally:
        monkeypatch.undo()  # before pytest formats any failure (it needs os.stat)
    assert touched == []

    for name, num_classes in ALL_NAMES.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == num_classes and meta.stuff_classes[0] == "background"
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        with pytest.raises(FileNotFoundError, match="datasets/README.md"):
            DatasetCatalog.get(name)
    # detectron2's own registrations are untouched
    assert len(MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes) == 150
    assert "coco_2017_val_panoptic" in DatasetCatalog.list()


def test_registered_voc_evaluates_perfect_prediction(tmp_path, catalog_names):
    """End to end: catalog -> SemSegEvaluator reads the palette masks as indices (mIoU 100)."""
    import torch
    from detectron2.evaluation import SemSegEvaluator

    catalog_names(*[n for n in ALL_NAMES if n.startswith("voc")])
    _make_voc(tmp_path)
    voc.register_all_voc(str(tmp_path))
    records = DatasetCatalog.get("voc_2012_sem_seg_train")
    assert [r["image_id"] for r in records] == ["2007_000032", "2007_000039"]

    evaluator = SemSegEvaluator("voc_2012_sem_seg_train", distributed=False, output_dir=None)
    evaluator.reset()
    for r in records:
        gt = torch.as_tensor(VOC_MASKS[r["image_id"]].astype(np.int64))
        gt[gt == 255] = 0
        logits = torch.nn.functional.one_hot(gt, 21).permute(2, 0, 1).float()
        evaluator.process([{"file_name": r["file_name"]}], [{"sem_seg": logits}])
    result = evaluator.evaluate()["sem_seg"]
    assert result["mIoU"] == pytest.approx(100.0)
    assert result["IoU-person"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------------------------
# COCO-Stuff 164k (171 classes), the base of PADing's zero-shot semantic split
# ----------------------------------------------------------------------------------------------
# raw stuffthingmaps pixel = COCO id - 1: person (id 1) -> 0, toothbrush (id 90) -> 79, id 12 (never annotated) -> 255,
# banner (id 92, the first stuff) -> 80, tree (id 169) -> 157, wood (id 182) -> 170, unlabeled 255 -> 255
RAW_STUFF = np.array([[0, 89, 11], [91, 168, 181], [255, 255, 0]], dtype=np.uint8)
EXPECTED_STUFF = np.array([[0, 79, 255], [80, 157, 170], [255, 255, 0]], dtype=np.uint8)


def test_coco_stuff_prepare_load_and_names(tmp_path):
    stem = "000000000139"
    _jpeg(tmp_path / "coco" / "val2017" / f"{stem}.jpg", 3, 3)
    with pytest.raises(FileNotFoundError, match="prepare_coco_stuff_semantic.py"):
        coco.load_coco_stuff_sem_seg(str(tmp_path), "val")  # masks not prepared: names the prepare script
    prepare = _load_script("prepare_coco_stuff_semantic")
    with pytest.raises(FileNotFoundError, match="stuffthingmaps_trainval2017"):
        prepare.convert_split(str(tmp_path), "val", workers=0)
    raw_dir = tmp_path / "coco" / "stuffthingmaps_trainval2017" / "val2017"
    _gray_png(raw_dir / f"{stem}.png", RAW_STUFF)
    prepare.main(["--root", str(tmp_path), "--splits", "val", "--workers", "0"])
    out = tmp_path / "coco" / "stuffthingmaps_detectron2" / "val2017" / f"{stem}.png"
    np.testing.assert_array_equal(_read_mask(str(out)), EXPECTED_STUFF)
    assert prepare.convert_split(str(tmp_path), "val", workers=0) == (0, 1)  # resumes: present masks skipped
    records = coco.load_coco_stuff_sem_seg(str(tmp_path), "val")
    assert [(r["file_name"], r["sem_seg_file_name"], r["image_id"]) for r in records] == [
        (str(tmp_path / "coco" / "val2017" / f"{stem}.jpg"), str(out), 139)]

    meta = coco.coco_stuff_sem_seg_metadata()
    names = meta["stuff_classes"]
    assert len(names) == 171 == len(set(names)) == len(meta["stuff_colors"])
    assert (names[0], names[79], names[80], names[157], names[170]) == ("person", "toothbrush", "banner", "tree", "wood")


def test_coco_zero_shot_semantic_split_is_padings():
    """PADing's 15 unseen COCO-Stuff classes (its seen-first ids 156-170), on the registered 171-class base."""
    from fmwiss_d2.data.datasets.zero_shot import get_zero_shot_split

    split = get_zero_shot_split("coco_zs_stuff")
    assert list(split.unseen) == ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
                            "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete"]
    assert len(split.seen_ids) == 156 and len(split.inference_ids) == 171
    assert {"coco_zs_stuff_train", "coco_zs_stuff_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("coco_zs_stuff_val").evaluator_type == "zero_shot_sem_seg"
