"""Training crops re-derived from the stored context crops with the region module.

The sample json holds landmarks and detector boxes in original-frame pixels and, per frame, the
rectangle of the stored context crop and its stored size; these functions map them into the
crop and compute the training box (or the inference box for a bbox_shift) there, so training
crops come from `region.crop`, the same code inference uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from musetalk.face import region

__all__ = ["context_box", "mouth_box"]


def context_box(
    landmarks: object,
    det_box: object,
    crop_rect: Sequence[int],
    crop_size: Sequence[int],
    bottom_margin: float = 0.0,
    shift_norm: float | None = None,
) -> np.ndarray:
    """(4,) face box (x1, y1, x2, y2) in pixels of the stored context crop of one frame.

    landmarks (68, 2) and det_box are in original-frame pixels (the sample json); crop_rect /
    crop_size are the frame's stored crop rectangle and (width, height). Both are mapped into
    the crop, then: the training box with `bottom_margin` (original-frame pixels, converted to
    crop pixels) added to y2; or, with `shift_norm` (nose lengths), the inference box with
    bbox_shift = shift_norm * nose length and extra_margin = the bottom margin (falling back
    to the training box when the region module returns no box).
    """
    lms = region.points_to_crop(region.as_landmarks(landmarks), crop_rect, crop_size)
    det = region.box_to_crop(det_box, crop_rect, crop_size)
    margin = float(bottom_margin) * crop_size[1] / (crop_rect[3] - crop_rect[1])
    if shift_norm is not None and np.isfinite(shift_norm):
        box = region.inference_box(
            lms,
            bbox_shift=float(shift_norm) * region.nose_length(lms),
            extra_margin=margin,
            frame_size=(int(crop_size[1]), int(crop_size[0])),
            det_box=det,
        )
        if box is not None:
            return box
    box = region.training_box(det, lms)
    box[3] += margin
    return box


#: MuseTalk's mouth-discriminator box: the lips' x-extent +- this many px of a 256 px crop.
MOUTH_PADDING = 10.0


def mouth_box(
    landmarks: np.ndarray,
    crop_rect: Sequence[int],
    crop_size: Sequence[int],
    box: np.ndarray,
    padding: float,
    size: int,
) -> np.ndarray:
    """(4,) mouth box (x1, y1, x2, y2) in S x S training-crop pixels, MuseTalk's rule: the x
    extent of lips landmarks 48-66 +- `padding` px (in a 256 px crop, scaled to S), height =
    width / 2, centred on the lips' y midpoint; clipped to the crop. `box` is the training
    crop's box in the stored context crop (`context_box`)."""
    lips = region.points_to_crop(landmarks[48:67], crop_rect, crop_size)
    x1, y1, x2, y2 = region.pixel_rect(box, (int(crop_size[1]), int(crop_size[0])))
    lips = (lips - (x1, y1)) * (size / (x2 - x1), size / (y2 - y1))  # into S x S crop pixels
    pad = padding * size / region.CROP_SIZE
    left, right = lips[:, 0].min() - pad, lips[:, 0].max() + pad
    middle = (lips[:, 1].min() + lips[:, 1].max()) / 2
    half = (right - left) / 4
    out = np.array([left, middle - half, right, middle + half], dtype=np.float32)
    return np.clip(out, 0, size)
