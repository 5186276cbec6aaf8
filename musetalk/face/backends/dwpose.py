"""DWPose face landmarks through onnxruntime: the landmark model of MuseTalk's preprocessing.

MuseTalk fits DWPose-l (COCO-WholeBody, 133 keypoints, input 288x384 px) with mmpose and keeps
keypoints 23..90, the face, which follow the 0-based iBUG-68 order. This backend runs the same
network exported to ONNX (`dw-ll_ucoco_384.onnx`) with onnxruntime, with its own top-down crop
and SimCC decoding, so no mmcv/mmpose/mmdet is involved.

DWPose is a top-down *person* model: it needs a box around the person, not the face.
- `pose_box="face"` (default): each face box is expanded to a head-and-shoulders box
  (`face_box_expand`), so a frame with several faces gets one fit per face.
- `pose_box="frame"`: the whole frame is the box, as MuseTalk does (mmpose's default when no box
  is given); one face per frame.
Either box then gets mmpose's treatment: padded by 1.25 and widened or heightened to the 3:4
input aspect. Face boxes come from another backend's detector (`detector`, default "dlib";
"fan" gives S3FD boxes, MuseTalk's detector).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from musetalk.config import Device
from musetalk.face.analyzer import NUM_LANDMARKS, FaceAnalyzer, build_analyzer, check_frame
from musetalk.files import fetch_weights, sha256_file

# DWPose-l 384x288 wholebody ONNX (the DWPose authors' export, used by ControlNet and MuseTalk
# derivatives); downloaded into the torch hub cache when no local path is given.
DWPOSE_URL = "https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx"
# COCO-WholeBody: 17 body + 6 feet keypoints, then 68 face keypoints in iBUG-68 order.
FACE_KEYPOINTS = slice(23, 23 + NUM_LANDMARKS)
# Input normalisation of the mmpose config, RGB order, 0-255 units.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# mmpose's GetBBoxCenterScale padding.
BOX_PADDING = 1.25
# Face box -> head-and-shoulders box: margins (left, top, right, bottom) in face-box widths/heights.
DEFAULT_FACE_BOX_EXPAND = (1.0, 0.75, 1.0, 1.75)
POSE_BOX_MODES = ("face", "frame")


def pose_box_from_face(face_box: np.ndarray, expand: Sequence[float]) -> np.ndarray:
    """Head-and-shoulders box (4,) from a face box (x1, y1, x2, y2), frame pixels.

    expand: (left, top, right, bottom) margins in units of the face box width (left/right) and
    height (top/bottom). The result may extend past the frame; the crop pads with black.
    """
    x1, y1, x2, y2 = np.asarray(face_box, dtype=np.float64)[:4]
    w, h = x2 - x1, y2 - y1
    left, top, right, bottom = expand
    return np.array([x1 - left * w, y1 - top * h, x2 + right * w, y2 + bottom * h])


def box_center_scale(
    box: np.ndarray, aspect: float, padding: float = BOX_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Center (2,) and size (2,) in frame pixels of the region fed to the model.

    The box (x1, y1, x2, y2) is scaled by `padding` about its center, then its shorter side
    (relative to `aspect` = input width / height) is lengthened to that aspect (mmpose's rule).
    """
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)[:4]
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h])


def crop_input(
    frame: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]
) -> np.ndarray:
    """Model input (H, W, 3) float32, normalised RGB, of the region `center` +- `scale` / 2.

    frame: RGB uint8 (h, w, 3). input_size: (W, H) model input in pixels. Input pixel (u, v)
    shows frame point center - scale / 2 + (u, v) * scale / input_size (bilinear); the region
    outside the frame is black before normalisation.
    """
    import cv2

    in_w, in_h = input_size
    s = in_w / scale[0]  # input pixels per frame pixel, equal on both axes (aspect fixed)
    warp = np.array(
        [[s, 0.0, in_w / 2 - s * center[0]], [0.0, s, in_h / 2 - s * center[1]]], dtype=np.float64
    )
    crop = cv2.warpAffine(frame, warp, (in_w, in_h), flags=cv2.INTER_LINEAR, borderValue=0)
    return (crop.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD


def decode_simcc(
    simcc_x: np.ndarray,
    simcc_y: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    input_size: tuple[int, int],
) -> np.ndarray:
    """Keypoints (K, 2) in frame pixels from SimCC vectors of one person.

    simcc_x: (K, Wx), simcc_y: (K, Wy) per-keypoint scores over sub-pixel bins; Wx / W and Wy / H
    are the split ratio (2 for DWPose). The best bin, divided by the ratio, is the input-pixel
    coordinate, mapped back to the frame with the crop's inverse (see `crop_input`).
    """
    in_w, in_h = input_size
    ratio = np.array([simcc_x.shape[-1] / in_w, simcc_y.shape[-1] / in_h])
    bins = np.stack([simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)], axis=-1).astype(np.float64)
    input_xy = bins / ratio
    return center - scale / 2 + input_xy * scale / np.array([in_w, in_h], dtype=np.float64)


def _providers(available: Sequence[str], device: str) -> list[Any]:
    """onnxruntime execution providers for a torch-style device string ("cpu", "cuda", "cuda:1")."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device {device!r} needs onnxruntime's CUDAExecutionProvider, which this "
                f"onnxruntime lacks (has {list(available)}); install onnxruntime-gpu instead of "
                "onnxruntime"
            )
        device_id = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class DWPoseAnalyzer(FaceAnalyzer):
    """Face boxes from another backend, 68 landmarks from DWPose wholebody (onnxruntime).

    dwpose_onnx: local DWPose wholebody ONNX file (input (1, 3, 384, 288), outputs simcc_x
        (1, 133, 576) and simcc_y (1, 133, 768)); None uses the torch hub cache copy of
        `DWPOSE_URL`, downloaded when missing and `download` is true.
    detector: backend name (built with `detector_options`) or analyzer whose `detect` finds faces.
    pose_box: "face" (expanded face box, default) or "frame" (whole frame, MuseTalk's choice).
    face_box_expand: (left, top, right, bottom) margins of the "face" pose box, face-box units.
    device: "cpu", "cuda" or "cuda:N" (CUDA needs onnxruntime-gpu).
    """

    name = "dwpose"

    def __init__(
        self,
        dwpose_onnx: str | Path | None = None,
        *,
        detector: str | FaceAnalyzer = "dlib",
        detector_options: dict[str, Any] | None = None,
        pose_box: Literal["face", "frame"] = "face",
        face_box_expand: Sequence[float] = DEFAULT_FACE_BOX_EXPAND,
        device: Device = "cpu",
        download: bool = True,
    ) -> None:
        if pose_box not in POSE_BOX_MODES:
            raise ValueError(f"pose_box must be one of {POSE_BOX_MODES}, got {pose_box!r}")
        expand = tuple(float(v) for v in face_box_expand)
        if len(expand) != 4 or min(expand) < 0:
            raise ValueError(
                f"face_box_expand must be 4 non-negative margins (left, top, right, bottom), "
                f"got {face_box_expand!r}"
            )
        if isinstance(detector, str) and detector == self.name:
            raise ValueError("detector must be another backend; dwpose has no face detector")
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "the dwpose face backend needs onnxruntime: pip install -e '.[dwpose]' "
                "(or onnxruntime-gpu for CUDA)"
            ) from err

        model_path = fetch_weights(dwpose_onnx, DWPOSE_URL, option="dwpose_onnx", download=download)
        self._session = ort.InferenceSession(
            str(model_path), providers=_providers(ort.get_available_providers(), device)
        )
        model_input = self._session.get_inputs()[0]
        in_h, in_w = model_input.shape[2:4]
        if not (isinstance(in_h, int) and isinstance(in_w, int)):
            raise ValueError(
                f"{model_path}: input {model_input.name} has no fixed height/width "
                f"({model_input.shape}); expected (1, 3, 384, 288)"
            )
        outputs = [o.name for o in self._session.get_outputs()]
        if len(outputs) < 2:
            raise ValueError(f"{model_path}: expected outputs simcc_x, simcc_y, got {outputs}")
        self._input_name = model_input.name
        self._output_names = (
            ["simcc_x", "simcc_y"] if {"simcc_x", "simcc_y"} <= set(outputs) else outputs[:2]
        )
        num_keypoints = self._session.get_outputs()[0].shape[1]
        if isinstance(num_keypoints, int) and num_keypoints < FACE_KEYPOINTS.stop:
            raise ValueError(
                f"{model_path}: {num_keypoints} keypoints; expected COCO-WholeBody's 133"
            )
        self.input_size = (in_w, in_h)
        self.pose_box = pose_box
        self.face_box_expand = expand
        self.detector = (
            build_analyzer(detector, **(detector_options or {}))
            if isinstance(detector, str)
            else detector
        )
        self._model_name = model_path.name
        self._model_sha256 = sha256_file(model_path)
        self._ort_version = ort.__version__

    @property
    def version(self) -> str:
        """ONNX file name and hash prefix, and the onnxruntime version."""
        return (
            f"{self._model_name} sha256:{self._model_sha256[:12]} onnxruntime {self._ort_version}"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """Model, pose-box rule and the detector's own version and settings."""
        return {
            "model": self._model_name,
            "model_sha256": self._model_sha256,
            "input_size": list(self.input_size),
            "pose_box": self.pose_box,
            "face_box_expand": list(self.face_box_expand),
            "box_padding": BOX_PADDING,
            "detector": self.detector.name,
            "detector_version": self.detector.version,
            "detector_settings": self.detector.settings,
        }

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Faces found by the configured detector: ((4,) box, score) in frame pixels."""
        return self.detector.detect(frame)

    def landmarks(self, frame: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
        """DWPose face keypoints for each face box: (N, 68, 2) float, frame pixels, iBUG-68."""
        frame = check_frame(frame)
        if len(boxes) == 0:
            return np.zeros((0, NUM_LANDMARKS, 2))
        if self.pose_box == "frame":
            if len(boxes) > 1:
                raise ValueError(
                    f"pose_box='frame' fits one person per frame (MuseTalk's behaviour), got "
                    f"{len(boxes)} face boxes; use pose_box='face' for several faces"
                )
            pose_boxes = [np.array([0.0, 0.0, frame.shape[1], frame.shape[0]])]
        else:
            pose_boxes = [pose_box_from_face(box, self.face_box_expand) for box in boxes]
        return np.stack([self._keypoints(frame, box)[FACE_KEYPOINTS] for box in pose_boxes])

    def _keypoints(self, frame: np.ndarray, pose_box: np.ndarray) -> np.ndarray:
        """All wholebody keypoints (K, 2), frame pixels, of the person in `pose_box`."""
        in_w, in_h = self.input_size
        center, scale = box_center_scale(pose_box, in_w / in_h)
        inputs = crop_input(frame, center, scale, self.input_size).transpose(2, 0, 1)[None]
        simcc_x, simcc_y = self._session.run(self._output_names, {self._input_name: inputs})
        return decode_simcc(simcc_x[0], simcc_y[0], center, scale, self.input_size)
