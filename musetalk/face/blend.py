"""Pasting a generated face crop back into its frame, through a feathered lower-face mask.

The model regenerates the whole size x size crop, but only its lower half (rows >= size / 2, below
the mask boundary) carries new content; the upper half is a VAE reconstruction of the source and
should not replace it. So the blend mask is a lower-face region in crop coordinates:

- default (`lower_face_mask`, no model needed): the polygon of the jaw landmarks 0-16 (closed
  across the face at the height of landmarks 0 and 16), grown by `grow` to leave room for a jaw
  that opens further than in the source frame;
- optional (`FaceParsing`): the skin, nose, mouth and lip classes of a BiSeNet-style
  face-parsing model (ONNX, run with onnxruntime) on the source crop.

Either region is then limited to the lower half of the crop, kept `feather` away from the crop's
edges and Gaussian-feathered (`feather_mask`), so the mask is exactly 0 on the crop's border and
in its upper half: no seam at the crop edge, and pixels outside the mask are the frame's own,
bit for bit. Masks are (size, size) uint8, 0 = keep the frame, 255 = take the generated crop.

Landmarks are (68, 2) in pixels of the original frame (0-based iBUG-300W order); a crop's
`rect` is the integer frame rectangle (x1, y1, x2, y2) it was cut from (`region.pixel_rect`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from musetalk.face import region
from musetalk.files import sha256_file

__all__ = [
    "BLEND_MODES",
    "FaceParsing",
    "feather_mask",
    "lower_face_mask",
    "paste",
]

BLEND_MODES = ("landmarks", "parsing")
JAW = slice(0, 17)  # 0-based iBUG jaw line, ear to ear through the chin (landmark 8)


def _pixels(fraction: float, size: int) -> int:
    if not 0 <= fraction < 0.5:
        raise ValueError(f"expected a fraction of the crop size in [0, 0.5), got {fraction}")
    return round(fraction * size)


def feather_mask(area: np.ndarray, feather: float = 0.05) -> np.ndarray:
    """(S, S) uint8 blend mask from a binary (S, S) region in crop coordinates.

    The region is cut to rows >= S/2 + f + 1 and kept f + 1 px away from the left, right and
    bottom edges (f = round(feather * S)), then blurred with a Gaussian of support f px
    (kernel 2f + 1, sigma f / 2): the result is exactly 0 on the crop's border and in its upper
    half, and ramps to 255 over about 2f px inside. feather: fraction of the crop size.
    """
    area = np.asarray(area)
    if area.ndim != 2 or area.shape[0] != area.shape[1]:
        raise ValueError(f"expected a square (S, S) region, got shape {area.shape}")
    size = area.shape[0]
    f = _pixels(feather, size)
    inset = f + 1
    binary = np.zeros((size, size), np.float32)
    top = size // 2 + inset
    binary[top : size - inset, inset : size - inset] = (
        area[top : size - inset, inset : size - inset] > 0
    )
    if f > 0:
        binary = cv2.GaussianBlur(
            binary, (2 * f + 1, 2 * f + 1), f / 2.0, borderType=cv2.BORDER_CONSTANT
        )
    return np.clip(np.rint(binary * 255.0), 0, 255).astype(np.uint8)


def lower_face_mask(
    landmarks: object,
    rect: Sequence[int],
    size: int = 256,
    feather: float = 0.05,
    grow: float = 0.04,
) -> np.ndarray:
    """(size, size) uint8 lower-face blend mask from one face's landmarks; see module docstring.

    landmarks: (68, 2) frame pixels. rect: the crop's integer frame rectangle (x1, y1, x2, y2).
    grow: the jaw polygon is dilated by this fraction of the crop size (an elliptical kernel).
    feather: see `feather_mask`.
    """
    jaw = region.points_to_crop(region.as_landmarks(landmarks)[JAW], rect, (size, size))
    area = np.zeros((size, size), np.uint8)
    cv2.fillPoly(area, [np.round(jaw).astype(np.int32)], 1)
    g = _pixels(grow, size)
    if g > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1, 2 * g + 1))
        area = cv2.dilate(area, kernel)
    return feather_mask(area, feather)


def paste(frame: np.ndarray, crop: np.ndarray, rect: Sequence[int], mask: np.ndarray) -> np.ndarray:
    """A copy of `frame` with `crop` resized into `rect` and blended through `mask`.

    frame: (H, W, 3) uint8. crop: (S, S, 3) uint8 generated crop. rect: integer (x1, y1, x2, y2)
    frame rectangle the crop stands for. mask: (S, S) uint8, 0 keeps the frame's pixel exactly,
    255 takes the crop's. Crop and mask are resized to the rectangle bilinearly.
    """
    x1, y1, x2, y2 = (int(v) for v in rect)
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0 or x1 < 0 or y1 < 0 or x2 > frame.shape[1] or y2 > frame.shape[0]:
        raise ValueError(f"rect {tuple(rect)} is empty or outside the frame {frame.shape[:2]}")
    alpha = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    out = frame.copy()  # the one full-frame copy; the blend below touches the mask's box only
    rows = np.flatnonzero(alpha.any(axis=1))
    if not rows.size:
        return out
    cols = np.flatnonzero(alpha.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    patch = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)[r0:r1, c0:c1]
    weights = alpha[r0:r1, c0:c1].astype(np.float32) * (1.0 / 255.0)
    dst = out[y1 + r0 : y1 + r1, x1 + c0 : x1 + c1]
    # dst = (w * patch + (1 - w) * dst) / 1, rounded: where w == 0 the frame pixel is exact, so
    # blending only the box where the resized mask is non-zero gives the whole-rect result
    dst[:] = cv2.blendLinear(
        np.ascontiguousarray(patch), np.ascontiguousarray(dst), weights, 1.0 - weights
    )
    return out


class FaceParsing:
    """A BiSeNet-style face-parsing model in ONNX format, run with onnxruntime.

    The model's first input takes (1, 3, S, S) float32 RGB normalised with ImageNet's mean/std
    (S = the input's static size, else `input_size`); its first output is (1, C, S, S) class
    logits in CelebAMask-HQ order (0 background, 1 skin, 2-3 brows, 4-5 eyes, 6 glasses,
    7-9 ears, 10 nose, 11 mouth, 12 upper lip, 13 lower lip, 14 neck, ...), as in the
    face-parsing BiSeNet MuseTalk uses (export its 79999_iter.pth to ONNX to use it here).
    The lower-face region is `labels` (default skin, nose, mouth, lips).

    Needs `onnxruntime` (pip install onnxruntime, or the `dwpose` extra).
    """

    MEAN = np.array([0.485, 0.456, 0.406], np.float32)
    STD = np.array([0.229, 0.224, 0.225], np.float32)
    LOWER_FACE_LABELS = (1, 10, 11, 12, 13)

    def __init__(
        self,
        path: str | os.PathLike[str],
        input_size: int = 512,
        labels: Sequence[int] = LOWER_FACE_LABELS,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"face-parsing model not found: {self.path} (an .onnx file)")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                "blend=parsing needs onnxruntime: pip install onnxruntime (or '.[dwpose]')"
            ) from e
        self.session = ort.InferenceSession(
            str(self.path), providers=list(providers or ["CPUExecutionProvider"])
        )
        inp = self.session.get_inputs()[0]
        static = [d for d in inp.shape[2:] if isinstance(d, int)]
        self.input_name = inp.name
        self.input_size = int(static[0]) if len(static) == 2 else int(input_size)
        self.labels = tuple(int(k) for k in labels)
        self.sha256 = sha256_file(self.path)

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the masks: the model's bytes, its input size and the classes used."""
        return {"sha256": self.sha256, "input_size": self.input_size, "labels": list(self.labels)}

    def parse(self, crop: np.ndarray) -> np.ndarray:
        """(S, S) uint8 class map of an (S, S, 3) uint8 RGB crop (argmax of the logits)."""
        size = crop.shape[0]
        x = cv2.resize(crop, (self.input_size, self.input_size), interpolation=cv2.INTER_LINEAR)
        x = ((x.astype(np.float32) / 255.0 - self.MEAN) / self.STD).transpose(2, 0, 1)[None]
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        if logits.ndim != 4 or logits.shape[0] != 1:
            raise ValueError(
                f"{self.path}: expected logits of shape (1, C, H, W), got {logits.shape}"
            )
        classes = logits[0].argmax(axis=0).astype(np.uint8)
        return cv2.resize(classes, (size, size), interpolation=cv2.INTER_NEAREST)

    def mask(self, crop: np.ndarray, feather: float = 0.05) -> np.ndarray:
        """(S, S) uint8 blend mask: the lower-face classes of the crop, feathered."""
        return feather_mask(np.isin(self.parse(crop), self.labels), feather)
