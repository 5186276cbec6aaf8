"""Region math: the one implementation of the face boxes, the mask boundary and bbox_shift.

Used unchanged by preprocessing, training and inference. Pure numpy, no I/O, no models.

Conventions (see README "Region conventions"):
- A box is (x1, y1, x2, y2) in pixels of the original frame, floats until the final crop;
  anything `np.asarray(box)` turns into 4 finite floats is accepted.
- Landmarks are (68, 2) float arrays (x, y) in original-frame pixels, 0-based iBUG-300W order:
  27-30 nose bridge (28 mid bridge, 29 lower bridge, 30 nose tip), 48-67 lips.
- The model inpaints the lower half of the square crop, so a box's mask upper bound is its middle
  row, (y1 + y2) / 2.
- bbox_shift s (pixels of the original frame) moves the inference box's middle row to
  landmark 29's y + s: positive = down towards the mouth (more mouth motion), negative = up
  (more appearance detail). The top edge moves by 2 * s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Version of this math. Written into every shard; readers refuse versions they do not know.
REGION_VERSION = 1

#: 0-based iBUG indices of the nose landmarks the mask boundary is compared with.
NOSE_LANDMARKS = (28, 29, 30)
NOSE_TOP = 27  # start of the nose bridge: the nose length is lm30.y - lm27.y

#: Side of the square face crop the model inpaints (MuseTalk's 256x256).
CROP_SIZE = 256
#: Pixels added below the landmarks at inference, per MuseTalk version (v1.5: 10, v1.0: 0).
EXTRA_MARGIN = {"v15": 10.0, "v1": 0.0}


def as_box(box: object) -> np.ndarray:
    """A box as a (4,) float64 array (x1, y1, x2, y2); ValueError if it is not 4 finite numbers."""
    arr = np.asarray(box, dtype=np.float64)
    if arr.shape != (4,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"a box must be 4 finite numbers (x1, y1, x2, y2), got {box!r}")
    return arr


def as_landmarks(landmarks: object) -> np.ndarray:
    """Landmarks as a (68, 2) float64 array; ValueError on any other shape."""
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2) (0-based iBUG order), got {arr.shape}")
    return arr


def is_valid_box(box: np.ndarray, frame_size: tuple[int, int] | None = None) -> bool:
    """True when the box is finite with positive width and height (and inside the frame).

    frame_size: (height, width) in pixels; when given the box must lie within [0, w] x [0, h].
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return False
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return False
    if x1 < 0 or y1 < 0:
        return False
    if frame_size is not None:
        h, w = frame_size
        if x2 > w or y2 > h:
            return False
    return True


def clip_box(box: object, frame_size: tuple[int, int]) -> np.ndarray:
    """Clip a box to the frame; frame_size is (height, width) in pixels."""
    h, w = frame_size
    x1, y1, x2, y2 = as_box(box)
    return np.array(
        [np.clip(x1, 0, w), np.clip(y1, 0, h), np.clip(x2, 0, w), np.clip(y2, 0, h)],
        dtype=np.float64,
    )


def training_box(det_box: object, landmarks: object) -> np.ndarray:
    """The seed's segmentation box: (min lm x, detector top, max lm x, max lm y)."""
    det = as_box(det_box)
    lms = as_landmarks(landmarks)
    return np.array(
        [lms[:, 0].min(), det[1], lms[:, 0].max(), lms[:, 1].max()],
        dtype=np.float64,
    )


def mask_upper_bound(box: object) -> float:
    """y of the box's middle row (pixels of the original frame): where the inpainted half starts."""
    _, y1, _, y2 = as_box(box)
    return float((y1 + y2) / 2.0)


def nearest_nose_landmark(y: float, landmarks: object) -> int:
    """Which of landmarks 28, 29, 30 (0-based) is nearest in y to `y`; ties go to the upper one."""
    lms = as_landmarks(landmarks)
    dists = [abs(float(y) - lms[k, 1]) for k in NOSE_LANDMARKS]
    return NOSE_LANDMARKS[int(np.argmin(dists))]


def nose_length(landmarks: object) -> float:
    """Vertical nose length lm30.y - lm27.y in pixels (the scale used to normalise shifts)."""
    lms = as_landmarks(landmarks)
    return float(lms[30, 1] - lms[NOSE_TOP, 1])


def equivalent_shift(det_box: object, landmarks: object) -> float:
    """The bbox_shift (px) that puts the inference mask boundary where the training box put it.

    = (det.y1 + max landmark y) / 2 - lm29.y. Positive means the training boundary was below
    landmark 29.
    """
    return training_frame(det_box, landmarks).equivalent_shift


def normalized_shift(shift_px: float, landmarks: object) -> float | None:
    """A shift in pixels divided by the nose length (lm30.y - lm27.y); None if that is not > 0."""
    length = nose_length(landmarks)
    if not np.isfinite(length) or length <= 0:
        return None
    return float(shift_px) / length


@dataclass(frozen=True)
class TrainingFrame:
    """What the seed's training box means for one frame: the statistics behind the 15/63/22
    shares and `bbox_shift=auto`. Pixels of the original frame; shifts + = below landmark 29.

    box: the training box; mask_upper_bound: its middle row; nearest_nose_landmark: 28, 29 or
    30; equivalent_shift: the bbox_shift putting the inference boundary there; its value in
    nose lengths (None when the nose length is not > 0); nose_length: lm30.y - lm27.y.
    """

    box: np.ndarray
    mask_upper_bound: float
    nearest_nose_landmark: int
    equivalent_shift: float
    equivalent_shift_norm: float | None
    nose_length: float


def training_frame(det_box: object, landmarks: object) -> TrainingFrame:
    """The `TrainingFrame` of one frame's detector box and landmarks."""
    lms = as_landmarks(landmarks)
    box = training_box(det_box, lms)
    bound = mask_upper_bound(box)
    shift = bound - float(lms[29, 1])
    return TrainingFrame(
        box=box,
        mask_upper_bound=bound,
        nearest_nose_landmark=nearest_nose_landmark(bound, lms),
        equivalent_shift=shift,
        equivalent_shift_norm=normalized_shift(shift, lms),
        nose_length=nose_length(lms),
    )


@dataclass(frozen=True)
class InferenceRegion:
    """The inference crop box of one frame and how it was obtained.

    box: (4,) float, final box (extra margin added, clipped when the frame size was given).
    mask_upper_bound: y of the mask boundary, the middle row of the box before the extra margin
        (= lm29.y + bbox_shift unless `clipped` or `fallback`).
    fallback: the landmark box was degenerate and the detector box was used instead.
    clipped: the box was cut by the frame edges (its middle row is no longer lm29.y + shift).
    """

    box: np.ndarray
    mask_upper_bound: float
    fallback: bool
    clipped: bool


def inference_region(
    landmarks: object | None,
    bbox_shift: float = 0,
    extra_margin: float = 0,
    frame_size: tuple[int, int] | None = None,
    det_box: object | None = None,
) -> InferenceRegion | None:
    """MuseTalk's nose-mirrored inference box, with flags; None when there is no usable face.

    With c = lm29.y + bbox_shift and y_max = max landmark y the box is
    (min lm.x, max(0, 2c - y_max), max lm.x, y_max + extra_margin): its middle row before the
    margin is c. A degenerate landmark box (non-finite, zero/negative size, or landmarks outside
    the frame) falls back to the detector box (flagged); without a usable detector box the
    result is None. frame_size is (height, width); when given the box is clipped to the frame.
    """
    box = None
    clipped = False
    if landmarks is not None:
        lms = as_landmarks(landmarks)
        if np.all(np.isfinite(lms)):
            c = lms[29, 1] + float(bbox_shift)
            y_max = lms[:, 1].max()
            extent = np.array([lms[:, 0].min(), lms[:, 1].min(), lms[:, 0].max(), y_max])
            candidate = np.array([extent[0], max(0.0, 2.0 * c - y_max), extent[2], y_max])
            if is_valid_box(extent, frame_size) and is_valid_box(candidate, frame_size):
                box = candidate
                clipped = bool(2.0 * c - y_max < 0.0)
    fallback = box is None
    if fallback:
        if det_box is None or not is_valid_box(np.asarray(det_box, dtype=np.float64)):
            return None
        box = as_box(det_box).copy()
    bound = mask_upper_bound(box)
    box[3] += float(extra_margin)
    if frame_size is not None:
        clipped_box = clip_box(box, frame_size)
        clipped = clipped or bool(np.any(clipped_box != box))
        box = clipped_box
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return InferenceRegion(box=box, mask_upper_bound=bound, fallback=fallback, clipped=clipped)


def inference_box(
    landmarks: object | None,
    bbox_shift: float = 0,
    extra_margin: float = 0,
    frame_size: tuple[int, int] | None = None,
    det_box: object | None = None,
) -> np.ndarray | None:
    """The inference crop box (x1, y1, x2, y2), or None; see `inference_region` for the flags."""
    region = inference_region(landmarks, bbox_shift, extra_margin, frame_size, det_box)
    return None if region is None else region.box


def shift_range(landmarks_seq: Iterable[object | None]) -> tuple[float, float]:
    """The geometric adjustable bbox_shift range (lo, hi) in pixels over a set of frames.

    lo = -mean(lm29.y - lm28.y) moves the boundary up to landmark 28 on average,
    hi = +mean(lm30.y - lm29.y) moves it down to landmark 30. Frames given as None (no face)
    are ignored. MuseTalk printed these two magnitudes swapped; this is the geometric range.
    """
    up, down = [], []
    for lm in landmarks_seq:
        if lm is None:
            continue
        lms = as_landmarks(lm)
        up.append(lms[29, 1] - lms[28, 1])
        down.append(lms[30, 1] - lms[29, 1])
    if not up:
        raise ValueError("shift_range needs at least one frame with landmarks")
    return -float(np.mean(up)), float(np.mean(down))


def shift_limits(landmarks_seq: Iterable[object | None]) -> tuple[int, int]:
    """The bbox_shift interval [lo, hi] (whole pixels) inside which the shift still moves the mask
    boundary of a set of frames, i.e. where the boundary is monotonic in the shift.

    hi: the largest shift at which every frame keeps a landmark box at least 2 px tall: at
    lm29.y + s >= the lowest landmark the box vanishes (MuseTalk then silently used the detector
    box). lo: the shift at which every frame's box top has reached the frame's top edge, where
    the top is clamped, so a smaller shift changes nothing. Frames given as None are ignored.
    Shifts outside are clipped to it (`clip_shift`).
    """
    lows, highs = [], []
    for lm in landmarks_seq:
        if lm is None:
            continue
        lms = as_landmarks(lm)
        y_max = lms[:, 1].max()
        lows.append(y_max / 2.0 - lms[29, 1])
        highs.append(y_max - lms[29, 1] - 1.0)
    if not lows:
        raise ValueError("shift_limits needs at least one frame with landmarks")
    return math.ceil(min(lows)), math.floor(min(highs))


def clip_shift(bbox_shift: float, limits: tuple[int, int]) -> float:
    """bbox_shift clipped to `shift_limits`' interval."""
    lo, hi = limits
    return min(max(bbox_shift, lo), hi)


def format_shift_range(num_frames: int, shift_range: tuple[float, float], current: float) -> str:
    """`Total frame: N  Manually adjust range: [lo ~ hi], the current value: s`.

    The bounds are whole pixels truncated towards zero, so every printed value is inside the
    geometric range.
    """
    return (
        f"Total frame: {int(num_frames)}  Manually adjust range: {range_text(shift_range)}, "
        f"the current value: {_fmt_number(current)}"
    )


def range_text(shift_range: tuple[float, float] | list[float]) -> str:
    """`[lo ~ hi]`: an adjustable range as every message prints it (whole pixels truncated
    towards zero, so every printed value is inside the range)."""
    lo, hi = shift_range
    return f"[{int(lo)} ~ {int(hi)}]"


def _fmt_number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def pixel_rect(box: object, frame_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """Integer pixel rectangle (x1, y1, x2, y2) of a box: rounded, clipped to the frame.

    The crop covers rows y1..y2-1 and columns x1..x2-1. ValueError if it is empty.
    """
    b = as_box(box) if frame_size is None else clip_box(box, frame_size)
    x1, y1, x2, y2 = (int(v) for v in np.round(b))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {tuple(b)} covers no whole pixel")
    return x1, y1, x2, y2


def crop(frame: np.ndarray, box: object, size: int = 256) -> np.ndarray:
    """The box's region of the frame resized to (size, size) with Lanczos (aspect not kept).

    frame: (H, W, C) uint8; returns (size, size, C) of the same dtype.

    OpenCV's Lanczos-4, computed in float32 and rounded to uint8 once at the end: OpenCV's
    float32 path is vectorised, its 8-bit one is not, so this is ~2x faster (0.8 vs 1.6 ms for
    a ~190 px region upscaled to 256 px). It is within 1 level of the 8-bit path (which
    MuseTalk calls), on ~4% of the pixels (tests/test_region.py); the training crops already
    come from JPEGs, several levels away from the frame.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3:
        raise ValueError(f"frame must be (H, W, C), got shape {frame.shape}")
    x1, y1, x2, y2 = pixel_rect(box, frame.shape[:2])
    pixels = frame[y1:y2, x1:x2]
    if pixels.dtype != np.uint8:
        return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LANCZOS4)
    resized = cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_LANCZOS4)
    return cv2.add(resized, 0.0, dtype=cv2.CV_8U)  # rounded half to even, saturated to 0..255


def context_rect(
    det_box: object,
    landmarks: object,
    frame_size: tuple[int, int],
    shift_support: float = 1.0,
    bottom_margin: float = 20.0,
    context: float = 0.15,
) -> tuple[int, int, int, int]:
    """Integer frame rectangle stored around a training face (the "context crop").

    It covers the detector box, the training box, the inference box for every bbox_shift within
    +-shift_support nose lengths and `bottom_margin` pixels below the landmarks, and is then
    grown by `context` of its width/height on every side and clipped to the frame, so training
    can re-derive any of those boxes from the stored crop with the functions of this module.
    frame_size: (height, width).
    """
    det = as_box(det_box)
    lms = as_landmarks(landmarks)
    y_max = lms[:, 1].max()
    length = max(nose_length(lms), 1.0)
    top_shifted = 2.0 * (lms[29, 1] - shift_support * length) - y_max
    x1 = min(det[0], lms[:, 0].min())
    x2 = max(det[2], lms[:, 0].max())
    y1 = min(det[1], lms[:, 1].min(), top_shifted)
    y2 = max(det[3], y_max + bottom_margin)
    w, h = x2 - x1, y2 - y1
    grown = (x1 - context * w, y1 - context * h, x2 + context * w, y2 + context * h)
    return pixel_rect(grown, frame_size)


def crop_scale(box: object, size: int = 256) -> float:
    """Scale (<= 1) at which the box's shorter side becomes `size` pixels.

    Storing a context crop at this scale means the size x size training crop of that box is
    never upsampled when the source has the pixels.
    """
    x1, y1, x2, y2 = as_box(box)
    short = min(x2 - x1, y2 - y1)
    if short <= 0:
        raise ValueError(f"box {(x1, y1, x2, y2)} has no area")
    return min(1.0, size / short)


def points_to_crop(points: object, rect: Sequence[int], crop_size: Sequence[int]) -> np.ndarray:
    """Map (..., 2) frame-pixel points into a stored crop of frame `rect` resized to crop_size.

    rect: (x1, y1, x2, y2) integer frame rectangle; crop_size: (width, height) of the crop.
    """
    pts = np.asarray(points, dtype=np.float64)
    x1, y1, x2, y2 = rect
    scale = np.array([crop_size[0] / (x2 - x1), crop_size[1] / (y2 - y1)])
    return (pts - np.array([x1, y1], dtype=np.float64)) * scale


def box_to_crop(box: object, rect: Sequence[int], crop_size: Sequence[int]) -> np.ndarray:
    """Map a frame box (x1, y1, x2, y2) into a stored crop; see `points_to_crop`."""
    return points_to_crop(as_box(box).reshape(2, 2), rect, crop_size).reshape(4)
