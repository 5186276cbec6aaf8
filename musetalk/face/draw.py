"""Drawing of face-analysis results, like the seed's figure: boxes, numbered landmarks, the
training and inference boxes and the mask boundary for a given bbox_shift, a legend, and a
zoomed panel of the main face where its landmark numbers are readable."""

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
OTHER_FACE = (160, 160, 160)

#: Landmark numbers are drawn when the face's landmarks span at least this many pixels
#: vertically; smaller faces get them in the zoomed panel only.
NUMBERS_MIN_FACE_PX = 360
#: Height of the zoomed main-face panel (px).
PANEL_HEIGHT = 720


def draw_face(
    image: np.ndarray,
    face: Face,
    bbox_shift: float = 0,
    extra_margin: float = 0,
    numbers: bool | None = None,
    main: bool = True,
    frame_size: tuple[int, int] | None = None,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Draw one face's analysis on a copy of an RGB uint8 image (H, W, 3).

    Detector box (yellow), the 68 landmarks with their 0-based iBUG numbers (green, nose 28-30
    magenta), the training box of the seed (light blue), the inference box for `bbox_shift`
    (red) and its mask boundary (white line, at landmark 29 + bbox_shift). A face that is not
    the `main` one (the face inference lip-syncs) gets its detector box and landmarks only, in
    grey. numbers: None = only where they fit (`NUMBERS_MIN_FACE_PX`).

    The geometry is computed in the frame's pixels (`frame_size`, default the image's) and
    drawn at `(xy - offset) * scale`, so a zoomed crop of the frame shows the same boxes.
    """
    out = np.ascontiguousarray(image.copy())
    size = frame_size if frame_size is not None else out.shape[:2]

    def to_image(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64).reshape(-1, 2) - offset) * scale

    def box(b: object) -> np.ndarray:
        return to_image(region.as_box(b).reshape(2, 2)).reshape(4)

    ui = max(out.shape[:2]) / 1000.0
    thick = max(1, round(2 * ui))
    _rect(out, box(face.box), DETECTOR if main else OTHER_FACE, thick)
    if main:
        _rect(out, box(region.training_box(face.box, face.landmarks)), TRAINING, thick)
        info = region.inference_region(
            face.landmarks, bbox_shift, extra_margin, frame_size=size, det_box=face.box
        )
        if info is not None:
            x1, y1, x2, _ = (round(v) for v in box(info.box))
            _rect(out, box(info.box), INFERENCE, thick)
            y = round((info.mask_upper_bound - offset[1]) * scale)
            cv2.line(out, (x1, y), (x2, y), BOUNDARY, thick, cv2.LINE_AA)
            label = f"bbox_shift={bbox_shift:g}" + (" (detector box)" if info.fallback else "")
            _text(out, label, (x1, max(12, y1 - 6)), INFERENCE, ui)
    points = to_image(face.landmarks)
    if numbers is None:
        numbers = np.ptp(points[:, 1]) >= NUMBERS_MIN_FACE_PX
    radius = max(1, round(3 * ui))
    for k, (x, y) in enumerate(points):
        color = (NOSE if k in region.NOSE_LANDMARKS else LANDMARK) if main else OTHER_FACE
        cv2.circle(out, (round(x), round(y)), radius, color, -1, cv2.LINE_AA)
        if numbers and main:
            _text(out, str(k), (round(x) + radius + 1, round(y) - radius), color, 0.6 * ui)
    return out


def face_panel(
    image: np.ndarray,
    face: Face,
    bbox_shift: float,
    extra_margin: float,
    height: int = PANEL_HEIGHT,
) -> np.ndarray:
    """The main face zoomed to `height` px (its inference and detector boxes plus a margin),
    drawn with `draw_face` and landmark numbers: readable however small the face is in the
    frame."""
    h, w = image.shape[:2]
    boxes = [region.as_box(face.box), region.training_box(face.box, face.landmarks)]
    info = region.inference_region(face.landmarks, bbox_shift, extra_margin, (h, w), face.box)
    if info is not None:
        boxes.append(region.as_box(info.box))
    x1, y1 = np.min([b[:2] for b in boxes], axis=0)
    x2, y2 = np.max([b[2:] for b in boxes], axis=0)
    pad = 0.12 * max(x2 - x1, y2 - y1)
    x1, y1 = max(0, int(x1 - pad)), max(0, int(y1 - pad))
    x2, y2 = min(w, int(np.ceil(x2 + pad))), min(h, int(np.ceil(y2 + pad)))
    scale = height / max(1, y2 - y1)
    crop = cv2.resize(
        image[y1:y2, x1:x2],
        (max(1, round((x2 - x1) * scale)), height),
        interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA,
    )
    return draw_face(
        crop, face, bbox_shift, extra_margin, True, True, (h, w), scale, (float(x1), float(y1))
    )


def legend(
    width: int, backend: str, bbox_shift: float, extra_margin: float, faces: int
) -> np.ndarray:
    """A legend strip `width` px wide (dark, RGB uint8) saying what each colour is, to stack
    under a drawing so that it never covers the face."""
    entries = [
        (DETECTOR, f"detector box ({backend})"),
        (TRAINING, "training box (seed: detector top, landmark bottom)"),
        (INFERENCE, f"inference box: bbox_shift={bbox_shift:g}, extra_margin={extra_margin:g}"),
        (BOUNDARY, "mask boundary = landmark 29 + bbox_shift"),
        (LANDMARK, "landmarks, 0-based iBUG-68"),
        (NOSE, "nose landmarks 28 / 29 / 30"),
    ]
    if faces > 1:
        entries.append((OTHER_FACE, "other faces (inference lip-syncs the main face)"))
    longest = max(len(t) for _, t in entries)
    ui = min(1.5, max(0.5, width / (longest * 12.0 + 60)))  # the longest line fits the width
    line = round(22 * ui)
    out = np.full((line * len(entries) + line // 2, width, 3), 24, np.uint8)
    for i, (color, text) in enumerate(entries):
        y = line * (i + 1)
        cv2.rectangle(out, (line // 3, y - line // 2), (line, y), color, -1)
        cv2.putText(
            out, text, (line + line // 3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * ui, color, 1,
            cv2.LINE_AA,
        )  # fmt: skip
    return out


def _rect(image: np.ndarray, box: object, color: tuple[int, int, int], thick: int) -> None:
    x1, y1, x2, y2 = (round(v) for v in region.as_box(box))
    cv2.rectangle(image, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)


def _text(image: np.ndarray, text: str, org: tuple[int, int], color, scale: float) -> None:
    font_scale = max(0.3, 0.5 * scale)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1, cv2.LINE_AA)
