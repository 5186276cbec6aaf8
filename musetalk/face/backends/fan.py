"""face-alignment backend: S3FD face boxes and FAN (2DFAN-4) 68 landmarks.

S3FD is the face detector of MuseTalk's preprocessing; FAN's 68 points are already in 0-based
iBUG-68 order. Both come from the `face-alignment` package (>= 1.5, whose weights are plain state
dicts). face-alignment downloads them into the torch hub cache (`$TORCH_HOME/hub/checkpoints`) on
first use; this wrapper also takes local files (`s3fd_weights`, `fan_weights`) and, offline, fails
at construction with the path it looked at.

FAN landmarks are whole pixels: face-alignment rounds the heatmap peak (1/64 of the face crop,
sub-bin +-0.25 refinement) and truncates to int when mapping back to the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musetalk.face.analyzer import NUM_LANDMARKS, FaceAnalyzer, check_frame
from musetalk.files import fetch_weights, sha256_file


def _local_face_alignment(
    fan_path: Path, s3fd_path: Path, *, device: str, flip_input: bool, detection_threshold: float
) -> Any:
    """face-alignment's `FaceAlignment` (2D, S3FD) built from local weight files, not URLs."""
    import face_alignment
    import torch
    from face_alignment.models import FAN

    class LocalFaceAlignment(face_alignment.FaceAlignment):
        """`FaceAlignment` whose FAN state dict is read from `fan_path` instead of its URL."""

        def _load_native(
            self, network_name: str, network_size: int, device: str, dtype: torch.dtype
        ) -> torch.nn.Module:
            net = FAN(network_size)
            net.load_state_dict(torch.load(fan_path, map_location=device, weights_only=True))
            return net.to(device, dtype=dtype).eval()

    return LocalFaceAlignment(
        face_alignment.LandmarksType.TWO_D,
        device=device,
        flip_input=flip_input,
        face_detector="sfd",
        face_detector_kwargs={
            "path_to_detector": str(s3fd_path),
            "filter_threshold": detection_threshold,
        },
        compile=False,
    )


class FanAnalyzer(FaceAnalyzer):
    """S3FD detector + FAN landmarks from the face-alignment package.

    s3fd_weights, fan_weights: local state-dict files (face-alignment's `s3fd-619a316812.pth`,
        `2DFAN4-11f355bf06.pth.tar`); None uses the torch hub cache copies, downloaded when
        missing and `download` is true.
    device: "cpu", "cuda", "cuda:N" or "mps" (torch devices).
    flip_input: also fit the mirrored crop and average (face-alignment's test-time flip).
    detection_threshold: minimum S3FD face probability (0-1) of a reported box.
    """

    name = "fan"

    def __init__(
        self,
        s3fd_weights: str | Path | None = None,
        fan_weights: str | Path | None = None,
        *,
        device: str = "cpu",
        flip_input: bool = True,
        detection_threshold: float = 0.5,
        download: bool = True,
    ) -> None:
        if not 0.0 <= detection_threshold < 1.0:
            raise ValueError(f"detection_threshold must be in [0, 1), got {detection_threshold}")
        try:
            import face_alignment
            from face_alignment.api import models_urls as fan_urls
            from face_alignment.detection.sfd.sfd_detector import models_urls as s3fd_urls
        except ImportError as err:
            raise ImportError(
                "the fan face backend needs the face-alignment package: pip install -e '.[fan]'"
            ) from err

        s3fd_path = fetch_weights(
            s3fd_weights, s3fd_urls["s3fd"], option="s3fd_weights", download=download
        )
        fan_path = fetch_weights(
            fan_weights, fan_urls["2DFAN-4"], option="fan_weights", download=download
        )
        self._fa = _local_face_alignment(
            fan_path,
            s3fd_path,
            device=device,
            flip_input=flip_input,
            detection_threshold=detection_threshold,
        )
        self.flip_input = flip_input
        self.detection_threshold = detection_threshold
        self._library_version = face_alignment.__version__
        self._s3fd_sha256 = sha256_file(s3fd_path)
        self._fan_sha256 = sha256_file(fan_path)

    @property
    def version(self) -> str:
        """face-alignment version and the hash prefixes of both weight files."""
        return (
            f"face-alignment {self._library_version} s3fd sha256:{self._s3fd_sha256[:12]} "
            f"2DFAN-4 sha256:{self._fan_sha256[:12]}"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """Weight hashes, test-time flip and detection threshold."""
        return {
            "s3fd_sha256": self._s3fd_sha256,
            "fan_sha256": self._fan_sha256,
            "flip_input": self.flip_input,
            "detection_threshold": self.detection_threshold,
        }

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """S3FD faces in an RGB uint8 frame: ((4,) box in frame pixels, probability 0-1).

        Boxes are as S3FD predicts them and may extend past the frame edges.
        """
        frame = check_frame(frame)
        found = self._fa.face_detector.detect_from_image(frame.copy())
        return [(np.asarray(d[:4], dtype=np.float64), float(d[4])) for d in found]

    def landmarks(self, frame: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
        """FAN landmarks for each box: (N, 68, 2) float (whole pixels), frame pixels, iBUG-68."""
        frame = check_frame(frame)
        if len(boxes) == 0:
            return np.zeros((0, NUM_LANDMARKS, 2))
        faces = [np.asarray(box, dtype=np.float64)[:4] for box in boxes]
        fitted = self._fa.get_landmarks_from_image(frame, detected_faces=faces)
        return np.stack(fitted).astype(np.float64)
