"""Lanczos-4 resize of a frame region, bit-identical to OpenCV's `cv2.resize(INTER_LANCZOS4)`.

OpenCV resizes 8-bit images with Lanczos-4 in plain scalar code (about 1.8 ms for a 256 x 256 x
3 crop, four times the JPEG decode of the stored crop it is cut from), which made it the largest
cost of the training loader. This module computes the same integers: OpenCV's 8-tap Lanczos
weights per output row and column (computed in float32 and rounded to 11-bit fixed point
exactly as OpenCV does), source indices clamped at the borders, the two passes summed in 32-bit
integers and the result rounded with a 22-bit shift and saturated, so every output byte
is the same (tests/test_resample.py compares them). Only the loops differ: each pass runs over
contiguous rows (numba-compiled, vectorised), and the region is read in place. Exact integer
sums do not depend on the order of the passes; the sums stay below 2**31 (|weights| sum to
less than 1.33 x 2048 per pass).

`lanczos_crop` falls back to `cv2.resize` for anything but C-contiguous uint8 (H, W, C) frames,
or when numba is missing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

__all__ = ["lanczos_crop", "lanczos_taps"]

_S45 = 0.70710678118654752440084436210485
#: (sin, cos) factors of tap i of the Lanczos-4 window, in OpenCV's closed form.
_CS = np.array(
    [(1, 0), (-_S45, -_S45), (0, 1), (_S45, -_S45), (-1, 0), (_S45, _S45), (0, -1), (-_S45, _S45)]
)


@functools.lru_cache(maxsize=4096)
def lanczos_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """(dst, 8) int32 source indices (clamped to [0, src)) and (dst, 8) int32 weights (sum
    ~2048) of the Lanczos-4 resize of `src` samples to `dst`, as OpenCV computes them."""
    scale = 1.0 / (dst / src)  # OpenCV: scale = 1 / inv_scale, inv_scale = dst / src
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(f).astype(np.int64)
    x = (f - start.astype(np.float32)).astype(np.float32)
    y0 = -(x + np.float32(3)).astype(np.float64) * math.pi * 0.25
    s0, c0 = np.sin(y0), np.cos(y0)
    coeffs = np.empty((dst, 8), np.float32)
    total = np.zeros(dst, np.float32)
    for i in range(8):
        yi = x + np.float32(3 - i)  # float32, as in OpenCV
        y = -yi.astype(np.float64) * math.pi * 0.25
        with np.errstate(divide="ignore", invalid="ignore"):
            value = ((_CS[i, 0] * s0 + _CS[i, 1] * c0) / (y * y)).astype(np.float32)
        coeffs[:, i] = np.where(np.abs(yi) >= np.float32(1e-6), value, np.float32(1e30))
        total = (total + coeffs[:, i]).astype(np.float32)
    coeffs *= (np.float32(1) / total)[:, None]
    weights = np.rint(coeffs * np.float32(2048)).astype(np.int32)
    index = np.clip(start[:, None] - 3 + np.arange(8), 0, src - 1).astype(np.int32)
    return index, weights


def _lanczos_kernel(frame, y1, x1, h, w, yi, yw, xi, xw):  # pragma: no cover - numba compiles it
    """(oh, ow * C) uint8: frame[y1:y1+h, x1:x1+w] resized with taps (yi, yw) x (xi, xw)."""
    cn = frame.shape[2]
    oh, ow = yi.shape[0], xi.shape[0]
    n = w * cn
    flat = frame.reshape(frame.shape[0], frame.shape[1] * cn)
    cols = np.empty((w, oh * cn), np.int32)  # vertical pass, stored column-major
    acc = np.empty(n, np.int32)
    for dy in range(oh):
        acc[:] = 0
        for k in range(8):
            b = yw[dy, k]
            row = flat[y1 + yi[dy, k], x1 * cn : x1 * cn + n]
            for i in range(n):
                acc[i] += b * np.int32(row[i])
        for x in range(w):
            for c in range(cn):
                cols[x, dy * cn + c] = acc[x * cn + c]
    m = oh * cn
    out = np.empty((oh, ow * cn), np.uint8)
    acc2 = np.empty(m, np.int32)
    for dx in range(ow):
        acc2[:] = 0
        for k in range(8):
            a = xw[dx, k]
            col = cols[xi[dx, k]]
            for i in range(m):
                acc2[i] += a * col[i]
        for dy in range(oh):
            for c in range(cn):
                v = (acc2[dy * cn + c] + (1 << 21)) >> 22
                out[dy, dx * cn + c] = min(max(v, 0), 255)
    return out


@functools.cache
def _compiled() -> Callable | None:
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return numba.njit(cache=True, nogil=True)(_lanczos_kernel)


def lanczos_crop(frame: np.ndarray, rect: tuple[int, int, int, int], size: int) -> np.ndarray:
    """frame[y1:y2, x1:x2] resized to (size, size) with Lanczos-4: the bytes of
    `cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LANCZOS4)`.

    rect: (x1, y1, x2, y2) integer pixel rectangle inside the frame, non-empty.
    """
    x1, y1, x2, y2 = (int(v) for v in rect)
    kernel = _compiled()
    ok = frame.dtype == np.uint8 and frame.ndim == 3 and frame.flags.c_contiguous
    if kernel is None or not ok or x2 <= x1 or y2 <= y1:
        region = frame[y1:y2, x1:x2]
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_LANCZOS4)
    h, w = y2 - y1, x2 - x1
    yi, yw = lanczos_taps(h, size)
    xi, xw = lanczos_taps(w, size)
    out = kernel(frame, y1, x1, h, w, yi, yw, xi, xw)
    return out.reshape(size, size, frame.shape[2])
