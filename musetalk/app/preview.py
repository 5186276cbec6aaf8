"""The Preview's two images: the annotated frame and the masked crop the UNet will see.

The annotated frame is the whole frame (scaled to `HEIGHT`) beside a zoomed panel of the face
with its landmark numbers (`musetalk.face.draw`: landmarks, nose landmarks 28/29/30, training
box, inference box, mask boundary at landmark 29 + bbox_shift), over a legend strip. The crop is
the 256x256 crop of the inference box with its lower half black (`models.mask_lower_half`), as
the UNet's masked input is made from it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from musetalk.face import region
from musetalk.face.analyzer import Face
from musetalk.face.draw import draw_face, face_panel, legend
from musetalk.inference.avatar import region_arrays
from musetalk.models import mask_lower_half

__all__ = ["HEIGHT", "annotated", "masked_crop"]

#: Height of the annotated preview (px).
HEIGHT = 640


def annotated(
    frame: np.ndarray,
    face: Face,
    bbox_shift: float,
    extra_margin: float,
    backend: str,
    shift_range: tuple[float, float],
) -> np.ndarray:
    """The frame scaled to HEIGHT with the face drawn, its zoomed panel, and a legend."""
    h, w = frame.shape[:2]
    scale = HEIGHT / h
    small = cv2.resize(frame, (max(1, round(w * scale)), HEIGHT), interpolation=cv2.INTER_AREA)
    left = draw_face(small, face, bbox_shift, extra_margin, False, True, (h, w), scale)
    panel = face_panel(frame, face, bbox_shift, extra_margin, HEIGHT)
    top = np.concatenate([left, panel], axis=1)
    strip = legend(top.shape[1], backend, bbox_shift, extra_margin, 1)
    lo, hi = (int(v) for v in shift_range)
    note = f"adjustable range [{lo} ~ {hi}] px: boundary from landmark 28 to landmark 30"
    bar = np.full((28, top.shape[1], 3), 24, np.uint8)
    cv2.putText(bar, note, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([top, strip, bar], axis=0)


def masked_crop(
    frame: np.ndarray, face: Face, bbox_shift: float, extra_margin: float
) -> np.ndarray | None:
    """(256, 256, 3) uint8: the inference box's crop with the lower half black, as the UNet's
    masked input is made (black where it has to inpaint the mouth); None when the frame has no
    usable inference box (generation passes it through unchanged)."""
    regions = region_arrays(
        face.landmarks[None],
        face.box[None],
        np.ones(1, bool),
        bbox_shift,
        extra_margin,
        frame.shape[:2],
    )
    if not regions["has_face"][0]:
        return None
    crop = region.crop(frame, regions["rects"][0], region.CROP_SIZE)
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1.0
    masked = mask_lower_half(x)
    return ((masked + 1.0) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
