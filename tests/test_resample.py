"""The compiled Lanczos-4 crop gives the bytes of OpenCV's cv2.resize(INTER_LANCZOS4)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from musetalk.face import region
from musetalk.face.resample import _compiled, lanczos_crop


def reference(frame: np.ndarray, rect: tuple[int, int, int, int], size: int) -> np.ndarray:
    x1, y1, x2, y2 = rect
    out = cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LANCZOS4)
    return out.reshape(size, size, -1)


def test_numba_kernel_is_used():
    assert _compiled() is not None  # numba is a dependency: the fast path is the one tested


@pytest.mark.parametrize("channels", [3, 1, 4])
def test_identical_to_opencv_on_random_regions(channels):
    """Up- and downscaling, odd sizes, regions touching every border, 1-pixel regions, noise
    (the worst case for the negative lobes) and smooth images: every byte equal."""
    rng = np.random.default_rng(channels)
    for trial in range(25):
        h, w = (int(v) for v in rng.integers(8, 500, 2))
        frame = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        if trial % 2:
            frame = cv2.GaussianBlur(frame, (0, 0), 2).reshape(h, w, channels)
        x1, x2 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        y1, y2 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        if trial % 5 == 0:
            x1, y1, x2, y2 = 0, 0, w, h
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        if trial == 3:
            x2, y2 = x1 + 1, y1 + 1
        size = int(rng.choice([16, 64, 100, 256, 257]))
        got = lanczos_crop(frame, (x1, y1, x2, y2), size)
        np.testing.assert_array_equal(got, reference(frame, (x1, y1, x2, y2), size))


def test_identical_to_opencv_on_face_crops_and_extremes():
    """A training-size crop of a photo-like image (the loader's case: ~185 x 220 px to 256),
    the same size (a copy), and a black/white checkerboard that drives both passes to their
    largest sums."""
    rng = np.random.default_rng(7)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (452, 270, 3), dtype=np.uint8), (0, 0), 1.2)
    for rect in [(40, 100, 225, 320), (7, 0, 263, 256), (0, 196, 270, 452)]:
        np.testing.assert_array_equal(lanczos_crop(frame, rect, 256), reference(frame, rect, 256))
    board = (np.indices((300, 300)).sum(axis=0) % 2 * 255).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    for size in (256, 97, 601):
        rect = (3, 5, 290, 297)
        np.testing.assert_array_equal(lanczos_crop(board, rect, size), reference(board, rect, size))


def test_region_crop_uses_it_and_falls_back_for_other_arrays():
    rng = np.random.default_rng(8)
    frame = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    box = (10.4, 12.6, 80.2, 101.7)
    x1, y1, x2, y2 = region.pixel_rect(box, frame.shape[:2])
    expected = reference(frame, (x1, y1, x2, y2), 64)
    np.testing.assert_array_equal(region.crop(frame, box, 64), expected)
    # a non-contiguous view and a float frame go through cv2.resize itself
    view = np.asfortranarray(frame)
    np.testing.assert_array_equal(region.crop(view, box, 64), expected)
    floats = frame.astype(np.float32)
    np.testing.assert_array_equal(
        region.crop(floats, box, 64), reference(floats, (x1, y1, x2, y2), 64)
    )
