"""The face of every frame of a video, for evaluation, and the crops metrics are computed on.

`read_track` decodes a video at 25 fps and tracks faces (the project's face backend and
tracker, no smoothing: the metrics measure what is there), keeping the largest face of each
frame. Crops are made in a second pass over the frames (`FaceTrack.crops_of`, `sync_crops`), in
batches, so memory does not grow with the video's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from scipy.signal import medfilt

from musetalk.face import region
from musetalk.face.analyzer import build_analyzer
from musetalk.face.tracking import FaceTracker, TrackingOptions
from musetalk.timebase import FPS
from musetalk.video import VideoReader

__all__ = ["FaceTrack", "read_track"]

BATCH = 64  # frames per batch of crops
SYNC_CROP = 224  # syncnet_python's face crop side
SYNC_SCALE = 0.4  # its crop_scale: the crop reaches 1.8 face half-sizes below the box centre
SYNC_SMOOTH = 13  # its median filter over box size and centre, frames
SYNC_PAD = 110  # its padding grey


@dataclass(frozen=True)
class FaceTrack:
    """A video's frames at 25 fps and the largest face of each (N frames).

    landmarks: (N, 68, 2) float, NaN without a face; boxes: (N, 4) detector boxes, NaN without
    a face; has_face: (N,) bool; frame_size: (height, width).
    """

    path: str
    landmarks: np.ndarray
    boxes: np.ndarray
    has_face: np.ndarray
    frame_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.has_face)

    def head(self, n: int) -> FaceTrack:
        """The first n frames."""
        return replace(
            self, landmarks=self.landmarks[:n], boxes=self.boxes[:n], has_face=self.has_face[:n]
        )

    def frames(self) -> Iterator[np.ndarray]:
        reader = VideoReader(self.path, fps=FPS)
        for _, frame in reader.frames(0, len(self)):
            yield frame

    def crops_of(
        self, other: FaceTrack, valid: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of (this track's, other's) 256x256 crops of the inference box of this
        track's landmarks (bbox_shift 0, v1.5 margin), on the frames where `valid`; the other
        video's frames are resized to this one's size first when they differ."""
        mine, theirs = [], []
        for t, (frame, other_frame) in enumerate(zip(self.frames(), other.frames(), strict=False)):
            if not valid[t]:
                continue
            if other_frame.shape != frame.shape:
                size = (frame.shape[1], frame.shape[0])
                other_frame = cv2.resize(other_frame, size, interpolation=cv2.INTER_AREA)
            box = region.inference_box(
                self.landmarks[t], 0, region.EXTRA_MARGIN["v15"], self.frame_size, self.boxes[t]
            )
            mine.append(region.crop(frame, box, region.CROP_SIZE))
            theirs.append(region.crop(other_frame, box, region.CROP_SIZE))
            if len(mine) == BATCH:
                yield np.stack(mine), np.stack(theirs)
                mine, theirs = [], []
        if mine:
            yield np.stack(mine), np.stack(theirs)

    def sync_crops(self, count: int) -> list[np.ndarray]:
        """The first `count` frames as syncnet_python crops them: a square of 2.8 face
        half-sizes from the top of the box, centred horizontally, box size and centre median
        filtered over 13 frames, grey padded, resized to 224 (RGB uint8). Frames without a face
        use the nearest face's box."""
        boxes = _filled(self.boxes[:count])
        half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        half, cx, cy = (medfilt(v, kernel_size=SYNC_SMOOTH) for v in (half, cx, cy))
        out = []
        for t, frame in enumerate(self.frames()):
            if t >= count:
                break
            s = half[t]
            pad = int(s * (1 + 2 * SYNC_SCALE))
            padded = cv2.copyMakeBorder(
                frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(SYNC_PAD,) * 3
            )
            y, x = cy[t] + pad, cx[t] + pad
            face = padded[
                int(y - s) : int(y + s * (1 + 2 * SYNC_SCALE)),
                int(x - s * (1 + SYNC_SCALE)) : int(x + s * (1 + SYNC_SCALE)),
            ]
            out.append(cv2.resize(face, (SYNC_CROP, SYNC_CROP)))
        return out


def _filled(boxes: np.ndarray) -> np.ndarray:
    """Boxes with NaN rows replaced by the nearest frame's box."""
    ok = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    if not len(ok):
        raise ValueError("no frame has a face")
    nearest = ok[np.abs(np.arange(len(boxes))[:, None] - ok[None]).argmin(axis=1)]
    return boxes[nearest]


def read_track(
    path: str, face: dict[str, Any], tracking: TrackingOptions, progress: bool = False
) -> FaceTrack:
    """Track the faces of a video at 25 fps (see the module docstring)."""
    options = {k: v for k, v in face.items() if k != "backend"}
    tracker = FaceTracker(build_analyzer(face["backend"], **options), tracking)
    reader = VideoReader(path, fps=FPS)
    n = len(reader)
    landmarks = np.full((n, 68, 2), np.nan)
    boxes = np.full((n, 4), np.nan)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"faces {path}", unit="frame")
    count = 0
    for index, frame in reader.frames(0, n, prefetch=4):
        faces = tracker.update(frame)
        if faces:
            landmarks[index], boxes[index] = faces[0].face.landmarks, faces[0].face.box
        count = index + 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    has_face = np.isfinite(boxes[:count]).all(axis=1)
    size = (reader.info.height, reader.info.width)
    return FaceTrack(str(path), landmarks[:count], boxes[:count], has_face, size)
