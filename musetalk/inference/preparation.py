"""Avatar preparation: everything inference needs from a video that does not depend on the audio.

`AvatarPreparation` is the part of `MuseTalkPipeline` that turns a video (or image) into an
`Avatar`, in three steps, each cached on disk when asked (`AvatarCache`): `track_faces` (frames
and the main face's smoothed landmarks), `choose_shift` (the bbox_shift, its range and limits,
decided once by `musetalk.inference.shift`) and `prepare_regions` (inference boxes with the
region module, UNet input latents and blend masks). It uses the pipeline's face analyzer,
tracker settings, VAE (`prepare_latents`), blend settings and timings.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from musetalk.data.summary import load_stats
from musetalk.errors import InputNotFoundError, NoFaceError
from musetalk.face import region
from musetalk.face.tracking import FaceTracker, OneEuro, select_main_face
from musetalk.inference.avatar import Avatar, AvatarCache, region_arrays
from musetalk.inference.shift import ShiftChoice, parse_bbox_shift, resolve_bbox_shift
from musetalk.timebase import FPS
from musetalk.video import is_image, read_image

__all__ = ["AvatarPreparation"]

log = logging.getLogger(__name__)


class AvatarPreparation:
    """`prepare_avatar` and its steps; mixed into `MuseTalkPipeline` (see the module docstring)."""

    def vae_sha256(self) -> str:
        """sha256 of the VAE encoder's weights (what the cached latents depend on)."""
        if self._vae_sha256 is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.vae.state_dict().items()):
                if name.startswith(("encoder.", "quant_conv.")):
                    digest.update(name.encode())
                    digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._vae_sha256 = digest.hexdigest()
        return self._vae_sha256

    def blend_settings(self) -> dict[str, Any]:
        """What the cached blend masks depend on."""
        settings: dict[str, Any] = {"mode": self.blend, "feather": self.feather}
        if self.parser is not None:
            settings["parsing"] = self.parser.settings
        else:
            settings["grow"] = self.grow
        return settings

    def prepare_avatar(
        self,
        video: str | os.PathLike[str],
        bbox_shift: float | str = 0,
        *,
        extra_margin: float | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_frames: int | None = None,
        fps: float = FPS,
        auto_stats: str | os.PathLike[str] | dict[str, Any] | None = None,
        progress: bool = False,
    ) -> Avatar:
        """Read, track, crop and encode a video (or image) once; see `Avatar`.

        bbox_shift: px (+ = mask boundary down, more mouth motion) or "auto" (from auto_stats: a
        stats.json path/dict, else the pipeline's shift_stats / built-in value). extra_margin:
        px below the landmarks (None: the pipeline's). cache_dir: reuse/refresh a cache there.
        max_frames: read at most this many frames. fps: frames per second the video is
        resampled to (an image is one frame shown at this rate). Raises NoFaceError when no
        frame has a face, musetalk.errors types for unreadable media.
        """
        margin = self.extra_margin if extra_margin is None else float(extra_margin)
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        path = Path(video)
        if not path.is_file():
            raise InputNotFoundError(f"video not found: {path}")
        cache = AvatarCache(cache_dir) if cache_dir is not None else None
        faces, faces_key, reused = self.track_faces(path, fps, max_frames, cache, progress)
        choice = self.choose_shift(bbox_shift, faces, auto_stats)
        regions, status = self.prepare_regions(
            path, faces, faces_key, choice, margin, cache, reused
        )
        frames = faces["frames"]
        if isinstance(frames, np.ndarray) and not isinstance(frames, np.memmap):
            frames.flags.writeable = False
        avatar = Avatar(
            source=str(path),
            fps=float(fps),
            frames=frames,
            has_face=regions["has_face"],
            landmarks=faces["landmarks"],
            det_boxes=faces["det_boxes"],
            boxes=regions["boxes"],
            rects=regions["rects"],
            mask_upper_bound=regions["mask_upper_bound"],
            latents=regions["latents"],
            masks=regions["masks"],
            shift=choice,
            extra_margin=margin,
            info={"faces_key": faces_key, "model": self.model_info},
            cache_status=status if cache is not None else "none",
        )
        log.debug("%s: %s; %s", path, avatar.range_line(), choice.reason)
        return avatar

    def track_faces(
        self,
        path: Path,
        fps: float,
        max_frames: int | None,
        cache: AvatarCache | None,
        progress: bool = False,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
        """Frames and the main face per frame (from `cache` when it holds them): (faces, their
        cache key, whether they came from the cache). NoFaceError when no frame has a face."""
        analyzer = self.analyzer
        smoothing = OneEuro(fps=float(fps))
        face_info = {
            "backend": analyzer.name,
            "version": analyzer.version,
            "settings": analyzer.settings,
        }
        tracking = {**asdict(self.tracking), "smoothing": asdict(smoothing)}
        key = AvatarCache.faces_key(path, fps, max_frames, face_info, tracking)
        faces = cache.load_faces(key) if cache is not None else None
        reused = faces is not None
        if faces is None:
            faces = self._read_and_track(path, fps, smoothing, max_frames, progress)
        if not faces["has_face"].any():
            raise NoFaceError(
                f"{path}: no face found in any of {len(faces['frames'])} frames "
                f"(face backend {analyzer.name})"
            )
        return faces, key, reused

    def choose_shift(
        self,
        bbox_shift: float | str,
        faces: dict[str, np.ndarray],
        auto_stats: str | os.PathLike[str] | dict[str, Any] | None = None,
    ) -> ShiftChoice:
        """The bbox_shift for these faces (`musetalk.inference.shift.resolve_bbox_shift`), with
        the statistics for `auto`: `auto_stats` (a stats.json path or dict), else the weights'."""
        stats, source = self.shift_stats, "the weights' training.json"
        if isinstance(auto_stats, dict):
            stats, source = auto_stats, "auto_stats"
        elif auto_stats is not None:
            stats, source = load_stats(auto_stats), str(auto_stats)
        landmarks = [
            lm if ok else None for lm, ok in zip(faces["landmarks"], faces["has_face"], strict=True)
        ]
        return resolve_bbox_shift(
            parse_bbox_shift(bbox_shift), landmarks, stats, source, self.builtin_shift
        )

    def prepare_regions(
        self,
        path: Path,
        faces: dict[str, np.ndarray],
        faces_key: dict[str, Any],
        choice: ShiftChoice,
        margin: float,
        cache: AvatarCache | None,
        faces_reused: bool,
    ) -> tuple[dict[str, np.ndarray], str]:
        """Boxes, latents and blend masks for the chosen shift (from `cache` when current),
        saved to `cache`; returns them and the cache status (loaded, updated, created)."""
        key = AvatarCache.regions_key(
            faces_key,
            choice.shift,
            margin,
            self.vae_sha256(),
            str(self.dtype),
            self.blend_settings(),
        )
        regions = cache.load_regions(key) if cache is not None and faces_reused else None
        if regions is not None:
            return regions, "loaded"
        frames = faces["frames"]
        regions = self._regions(frames, faces, choice.shift, margin)
        if cache is not None:
            summary = {
                "source": str(path),
                "num_frames": len(frames),
                "frames_with_face": int(regions["has_face"].sum()),
                "bbox_shift_reason": choice.reason,
            }
            arrays = None if faces_reused else {k: v for k, v in faces.items() if k != "frames"}
            cache.save(faces_key, key, summary, None if faces_reused else frames, arrays, regions)
        return regions, "updated" if faces_reused else "created"

    def _read_and_track(
        self, path: Path, fps: float, smoothing: OneEuro, max_frames: int | None, progress: bool
    ) -> dict[str, np.ndarray]:
        """Frames (N, H, W, 3) and the main face per frame, tracked with One-Euro smoothing."""
        tracker = FaceTracker(self.analyzer, self.tracking, smoothing=smoothing)
        if is_image(path):
            with self.timings("decode"):
                frames = read_image(path)[None]
            source: Any = iter(frames)
        else:
            from musetalk.video import VideoReader

            reader = VideoReader(path, fps=fps)
            total = len(reader) if max_frames is None else min(len(reader), max_frames)
            frames = np.empty((total, reader.info.height, reader.info.width, 3), np.uint8)
            source = (frame for _, frame in reader.frames(0, total, prefetch=4))
        per_frame = []
        bar = _progress(progress, len(frames), "faces")
        for i in range(len(frames)):
            with self.timings("decode"):
                frame = next(source, None)
            if frame is None:  # fewer frames than the container announced
                frames = frames[:i]
                break
            frames[i] = frame
            with self.timings("faces"):
                tracked = tracker.update(frame)
            per_frame.append([(t.track_id, t.face.landmarks, t.face.box) for t in tracked])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        landmarks, det_boxes, has_face = select_main_face(per_frame, tracker.main_track_id())
        return {
            "frames": frames,
            "has_face": has_face,
            "landmarks": landmarks,
            "det_boxes": det_boxes,
        }

    def _regions(
        self, frames: np.ndarray, faces: dict[str, np.ndarray], shift: float, margin: float
    ) -> dict[str, np.ndarray]:
        """Boxes, crops -> latents and blend masks for every frame with a face."""
        regions = region_arrays(
            faces["landmarks"],
            faces["det_boxes"],
            faces["has_face"],
            shift,
            margin,
            frames.shape[1:3],
        )
        n, h = len(frames), region.CROP_SIZE // 8
        latents = np.zeros((n, 8, h, h), np.float32)
        masks = np.zeros((n, region.CROP_SIZE, region.CROP_SIZE), np.uint8)
        idx = np.flatnonzero(regions["has_face"])
        for b in range(0, len(idx), self.batch_size):
            batch = idx[b : b + self.batch_size]
            with self.timings("crop"):
                crops = np.stack(
                    [region.crop(frames[i], regions["rects"][i], region.CROP_SIZE) for i in batch]
                )
            latents[batch] = self.prepare_latents(crops).float().cpu().numpy()
            masks[batch] = self.blend_masks(
                crops, faces["landmarks"][batch], regions["rects"][batch]
            )
        return {**regions, "latents": latents, "masks": masks}


def _progress(enabled: bool, total: int | None, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame")
