"""The web app's work, without gradio: tracking cached per upload, previews, generation.

`AppBackend.track` follows the faces of an uploaded video once (keyed by the file's sha256 and
the face settings) and keeps the frames and landmarks in memory, so moving the bbox_shift
slider only redraws (`preview`). It also writes the tracked faces into the avatar cache of that
video (`AvatarCache`, one directory per video content), so the first generation does not track
again and later generations with other audio reuse the prepared avatar. `generate` runs
`musetalk.inference.run.infer` (the job behind `infer.py`) with that cache, one generation at a
time per device.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musetalk.app import preview as draw
from musetalk.app.settings import AppConfig
from musetalk.config import parse
from musetalk.errors import ConfigError, InputError, InputNotFoundError
from musetalk.face import region
from musetalk.face.analyzer import Face
from musetalk.files import sha256_file
from musetalk.inference.avatar import AvatarCache, key_digest
from musetalk.inference.pipeline import MuseTalkPipeline
from musetalk.inference.run import InferenceConfig, InferenceResult, build_pipeline, infer
from musetalk.inference.shift import AUTO, ShiftChoice
from musetalk.timebase import FPS

__all__ = ["AppBackend", "Generated", "PreviewResult", "Tracked"]

log = logging.getLogger(__name__)

UNUSABLE = (
    "warning: this frame has no usable inference box (its landmarks reach past the frame "
    "edges and the detector box is unusable too): generation leaves such frames unchanged"
)

#: Tracked uploads kept in memory (frames included), most recent last.
TRACKED_IN_MEMORY = 2


@dataclass
class Tracked:
    """One upload's frames and main-face landmarks (see `MuseTalkPipeline.track_faces`)."""

    source: str
    digest: str
    faces: dict[str, np.ndarray]
    faces_key: dict[str, Any]

    @property
    def num_frames(self) -> int:
        return len(self.faces["frames"])

    def face_frame(self, index: int | None) -> int:
        """The frame to show: `index` when it has a face, else the nearest one that has."""
        with_face = np.flatnonzero(self.faces["has_face"])
        if index is None or index < 0:
            return int(with_face[0])
        index = min(int(index), self.num_frames - 1)
        return int(with_face[np.argmin(np.abs(with_face - index))])


@dataclass
class PreviewResult:
    """What the Preview shows: the annotated frame, the masked UNet crop and the texts."""

    frame_index: int
    num_frames: int
    image: np.ndarray
    crop: np.ndarray
    choice: ShiftChoice
    auto: ShiftChoice | None
    auto_text: str
    text: str

    @property
    def slider_range(self) -> tuple[int, int]:
        """The adjustable range as whole pixels (`[lo ~ hi]` of the range line)."""
        lo, hi = self.choice.shift_range
        return int(lo), int(hi)


@dataclass
class Generated:
    """A generation: the mp4, its sidecar json (path and contents) and a summary line."""

    output: str
    sidecar_path: str
    sidecar: dict[str, Any]
    result: InferenceResult
    text: str


class AppBackend:
    """Pipelines per device (built on first use), tracked uploads and generations."""

    def __init__(self, config: AppConfig, workdir: str | Path) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.outputs = self.workdir / "outputs"
        self.avatars = self.workdir / "avatars"
        self._pipelines: dict[str, MuseTalkPipeline] = {}
        self._tracked: OrderedDict[tuple[str, str], Tracked] = OrderedDict()
        self._digests: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()  # the dicts above
        self._track_lock = threading.Lock()  # one tracking at a time (CPU bound)
        self._device_locks: dict[str, threading.Lock] = {}

    # ---------------------------------------------------------------------------------------
    # Models

    def model_settings(self, device: str | None = None) -> dict[str, Any]:
        """The InferenceConfig keys that choose and place the model."""
        c = self.config
        return {
            "infer_model": c.infer_model,
            "models_dir": c.models_dir,
            "version": c.version,
            "face": dict(c.face),
            "blend": c.blend,
            "batch_size": c.batch_size,
            "fp16": c.fp16,
            "device": device or c.device,
            "auto_stats": c.auto_stats,
        }

    def pipeline(self, device: str | None = None) -> MuseTalkPipeline:
        """The pipeline on `device` (loaded once)."""
        device = device or self.config.device
        with self._lock:
            pipe = self._pipelines.get(device)
            if pipe is None:
                config = parse(
                    InferenceConfig,
                    {"video": "-", "audio": "-", "output": "-.mp4", **self._plain(device)},
                )
                pipe = self._pipelines[device] = build_pipeline(config)
                self._device_locks[device] = threading.Lock()
            return pipe

    def _plain(self, device: str | None) -> dict[str, Any]:
        from dataclasses import asdict

        values = self.model_settings(device)
        values["infer_model"] = asdict(values["infer_model"])
        values["blend"] = asdict(values["blend"])
        if self.config.extra_margin is not None:
            values["extra_margin"] = self.config.extra_margin
        return values

    # ---------------------------------------------------------------------------------------
    # Tracking and preview

    def digest(self, path: Path) -> str:
        """sha256 of an upload (memoised by path, size and mtime)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            found = self._digests.get(key)
        if found is None:
            found = sha256_file(path)
            with self._lock:
                self._digests[key] = found
        return found

    def avatar_dir(self, digest: str) -> Path:
        """The avatar cache directory of a video's content."""
        return self.avatars / digest[:24]

    def track(self, video: str | Path | None, device: str | None = None) -> Tracked:
        """The upload's frames and main face (tracked once per content and face settings)."""
        if not video:
            raise InputError("upload a video or an image first")
        path = Path(video)
        if not path.is_file():
            raise InputNotFoundError(f"video not found: {path.name}")
        digest = self.digest(path)
        key = (digest, json.dumps(self.config.face, sort_keys=True))
        hit = self._cached(key)
        if hit is not None:  # a redraw: no waiting for another upload's tracking
            return hit
        with self._track_lock:
            hit = self._cached(key)  # tracked meanwhile
            if hit is not None:
                return hit
            pipe = self.pipeline(device)
            cache = AvatarCache(self.avatar_dir(digest))
            faces, faces_key, reused = pipe.track_faces(path, FPS, None, cache, progress=True)
            if not reused:
                _seed_faces(cache, path, faces, faces_key)
            tracked = Tracked(str(path), digest, faces, faces_key)
            with self._lock:
                self._tracked[key] = tracked
                while len(self._tracked) > TRACKED_IN_MEMORY:
                    self._tracked.popitem(last=False)
            return tracked

    def _cached(self, key: tuple[str, str]) -> Tracked | None:
        with self._lock:
            hit = self._tracked.get(key)
            if hit is not None:
                self._tracked.move_to_end(key)
            return hit

    def margin(self, extra_margin: float | None, device: str | None = None) -> float:
        """The extra margin to use: the page's value, else the app's, else the weights'."""
        if extra_margin is not None:
            if not extra_margin >= 0:
                raise ConfigError(f"extra_margin={extra_margin}: must be >= 0 px")
            return float(extra_margin)
        if self.config.extra_margin is not None:
            return float(self.config.extra_margin)
        return float(self.pipeline(device).extra_margin)

    def preview(
        self,
        video: str | Path | None,
        frame: int | None = None,
        bbox_shift: float | str = 0,
        auto: bool = False,
        extra_margin: float | None = None,
        device: str | None = None,
    ) -> PreviewResult:
        """The frame (default: the first with a face) with landmarks 28/29/30, the training box,
        the inference box and mask boundary, and the masked 256x256 crop the UNet sees."""
        tracked = self.track(video, device)
        pipe = self.pipeline(device)
        margin = self.margin(extra_margin, device)
        faces = tracked.faces
        auto_choice, auto_text = self._auto(pipe, faces)
        if auto or bbox_shift == AUTO:
            if auto_choice is None:
                raise ConfigError(auto_text)
            choice = auto_choice
        else:
            choice = pipe.choose_shift(_number(bbox_shift), faces)
        i = tracked.face_frame(frame)
        image, face = faces["frames"][i], Face(faces["det_boxes"][i], faces["landmarks"][i], 1.0)
        lo, hi = choice.shift_range
        crop = draw.masked_crop(image, face, choice.shift, margin)
        unusable = [] if crop is not None else [UNUSABLE]
        if crop is None:
            crop = np.zeros((region.CROP_SIZE, region.CROP_SIZE, 3), np.uint8)
        text = "\n".join(
            [
                *unusable,
                choice.range_line(),
                f"auto: {auto_text}",
                f"current: {choice.reason}",
                f"frame {i} of {tracked.num_frames} (frames without a face are not shown); "
                f"extra_margin {margin:g} px; landmark y 28/29/30: "
                + " / ".join(f"{face.landmarks[k, 1]:.1f}" for k in (28, 29, 30)),
            ]
        )
        return PreviewResult(
            frame_index=i,
            num_frames=tracked.num_frames,
            image=draw.annotated(image, face, choice.shift, margin, pipe.face, (lo, hi)),
            crop=crop,
            choice=choice,
            auto=auto_choice,
            auto_text=auto_text,
            text=text,
        )

    def _auto(
        self, pipe: MuseTalkPipeline, faces: dict[str, np.ndarray]
    ) -> tuple[ShiftChoice | None, str]:
        try:
            choice = pipe.choose_shift(AUTO, faces, self.config.auto_stats)
        except ConfigError as exc:
            return None, f"not available: {exc}"
        return choice, choice.reason

    # ---------------------------------------------------------------------------------------
    # Generation

    def generate(
        self,
        video: str | Path | None,
        audio: str | Path | None,
        bbox_shift: float | str = 0,
        auto: bool = False,
        extra_margin: float | None = None,
        device: str | None = None,
    ) -> Generated:
        """Lip-sync the upload to the audio with `infer` and the video's avatar cache."""
        if not audio:
            raise InputError("upload an audio file first")
        tracked = self.track(video, device)  # seeds the avatar cache with the tracked faces
        device = device or self.config.device
        pipe = self.pipeline(device)
        run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        output = self.outputs / run / f"{Path(video).stem[:40]}-lipsync.mp4"
        values = {
            **self._plain(device),
            "video": str(video),  # this upload (the same content as the tracked one)
            "audio": str(audio),
            "output": str(output),
            "bbox_shift": AUTO if auto else _number(bbox_shift),
            "avatar_cache": str(self.avatar_dir(tracked.digest)),
            "audio_seconds": self.config.audio_seconds,
        }
        if extra_margin is not None:
            values["extra_margin"] = self.margin(extra_margin, device)
        config = parse(InferenceConfig, values)
        with self._device_locks[device]:
            result = infer(config, pipeline=pipe)
        _touch(self.avatar_dir(tracked.digest))  # recently used: pruned last
        sidecar_path = output.with_name(output.name + ".json")
        sidecar = json.loads(sidecar_path.read_text())
        self.prune()
        text = (
            f"{result.num_frames} frames ({result.num_frames / FPS:.2f} s), "
            f"{result.frames_with_face} with a face, in {result.seconds:.1f} s; "
            f"bbox_shift {result.bbox_shift:g}: {result.bbox_shift_reason}; "
            f"avatar: {avatar_status(result)}"
        )
        return Generated(str(output), str(sidecar_path), sidecar, result, text)

    def prune(self) -> None:
        """Delete generated videos beyond `keep_outputs` and avatars beyond `keep_avatars`."""
        for parent, keep in ((self.outputs, self.config.keep_outputs), (self.avatars, None)):
            if not parent.is_dir():
                continue
            keep = keep if keep is not None else self.config.keep_avatars
            entries = sorted(parent.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in entries[: max(0, len(entries) - keep)]:
                shutil.rmtree(old, ignore_errors=True)


def avatar_status(result: InferenceResult) -> str:
    """How the avatar of a generation was prepared, from its stage timings."""
    stages = result.timings
    if "faces" in stages:
        return "tracked and prepared"
    if "latents" in stages:
        return "faces from the preview, regions prepared (now in the avatar cache)"
    return "reused from the avatar cache"


def _touch(directory: Path) -> None:
    if directory.is_dir():
        os.utime(directory)


def _number(value: float | str | None) -> float:
    """A bbox_shift from the page (a slider value)."""
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bbox_shift={value!r}: must be a number of pixels or auto") from None
    if not np.isfinite(number):
        raise ConfigError(f"bbox_shift={value!r}: must be a finite number of pixels")
    return number


def _seed_faces(
    cache: AvatarCache, path: Path, faces: dict[str, np.ndarray], faces_key: dict[str, Any]
) -> None:
    """Write the tracked frames and faces into the avatar cache, with no regions yet (a regions
    key no generation asks for), so `prepare_avatar` reuses them instead of tracking again."""
    n = len(faces["frames"])
    regions_key = {"faces": key_digest(faces_key), "regions": "not prepared (app preview)"}
    arrays = {k: faces[k] for k in ("has_face", "landmarks", "det_boxes")}
    summary = {
        "source": path.name,
        "num_frames": n,
        "frames_with_face": int(faces["has_face"].sum()),
    }
    cache.save(faces_key, regions_key, summary, faces["frames"], arrays, {"has_face": np.zeros(n)})
