"""Generating a split's pseudo labels (fmwiss_d2/pseudo_labels/generate.py): resuming, and the measured mIoU."""
import numpy as np
import pytest
import torch
from PIL import Image

from fmwiss_d2.pseudo_labels import PseudoLabelContext, PseudoLabels, PseudoLabelSource
from fmwiss_d2.pseudo_labels.generate import PseudoLabelData, confusion_matrix, measure, run_source

# 2 x 2 images, classes: background 0, "a" 1, "b" 2. The source labels a pixel 1 where red > 128, 2 where
# green > 128, background elsewhere, and leaves blue pixels without a label (valid False). It never reads masks.
RED, GREEN, BLUE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)
IMAGES = [  # (pixels row-major, ground-truth mask row-major)
    ([RED, RED, BLACK, BLACK], [1, 1, 0, 0]),      # right
    ([RED, GREEN, BLACK, BLUE], [1, 1, 0, 2]),     # a's second pixel predicted b; a b pixel without a label
    ([GREEN, GREEN, RED, BLACK], [2, 2, 0, 255]),  # background predicted a; an ignored pixel
    ([BLACK, GREEN, BLACK, BLACK], [0, 2, 2, 0]),  # a b pixel predicted background
]


class _ColourSource(PseudoLabelSource):
    def __init__(self, fail_after_batches=None):
        super().__init__()
        self.calls, self.images_seen, self.fail_after = 0, 0, fail_after_batches

    def forward(self, images, image_labels, context):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        self.images_seen += len(images)
        r, g, b = images[:, 0] > 128, images[:, 1] > 128, images[:, 2] > 128
        scores = torch.stack([(~r & ~g).float(), r.float(), g.float()], 1)
        return PseudoLabels(scores, ~b)


def _data(tmp_path, n_copies=1):
    records = []
    for c in range(n_copies):
        for i, (pix, mask) in enumerate(IMAGES):
            fn, sfn = tmp_path / f"img{c}_{i}.png", tmp_path / f"mask{c}_{i}.png"
            Image.fromarray(np.asarray(pix, np.uint8).reshape(2, 2, 3)).save(fn)
            Image.fromarray(np.asarray(mask, np.uint8).reshape(2, 2)).save(sfn)
            labels = sorted({m for m in mask if m not in (0, 255)})
            records.append({"file_name": str(fn), "sem_seg_file_name": str(sfn), "height": 2, "width": 2,
                            "image_labels": labels})
    return PseudoLabelData("toy", records, ["background", "a", "b"], 0, np.arange(256))


def test_resumes_after_an_interruption_without_recomputing(tmp_path):
    data = _data(tmp_path, n_copies=3)  # 12 images
    ctx = PseudoLabelContext(class_names=data.class_names, background=0)
    killed = _ColourSource(fail_after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        run_source(killed, data, ctx, cache_root=str(tmp_path / "cache"), batch_size=4)
    assert killed.images_seen == 8
    again = _ColourSource()
    cache, info = run_source(again, data, ctx, cache_root=str(tmp_path / "cache"), batch_size=4)
    assert again.images_seen == 4 and info["computed"] == 4 and info["images"] == 12
    third = _ColourSource()
    _, info = run_source(third, data, ctx, cache_root=str(tmp_path / "cache"), batch_size=4)
    assert third.calls == 0 and info["computed"] == 0
    # the resumed cache holds the same labels as one uninterrupted fill
    fresh, _ = run_source(_ColourSource(), data, ctx, cache_root=str(tmp_path / "fresh"), batch_size=4)
    for i in range(12):
        assert torch.equal(cache.load(i).hard(), fresh.load(i).hard())


def test_miou_matches_a_hand_count(tmp_path):
    data = _data(tmp_path)
    ctx = PseudoLabelContext(class_names=data.class_names, background=0)
    cache, _ = run_source(_ColourSource(), data, ctx, cache_root=str(tmp_path / "cache"), batch_size=2)
    m = measure(cache, data)
    # Pixels (true -> predicted), ignored pixel left out; "-" = no pseudo label:
    # img0: 1->1, 1->1, 0->0, 0->0   img1: 1->1, 1->2, 0->0, 2->-   img2: 2->2, 2->2, 0->1
    # img3: 0->0, 2->2, 2->0, 0->0
    # class a: TP 3, FN 1 (->2), FP 1 (bg->a): IoU 3/5.  class b: TP 3, FN 2 (one ->-, one ->0), FP 1: 3/6.
    # background: TP 5, FN 1 (->a), FP 1 (b->0): 5/7.
    assert m["IoU"] == {"a": 60.0, "b": 50.0}
    assert m["IoU_background"] == pytest.approx(100 * 5 / 7, abs=0.01)
    assert m["mIoU_labelled"] == 55.0
    assert m["mIoU"] == pytest.approx((60 + 50 + 100 * 5 / 7) / 3, abs=0.01)
    assert m["coverage"] == pytest.approx(100 * 14 / 15, abs=0.01)


def test_confusion_matrix_counts_missing_labels_apart():
    gt = np.array([0, 1, 1, 255])
    pred = np.array([0, 255, 1, 1])
    conf = confusion_matrix(pred, gt, 2)
    assert conf.tolist() == [[1, 0, 0], [0, 1, 1]]


def test_grid_puts_each_source_in_its_column():
    from fmwiss_d2.pseudo_labels.visualize import label_grid, label_palette

    pal = label_palette(3, colors=[(0, 0, 0), (200, 0, 0), (0, 200, 0)])
    assert pal[1].tolist() == [200, 0, 0] and pal[255].tolist() == [255, 255, 255]
    assert pal[3].tolist() == [128, 128, 0]  # past the dataset's colours: Pascal VOC's palette
    img = np.full((2, 3, 3), 7, np.uint8)
    lab = np.array([[1, 2, 255], [0, 0, 1]])
    grid = label_grid([img, img], [("s", [lab, lab]), ("gt", [lab, lab])], pal, gap=1)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2, 3)
    assert (grid[:2, :3] == 7).all()
    assert grid[0, 4].tolist() == [200, 0, 0] and grid[0, 6].tolist() == [255, 255, 255]
    assert grid[3, 9].tolist() == [0, 200, 0]  # second image (after the gap), truth column, label 2
