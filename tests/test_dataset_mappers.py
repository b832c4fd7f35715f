"""Dataset mappers on hand-made files, and the deterministic training stream."""
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T

from fmwiss_d2.data.dataset_mappers import PanopticDatasetMapper, SemanticDatasetMapper
from fmwiss_d2.data.dataset_mappers.semantic import semantic_to_instances
from fmwiss_d2.engine.data_loader import DeterministicBatchStream


def test_semantic_to_instances_skips_ignore():
    sem = torch.tensor([[0, 0, 3], [255, 3, 7]])
    inst = semantic_to_instances(sem, 255)
    assert inst.gt_classes.tolist() == [0, 3, 7]
    assert inst.gt_masks.tolist() == [
        [[True, True, False], [False, False, False]],
        [[False, False, True], [False, True, False]],
        [[False, False, False], [False, False, True]],
    ]


def test_semantic_mapper_with_lut_and_padding(tmp_path):
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(tmp_path / "im.png")
    Image.fromarray(np.array([[0, 1, 2, 2, 255]] * 3, np.uint8)).save(tmp_path / "sem.png")
    mapper = SemanticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=4,
                                   label_lut=[0, 0, 1])  # class 1 -> background, 2 -> 1
    out = mapper({"file_name": str(tmp_path / "im.png"), "sem_seg_file_name": str(tmp_path / "sem.png"),
                  "height": 3, "width": 5})
    assert out["image"].shape == (3, 4, 8)
    assert out["sem_seg"][0].tolist() == [0, 0, 1, 1, 255, 255, 255, 255]
    assert out["sem_seg"][3].tolist() == [255] * 8
    assert out["instances"].gt_classes.tolist() == [0, 1]


def test_panoptic_mapper(tmp_path):
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "im.png")
    ids = np.array([[5, 5, 300], [0, 300, 70000]])  # segment ids; colour = (id % 256, id // 256 % 256, id // 65536)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pan.png")
    record = {"file_name": str(tmp_path / "im.png"), "pan_seg_file_name": str(tmp_path / "pan.png"), "height": 2,
              "width": 3, "segments_info": [{"id": 5, "category_id": 2, "iscrowd": 0},
                                            {"id": 300, "category_id": 7, "iscrowd": 0},
                                            {"id": 70000, "category_id": 1, "iscrowd": 1}]}
    flip = T.RandomFlip(prob=1.0)  # ids must survive a geometric transform exactly
    out = PanopticDatasetMapper(True, augmentations=[flip], image_format="RGB", ignore_label=255)(record)
    assert out["instances"].gt_classes.tolist() == [2, 7]  # the crowd segment is dropped
    assert out["instances"].gt_masks.tolist() == [[[False, True, True], [False, False, False]],
                                                  [[True, False, False], [False, True, False]]]
    assert out["sem_seg"].tolist() == [[7, 2, 2], [255, 7, 255]]


def _stream(rank, world, batch, start_iter=0):
    s = DeterministicBatchStream(list(range(10)), lambda i: (i, int(np.random.randint(1000))), batch, seed=3,
                                 start_iter=start_iter)
    s.rank, s.world_size = rank, world
    return s


def test_stream_shards_and_resumes():
    one = [_stream(0, 1, 4).batch(b) for b in range(3)]
    r0 = [_stream(0, 2, 2).batch(b) for b in range(3)]
    r1 = [_stream(1, 2, 2).batch(b) for b in range(3)]
    for b in range(3):  # two processes see together what one process sees, with the same random draws
        assert sorted(one[b]) == sorted(r0[b] + r1[b])
    assert sorted(x[0] for b in one[:2] for x in b[:]) != list(range(8))  # shuffled ...
    assert sorted(x[0] for x in one[0] + one[1] + one[2][:2]) == list(range(10))  # ... a permutation per epoch
    resumed = iter(_stream(0, 1, 4, start_iter=2))
    assert next(resumed) == one[2]


def _truncated_copy(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 2])


def test_unreadable_files_are_named_with_their_record(tmp_path):
    from fmwiss_d2.data.dataset_mappers.base import ImageReadError, read_label_map
    from fmwiss_d2.utils.errors import DamagedCacheError

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "im.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "pan.png")
    Image.fromarray(rng.integers(0, 5, (32, 32), dtype=np.uint8)).save(tmp_path / "sem.png")
    for name in ("im.jpg", "pan.png", "sem.png"):
        _truncated_copy(tmp_path / name, tmp_path / f"cut_{name}")
    record = {"file_name": str(tmp_path / "cut_im.jpg"), "height": 32, "width": 32, "image_id": 17}

    mapper = SemanticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255)
    with pytest.raises(ImageReadError, match=r"cut_im\.jpg.*record 17.*truncated") as e:
        mapper(dict(record, sem_seg_file_name=str(tmp_path / "sem.png")))
    assert isinstance(e.value, DamagedCacheError)
    pan_record = dict(record, file_name=str(tmp_path / "im.jpg"), pan_seg_file_name=str(tmp_path / "cut_pan.png"),
                      segments_info=[])
    with pytest.raises(ImageReadError, match=r"cut_pan\.png.*record 17"):
        PanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255)(pan_record)
    with pytest.raises(ImageReadError, match=r"cut_sem\.png.*record 'x'"):
        read_label_map(str(tmp_path / "cut_sem.png"), record_id="x")
    with pytest.raises(ImageReadError, match=r"gone\.png.*missing"):
        read_label_map(str(tmp_path / "gone.png"))
    assert read_label_map(str(tmp_path / "sem.png")).tolist() == np.array(Image.open(tmp_path / "sem.png")).tolist()


def test_unknown_mapper_name_lists_the_registered_ones():
    from fmwiss_d2.data.dataset_mappers import build_dataset_mapper
    from fmwiss_d2.utils.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="INPUT.DATASET_MAPPER_NAME: unknown name 'semantik'.*per_pixel_semantic"):
        build_dataset_mapper(None, True, name="semantik")
