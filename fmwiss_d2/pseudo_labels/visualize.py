"""A PNG grid comparing pseudo-label sources: one row per image; columns image, each source's hard labels, truth."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_open

__all__ = ["label_palette", "colorize", "label_grid", "save_png"]


def label_palette(num_classes: int, colors: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """(256, 3) uint8: the dataset's ``stuff_colors`` where given, else Pascal VOC's bit-interleaved colours;
    255 (ignored / no pseudo label) is white."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    for i, col in enumerate(list(colors)[:num_classes]):
        pal[i] = col
    pal[255] = 255
    return pal


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours."""
    return palette[np.asarray(labels, np.int64).clip(0, 255)]


def label_grid(images: List[np.ndarray], columns: List[Tuple[str, List[np.ndarray]]], palette: np.ndarray,
               gap: int = 2) -> np.ndarray:
    """(rows = images) x (image, then one column per ``(title, labels per image)``) as one RGB array, with a
    ``gap``-pixel white separation. Titles are for the caller's legend (a PNG has no text here)."""
    rows = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        cells = [np.asarray(img, np.uint8)] + [colorize(col[i], palette) for _, col in columns]
        sep = np.full((h, gap, 3), 255, np.uint8)
        row = [cells[0]]
        for c in cells[1:]:
            row += [sep, c]
        rows.append(np.concatenate(row, axis=1))
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        r = np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        out += [r, np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")
