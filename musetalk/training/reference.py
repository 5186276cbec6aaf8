"""Reference-frame selection: which frame of the same sample conditions each target frame.

The UNet sees a masked target crop and an unmasked reference crop of the same person; the
reference must not leak the target's mouth, so it is taken at least `min_gap` frames away.

Rules (a pure function of the sample's landmarks and a random generator):

- ``random``: uniform among the frames at least `min_gap` frames from the target.
- ``v15`` (MuseTalk 1.5): among those frames, the `fraction` (51%) most pose-similar to the
  target (jaw landmarks 0-16) intersected with the `fraction` most mouth-dissimilar (inner lips
  60-67); uniform within the intersection, or among all candidates if it is empty. Both
  fractions are of the same candidate set, so with fraction > 0.5 the intersection is never
  empty (pigeonhole); the fallback only matters for smaller fractions.

Descriptors are invariant to translation and face size: the jaw points minus their centroid,
divided by the jaw's RMS radius; the inner-lip points minus their own centroid, divided by the
same jaw radius (so the mouth opening is measured relative to the face, not to the mouth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "JAW",
    "INNER_LIPS",
    "REFERENCE_RULES",
    "candidate_frames",
    "pose_mouth_descriptors",
    "select_references",
    "v15_candidates",
]

JAW = slice(0, 17)  # 0-based iBUG jaw line
INNER_LIPS = slice(60, 68)  # 0-based iBUG inner lips
REFERENCE_RULES = ("v15", "random")


def _landmark_sequence(landmarks: object) -> np.ndarray:
    lms = np.asarray(landmarks, dtype=np.float64)
    if lms.ndim != 3 or lms.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must have shape (T, 68, 2) (0-based iBUG), got {lms.shape}")
    return lms


def pose_mouth_descriptors(landmarks: object) -> tuple[np.ndarray, np.ndarray]:
    """(T, 34) pose and (T, 16) mouth descriptors of (T, 68, 2) landmarks (any pixel units).

    pose = (jaw - jaw centroid) / jaw RMS radius; mouth = (inner lips - their centroid) / the
    same jaw radius. Euclidean distances between rows compare head pose / mouth shape.
    """
    lms = _landmark_sequence(landmarks)
    jaw = lms[:, JAW] - lms[:, JAW].mean(axis=1, keepdims=True)
    radius = np.sqrt((jaw**2).sum(axis=2).mean(axis=1))
    radius = np.maximum(radius, 1e-6)[:, None, None]
    lips = lms[:, INNER_LIPS] - lms[:, INNER_LIPS].mean(axis=1, keepdims=True)
    num = len(lms)
    return (jaw / radius).reshape(num, -1), (lips / radius).reshape(num, -1)


def candidate_frames(num_frames: int, target: int, min_gap: int) -> np.ndarray:
    """(K,) int64 frames i of [0, num_frames) with |i - target| >= min_gap, ascending."""
    frames = np.arange(num_frames, dtype=np.int64)
    return frames[np.abs(frames - int(target)) >= min_gap]


def v15_candidates(
    pose: np.ndarray, mouth: np.ndarray, target: int, min_gap: int = 5, fraction: float = 0.51
) -> np.ndarray:
    """(K,) int64 ascending: the v15 intersection for one target frame (may be empty).

    pose, mouth: descriptors from `pose_mouth_descriptors`. Of the candidate frames (>= min_gap
    away) keep the ceil(fraction * n) nearest in pose and the ceil(fraction * n) farthest in
    mouth shape (ties broken by frame order) and intersect them.
    """
    cand = candidate_frames(len(pose), target, min_gap)
    if cand.size == 0:
        return cand
    keep = math.ceil(fraction * cand.size)
    pose_dist = np.linalg.norm(pose[cand] - pose[target], axis=1)
    mouth_dist = np.linalg.norm(mouth[cand] - mouth[target], axis=1)
    similar = cand[np.argsort(pose_dist, kind="stable")[:keep]]
    dissimilar = cand[np.argsort(-mouth_dist, kind="stable")[:keep]]
    return np.intersect1d(similar, dissimilar)


def select_references(
    landmarks: object,
    targets: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    rule: str = "v15",
    min_gap: int = 5,
    fraction: float = 0.51,
) -> np.ndarray:
    """(F,) int64 reference frame per target frame, each >= min_gap frames from its target.

    landmarks: (T, 68, 2) of the whole sample; targets: (F,) frame indices in [0, T).
    rule: "v15" or "random" (see the module docstring). ValueError when a target has no frame
    >= min_gap away (the sample is too short: it needs T >= min_gap + 1 frames on one side).
    """
    if rule not in REFERENCE_RULES:
        raise ValueError(f"reference rule must be one of {REFERENCE_RULES}, got {rule!r}")
    if min_gap < 1:
        raise ValueError(f"min_gap must be >= 1, got {min_gap}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    lms = _landmark_sequence(landmarks)
    num = len(lms)
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= num):
        raise ValueError(f"target frames {targets.tolist()} outside [0, {num})")
    pose, mouth = pose_mouth_descriptors(lms) if rule == "v15" else (None, None)
    out = np.empty(len(targets), dtype=np.int64)
    for j, target in enumerate(targets):
        cand = candidate_frames(num, int(target), min_gap)
        if cand.size == 0:
            raise ValueError(
                f"no reference frame >= {min_gap} frames from frame {int(target)} in a sample "
                f"of {num} frames"
            )
        if rule == "v15":
            best = v15_candidates(pose, mouth, int(target), min_gap, fraction)
            if best.size:
                cand = best
        out[j] = cand[rng.integers(cand.size)]
    return out
