"""Avatars: what inference needs from a source video that does not depend on the audio.

An `Avatar` holds a video's (or an image's) frames at a constant frame rate, the main face's
smoothed landmarks, the inference boxes for one bbox_shift / extra margin, the UNet input latents
of every face crop and the blend masks. `MuseTalkPipeline.prepare_avatar` builds it; for realtime
use it is prepared once and cached on disk (`AvatarCache`), then every audio clip runs only
Whisper, the UNet, the VAE decoder and the blend.

Cache directory (one avatar per directory; no pickles anywhere):

    frames.npy          (N, H, W, 3) uint8 RGB, memory-mapped when loaded
    faces.safetensors   has_face (N,), landmarks (N, 68, 2), det_boxes (N, 4)
    regions.safetensors boxes (N, 4), rects (N, 4), mask_upper_bound (N,), latents (N, 8, h, w),
                        masks (N, S, S)
    avatar.json         the inputs each part was made from, written last

The "faces" part is valid while the video's bytes (size + sha256), the frame rate, the frame
limit, the face backend (name, version, settings) and the tracker settings are unchanged; the
"regions" part additionally needs the same bbox_shift (as resolved), extra margin, VAE encoder
(sha256 of its weights), dtype and blend settings. A changed part is rebuilt, the rest reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from musetalk.errors import MuseTalkError
from musetalk.face import region
from musetalk.files import read_json_object, sha256_file
from musetalk.inference.shift import ShiftChoice

__all__ = ["CACHE_FORMAT", "Avatar", "AvatarCache", "CacheError", "ping_pong", "region_arrays"]

CACHE_FORMAT = 1

META = "avatar.json"
FRAMES = "frames.npy"
FACES = "faces.safetensors"
REGIONS = "regions.safetensors"


def ping_pong(k: int, n: int) -> int:
    """Source frame of output frame k when n source frames cycle 0..n-1, n-2..1, 0, 1, ..."""
    if n < 1 or k < 0:
        raise ValueError(f"expected n >= 1 and k >= 0, got n={n}, k={k}")
    if n == 1:
        return 0
    j = k % (2 * n - 2)
    return j if j < n else 2 * n - 2 - j


@dataclass
class Avatar:
    """A prepared source. N frames of H x W; S = crop size (256); latents (8, S/8, S/8).

    frames: (N, H, W, 3) uint8 RGB at `fps` (read-only; memory-mapped from a cache).
    has_face: (N,) bool, frames that are generated (the others pass through unchanged).
    landmarks: (N, 68, 2) float64 smoothed main-face landmarks, frame pixels, NaN without face.
    det_boxes: (N, 4) float64 detector boxes (x1, y1, x2, y2), NaN without face.
    boxes: (N, 4) float64 inference boxes for `bbox_shift` and `extra_margin`, NaN without face.
    rects: (N, 4) int64 integer frame rectangles of the crops (zeros without face).
    mask_upper_bound: (N,) float64 y of the mask boundary (= lm29.y + bbox_shift unless
        clipped), frame pixels, NaN without face.
    latents: (N, 8, S/8, S/8) float32 UNet inputs (masked crop latent, then the reference latent
        of the same crop), zeros without face.
    masks: (N, S, S) uint8 blend masks in crop coordinates (0 keeps the frame).
    shift: the bbox_shift used, why, and the video's adjustable range and geometric limits.
    info: provenance (the cache keys: video fingerprint, face backend, tracker, VAE, ...).
    cache_status: "none" (not cached), "created", "loaded" or "updated" (regions rebuilt).
    """

    source: str
    fps: float
    frames: np.ndarray
    has_face: np.ndarray
    landmarks: np.ndarray
    det_boxes: np.ndarray
    boxes: np.ndarray
    rects: np.ndarray
    mask_upper_bound: np.ndarray
    latents: np.ndarray
    masks: np.ndarray
    shift: ShiftChoice
    extra_margin: float
    info: dict[str, Any] = field(default_factory=dict)
    cache_status: str = "none"

    def __len__(self) -> int:
        """Number of source frames."""
        return len(self.frames)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def num_faces(self) -> int:
        """Frames with a face."""
        return int(self.has_face.sum())

    def source_index(self, k: int) -> int:
        """Source frame shown at output frame k (ping-pong over the N frames)."""
        return ping_pong(k, len(self))

    @property
    def bbox_shift(self) -> float:
        """The bbox_shift used, pixels of the frame."""
        return self.shift.shift

    @property
    def bbox_shift_reason(self) -> str:
        return self.shift.reason

    def main_landmarks(self) -> list[np.ndarray | None]:
        """Per frame, the (68, 2) landmarks of the main face or None."""
        return [lm if ok else None for lm, ok in zip(self.landmarks, self.has_face, strict=True)]

    def shift_range(self) -> tuple[float, float]:
        """The adjustable bbox_shift range (lo, hi) over the frames with a face, px."""
        return self.shift.shift_range

    def range_line(self) -> str:
        """`Total frame: N  Manually adjust range: [lo ~ hi], the current value: s`."""
        return self.shift.range_line()


def region_arrays(
    landmarks: np.ndarray,
    det_boxes: np.ndarray,
    has_face: np.ndarray,
    bbox_shift: float,
    extra_margin: float,
    frame_size: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Inference boxes of every frame with `box_info.inference_region` (the preprocessing math).

    Returns boxes (N, 4), rects (N, 4) int64, mask_upper_bound (N,) and has_face (N,) bool:
    a face whose box_info is None (degenerate landmarks and detector box) counts as no face.
    """
    n = len(has_face)
    boxes = np.full((n, 4), np.nan)
    rects = np.zeros((n, 4), np.int64)
    bounds = np.full(n, np.nan)
    usable = np.zeros(n, bool)
    for i in np.flatnonzero(has_face):
        box_info = region.inference_region(
            landmarks[i], bbox_shift, extra_margin, frame_size=frame_size, det_box=det_boxes[i]
        )
        if box_info is None:
            continue
        try:
            rects[i] = region.pixel_rect(box_info.box, frame_size)
        except ValueError:
            continue
        boxes[i], bounds[i], usable[i] = box_info.box, box_info.mask_upper_bound, True
    return {"boxes": boxes, "rects": rects, "mask_upper_bound": bounds, "has_face": usable}


def video_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and sha256 of a file's bytes: what the cache compares (not its name or mtime)."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def key_digest(key: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable key."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CacheError(MuseTalkError):
    """An avatar cache that cannot be used as it is (missing, damaged, another format)."""


class AvatarCache:
    """One avatar's files in `directory`; see the module docstring for the layout and keys.

    The keys (`faces_key`, `regions_key`) say what each part was made from; a part whose key
    differs from the stored one is stale and rebuilt.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory).expanduser()

    @staticmethod
    def faces_key(
        video: Path, fps: float, max_frames: int | None, face: dict[str, Any], tracking: Any
    ) -> dict[str, Any]:
        """What the frames and tracked faces depend on: the video's bytes, the frame rate and
        limit, the face backend (name, version, settings) and the tracker settings."""
        return _jsonable(
            {
                "video": video_fingerprint(video),
                "fps": float(fps),
                "max_frames": max_frames,
                "face": face,
                "tracking": tracking,
                "region_version": region.REGION_VERSION,
            }
        )

    @staticmethod
    def regions_key(
        faces_key: dict[str, Any],
        shift: float,
        extra_margin: float,
        vae_sha256: str,
        dtype: str,
        blend: dict[str, Any],
    ) -> dict[str, Any]:
        """What the boxes, latents and masks depend on beyond the faces: the resolved
        bbox_shift, the extra margin, the crop size, the VAE encoder, dtype and blend."""
        return _jsonable(
            {
                "faces": key_digest(faces_key),
                "bbox_shift": shift,
                "extra_margin": extra_margin,
                "crop_size": region.CROP_SIZE,
                "vae": vae_sha256,
                "dtype": dtype,
                "blend": blend,
            }
        )

    def read_meta(self) -> dict[str, Any]:
        """The avatar.json contents; CacheError when there is no finished cache of this
        format."""
        path = self.dir / META
        if not path.is_file():
            raise CacheError(f"{path}: no finished avatar cache")
        meta = read_json_object(path, CacheError)
        if meta.get("format") != CACHE_FORMAT:
            found = meta.get("format")
            raise CacheError(f"{path}: cache format {found!r}, this version writes {CACHE_FORMAT}")
        return meta

    def _meta_if(self, part: str, key: dict[str, Any]) -> bool:
        try:
            return self.read_meta().get(part) == _jsonable(key)
        except CacheError:
            return False

    def load_faces(self, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """frames (memory-mapped, read-only), has_face, landmarks, det_boxes; None if stale."""
        if not self._meta_if("faces_key", key):
            return None
        try:
            frames = np.load(self.dir / FRAMES, mmap_mode="r", allow_pickle=False)
            arrays = load_file(str(self.dir / FACES))
        except (OSError, ValueError):
            return None
        n = len(frames)
        if any(len(arrays.get(k, ())) != n for k in ("has_face", "landmarks", "det_boxes")):
            return None
        arrays["has_face"] = arrays["has_face"].astype(bool)
        return {"frames": frames, **arrays}

    def load_regions(self, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """boxes, rects, mask_upper_bound, latents, masks, has_face; None if stale."""
        if not self._meta_if("regions_key", key):
            return None
        try:
            arrays = load_file(str(self.dir / REGIONS))
        except (OSError, ValueError):
            return None
        arrays["has_face"] = arrays["has_face"].astype(bool)
        return arrays

    def save(
        self,
        faces_key: dict[str, Any],
        regions_key: dict[str, Any],
        summary: dict[str, Any],
        frames: np.ndarray | None,
        faces: dict[str, np.ndarray] | None,
        regions: dict[str, np.ndarray],
    ) -> None:
        """Write the parts given (frames/faces None = keep the files there), avatar.json last.

        avatar.json is removed first, so an interrupted save leaves no valid cache behind.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / META).unlink(missing_ok=True)
        if frames is not None:
            _atomic(self.dir / FRAMES, lambda p: _save_npy(p, frames))
        if faces is not None:
            _atomic(self.dir / FACES, lambda p: save_file(_contiguous(faces), str(p)))
        _atomic(self.dir / REGIONS, lambda p: save_file(_contiguous(regions), str(p)))
        meta = {
            "format": CACHE_FORMAT,
            "faces_key": _jsonable(faces_key),
            "regions_key": _jsonable(regions_key),
            **_jsonable(summary),
        }
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        _atomic(self.dir / META, lambda p: p.write_text(text))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        out[k] = np.ascontiguousarray(v.astype(np.uint8) if v.dtype == bool else v)
    return out


def _jsonable(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_default))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
