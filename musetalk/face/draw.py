"""Drawing of face-analysis results, like the seed's figure: boxes, numbered landmarks, the
training and inference boxes and the mask boundary for a given bbox_shift."""

from __future__ import annotations

import cv2
import numpy as np

from musetalk.face import region
from musetalk.face.analyzer import Face

# RGB colours
DETECTOR = (255, 255, 0)
LANDMARK = (0, 255, 0)
NOSE = (255, 0, 255)
TRAINING = (0, 160, 255)
INFERENCE = (255, 64, 64)
BOUNDARY = (255, 255, 255)


def draw_face(
    image: np.ndarray,
    face: Face,
    bbox_shift: float = 0,
    extra_margin: float = 0,
    numbers: bool = True,
) -> np.ndarray:
    """Draw one face's analysis on a copy of an RGB uint8 image (H, W, 3).

    Detector box (yellow), the 68 landmarks with their 0-based iBUG numbers (green, nose 28-30
    magenta), the training box of the seed (light blue), the inference box for `bbox_shift`
    (red) and its mask boundary (white line, at landmark 29 + bbox_shift).
    """
    out = np.ascontiguousarray(image.copy())
    scale = max(out.shape[:2]) / 1000.0
    thick = max(1, round(2 * scale))
    _rect(out, face.box, DETECTOR, thick)
    _rect(out, region.training_box(face.box, face.landmarks), TRAINING, thick)
    box_info = region.inference_region(
        face.landmarks, bbox_shift, extra_margin, frame_size=out.shape[:2], det_box=face.box
    )
    if box_info is not None:
        _rect(out, box_info.box, INFERENCE, thick)
        y = round(box_info.mask_upper_bound)
        x1, _, x2, _ = (round(v) for v in box_info.box)
        cv2.line(out, (x1, y), (x2, y), BOUNDARY, thick, cv2.LINE_AA)
        label = f"bbox_shift={bbox_shift:g}" + (" (detector box)" if box_info.fallback else "")
        _text(out, label, (x1, max(12, round(box_info.box[1]) - 6)), INFERENCE, scale)
    radius = max(1, round(3 * scale))
    for k, (x, y) in enumerate(face.landmarks):
        color = NOSE if k in region.NOSE_LANDMARKS else LANDMARK
        cv2.circle(out, (round(x), round(y)), radius, color, -1, cv2.LINE_AA)
        if numbers:
            _text(out, str(k), (round(x) + radius + 1, round(y) - radius), color, 0.6 * scale)
    return out


def _rect(image: np.ndarray, box: object, color: tuple[int, int, int], thick: int) -> None:
    x1, y1, x2, y2 = (round(v) for v in region.as_box(box))
    cv2.rectangle(image, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)


def _text(image: np.ndarray, text: str, org: tuple[int, int], color, scale: float) -> None:
    font_scale = max(0.3, 0.5 * scale)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1, cv2.LINE_AA)
