"""Lip-sync quality metrics on aligned frames: image similarity on the face crop, mouth landmarks.

PSNR and SSIM come from torchmetrics (a maintained implementation); LMD and the mouth opening
are computed from 68-point landmarks (0-based iBUG: mouth 48-67, inner lips 60-67, outer eye
corners 36 and 45). All landmark distances are in units of the reference's inter-ocular
distance, so they do not depend on the video's resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

__all__ = [
    "MOUTH",
    "image_scores",
    "inter_ocular",
    "lmd",
    "mouth_opening",
    "offset_curve",
    "pearson",
]

MOUTH = slice(48, 68)  # the 20 mouth landmarks (outer 48-59, inner 60-67)
UPPER_INNER, LOWER_INNER = (61, 62, 63), (67, 66, 65)  # facing pairs of the inner lips


def image_scores(generated: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame PSNR (dB) and SSIM of (N, S, S, 3) uint8 crops, whole and lower half
    (`psnr_mouth`, `ssim_mouth`). Identical crops have PSNR inf."""
    gen = torch.from_numpy(np.ascontiguousarray(generated)).permute(0, 3, 1, 2).float() / 255
    ref = torch.from_numpy(np.ascontiguousarray(reference)).permute(0, 3, 1, 2).float() / 255
    half = gen.shape[-2] // 2
    out: dict[str, np.ndarray] = {}
    for name, (g, r) in {
        "": (gen, ref),
        "_mouth": (gen[..., half:, :], ref[..., half:, :]),
    }.items():
        psnr = peak_signal_noise_ratio(g, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
        ssim = structural_similarity_index_measure(g, r, data_range=1.0, reduction="none")
        out[f"psnr{name}"] = psnr.numpy().astype(np.float64)
        out[f"ssim{name}"] = ssim.numpy().astype(np.float64)
    return out


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """(N,) distance between the outer eye corners 36 and 45 of (N, 68, 2) landmarks, px."""
    return np.linalg.norm(landmarks[:, 45] - landmarks[:, 36], axis=-1)


def lmd(generated: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N,) mean distance of the 20 mouth landmarks of (N, 68, 2) generated vs reference
    landmarks, divided by `scale` (N,) (the reference's inter-ocular distance)."""
    dist = np.linalg.norm(generated[:, MOUTH] - reference[:, MOUTH], axis=-1).mean(axis=1)
    return dist / scale


def mouth_opening(landmarks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N,) inner-lip opening: mean distance of the facing inner-lip points (61-67, 62-66,
    63-65) of (N, 68, 2) landmarks, divided by `scale` (N,)."""
    upper, lower = landmarks[:, list(UPPER_INNER)], landmarks[:, list(LOWER_INNER)]
    return np.linalg.norm(upper - lower, axis=-1).mean(axis=1) / scale


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two series; None when either is constant or shorter than 3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def offset_curve(
    generated: np.ndarray,
    reference: np.ndarray,
    scale: np.ndarray,
    valid: np.ndarray,
    max_offset: int = 15,
) -> dict[int, float | None]:
    """Mouth LMD of generated frame t + k against reference frame t, for k in
    [-max_offset, max_offset], averaged over the frames where both have a face (None where
    there are none). A video in sync has its minimum at k = 0; a generated video whose mouth
    lags its audio by d frames has it at k = +d (the sign of syncnet_python's AV offset)."""
    n = len(generated)
    curve: dict[int, float | None] = {}
    for k in range(-max_offset, max_offset + 1):
        t = np.arange(max(0, -k), min(n, n - k))
        ok = valid[t] & valid[t + k]
        if not ok.any():
            curve[k] = None
            continue
        t = t[ok]
        values = lmd(generated[t + k], reference[t], scale[t])
        curve[k] = float(values.mean()) if math.isfinite(values.mean()) else None
    return curve
