"""The face-analysis interface shared by every backend.

A backend finds faces (`detect`) and fits 68 landmarks inside given boxes (`landmarks`); calling
it on a list of frames does both. Landmarks are (68, 2) float arrays in original-frame pixels,
0-based iBUG-300W order (27-30 nose bridge, 48-67 lips). Boxes are (x1, y1, x2, y2) floats.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musetalk.config import check_options
from musetalk.errors import ConfigError

NUM_LANDMARKS = 68


@dataclass(frozen=True)
class Face:
    """One face in one frame.

    box: (4,) float, detector box (x1, y1, x2, y2) in original-frame pixels.
    landmarks: (68, 2) float, 0-based iBUG-300W order, original-frame pixels.
    score: detector confidence (backend-specific scale; higher is more confident).
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float64).reshape(4)
        lms = np.asarray(self.landmarks, dtype=np.float64)
        if lms.shape != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must have shape (68, 2), got {lms.shape}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", lms)
        object.__setattr__(self, "score", float(self.score))

    @property
    def area(self) -> float:
        """Detector box area in square pixels."""
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceAnalyzer:
    """Base class of the backends: `detect` + `landmarks`, and `__call__` over frames.

    Subclasses set `name`, implement `detect` and `landmarks`, and report their settings in
    `settings` (recorded in every shard so a dataset says how its landmarks were made). They
    may override `analyze` when their detector knows more than a box (the dlib backend fits
    faces found in rotated scans in an upright copy). `musetalk.face.tracking.FaceTracker`
    uses `analyze` on key frames, `landmarks` to follow faces and `detect` on small crops.
    """

    name: str = "base"

    @property
    def version(self) -> str:
        """Backend library/model version string, recorded with the landmarks."""
        return "unknown"

    @property
    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings that change the output."""
        return {}

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Find faces in one RGB uint8 frame (H, W, 3): a list of ((4,) box, score)."""
        raise NotImplementedError

    def landmarks(self, frame: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
        """Fit 68 landmarks in each box of one frame: (N, 68, 2) float, frame pixels."""
        raise NotImplementedError

    def analyze(self, frame: np.ndarray) -> list[Face]:
        """Detect then fit landmarks in one frame; faces sorted by decreasing box area."""
        found = self.detect(frame)
        if not found:
            return []
        boxes = [box for box, _ in found]
        lms = self.landmarks(frame, boxes)
        faces = [Face(box, lm, score) for (box, score), lm in zip(found, lms, strict=True)]
        return sorted(faces, key=lambda f: -f.area)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """Per frame, the faces found (each with box, landmarks, score), largest first."""
        return [self.analyze(check_frame(frame)) for frame in frames]


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 (H, W, 3) frame and return it as a contiguous array."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 frame of shape (H, W, 3), "
            f"got dtype {arr.dtype} shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


# name -> "module:attribute" of a FaceAnalyzer subclass; imported lazily so optional backends
# (and their heavy dependencies) are only loaded when asked for.
BACKENDS: dict[str, str] = {
    "dlib": "musetalk.face.backends.dlib_backend:DlibAnalyzer",
    "dwpose": "musetalk.face.backends.dwpose:DWPoseAnalyzer",
    "fan": "musetalk.face.backends.fan:FanAnalyzer",
}
DEFAULT_BACKEND = "dlib"


def backend_class(backend: str) -> Callable[..., FaceAnalyzer]:
    """The FaceAnalyzer subclass of a backend name (its module imported now)."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"face.backend={backend!r}: unknown backend; expected one of {sorted(BACKENDS)}"
        )
    module_name, attr = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), attr)


def check_face(face: Mapping[str, Any], prefix: str = "face") -> None:
    """Check a face setting `{backend: name, **options}` against the backend's constructor
    (names and types) without loading any model; ConfigError names the bad key."""
    options = dict(face)
    if "backend" not in options:
        raise ConfigError(f"{prefix}.backend: required, not given (one of {sorted(BACKENDS)})")
    check_options(backend_class(options.pop("backend")), options, prefix)


def build_analyzer(backend: str = DEFAULT_BACKEND, **options: Any) -> FaceAnalyzer:
    """Build a face analyzer by backend name; options go to the backend's constructor."""
    return backend_class(backend)(**options)
