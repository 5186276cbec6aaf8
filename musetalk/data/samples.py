"""One source video -> samples: continuous tracks of the main face, with crops, audio, facts.

Frames are decoded, tracked and cropped as they stream by, and the audio is decoded alongside
(`musetalk.audio.AudioStream`): only the current sample's JPEG crops and audio are held in
memory, whatever the length of the source. A frame without a usable face (none, too small, or
several faces of similar size) ends the current sample instead of invalidating the source; runs
shorter than `min_frames` are dropped and counted. Frames past the end of the audio are dropped
(`past_audio_end`); as that end is only known once the audio decoder reaches it, a run is cut
where its audio ends when it is flushed.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import Field

from musetalk.audio import AudioStream
from musetalk.audio.context import SampleContext
from musetalk.config import settings
from musetalk.data.audio_context import ContextReader
from musetalk.data.schema import (
    FRAME_ARRAYS,
    LANDMARK_CONVENTION,
    REGION_VERSION,
    SCHEMA_VERSION,
    array_member,
    frame_member,
)
from musetalk.data.sources import Source
from musetalk.data.writer import encode_npy, encode_wav
from musetalk.face import region
from musetalk.face.tracking import FaceTracker, TrackedFace
from musetalk.timebase import FPS, SAMPLES_PER_FRAME
from musetalk.timing import StageTimes
from musetalk.video import VideoReader

# Frame-level reasons a frame is not in any sample.
NO_FACE = "no_face"
FACE_TOO_SMALL = "face_too_small"
SEVERAL_FACES = "several_faces"
SHORT_TRACK = "short_track"
NO_AUDIO_LEFT = "past_audio_end"
TOO_SHORT = "too_short"  # the whole source is shorter than min_frames
# Source-level warnings (the source is processed; the manifest records them).
SILENT_AUDIO = "silent_audio"  # the audio of every sample peaks below SILENCE_DBFS
SILENCE_DBFS = -50.0

PREFETCH = 4  # frames decoded ahead in a background thread while faces are analysed
ENCODE_AHEAD = 4  # crops encoded in a background thread while the next frames are analysed


@settings
class SampleOptions:
    """How samples are cut and stored.

    max_frames / min_frames: sample length bounds in 25 fps frames.
    min_face_size: smallest usable face, shorter side of the detector box in source pixels.
    multi_face_ratio: a second face with area >= this x the largest face's makes the frame
        ambiguous (several faces): it ends the sample. Smaller faces (background) are ignored.
    crop_size: training crop side; stored crops keep the training box's shorter side at this
        many pixels when the source has them (never upsampled, never needlessly large).
    jpeg_quality: of the stored crops (OpenCV scale 1-100).
    shift_support, bottom_margin, context: extent of the stored context crop, see
        `musetalk.face.region.context_rect`.
    """

    max_frames: Annotated[int, Field(ge=1)] = 250
    min_frames: Annotated[int, Field(ge=1)] = 25
    min_face_size: Annotated[float, Field(ge=0)] = 64.0
    multi_face_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    crop_size: Annotated[int, Field(ge=16, le=4096)] = 256
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    shift_support: Annotated[float, Field(ge=0, le=10)] = 1.0
    bottom_margin: Annotated[float, Field(ge=0)] = 20.0
    context: Annotated[float, Field(ge=0, le=2)] = 0.15

    def __post_init__(self) -> None:
        if self.min_frames > self.max_frames:
            raise ValueError(
                f"min_frames ({self.min_frames}) must be <= max_frames ({self.max_frames})"
            )


@dataclass
class SampleData:
    """A finished sample: its key and members (suffix -> bytes), and its json facts."""

    key: str
    members: dict[str, bytes]
    meta: dict[str, Any]


@dataclass
class SourceReport:
    """What happened to one source: `status` ok, partial (error after samples) or skipped."""

    video: str
    audio: str | None
    source_id: str
    status: str = "ok"
    reason: str | None = None
    detail: str | None = None
    samples: list[str] = field(default_factory=list)
    frames_decoded: int = 0
    frames_with_face: int = 0
    frames_in_samples: int = 0
    frames_dropped: Counter = field(default_factory=Counter)
    max_faces_in_frame: int = 0
    stage_seconds: StageTimes = field(default_factory=StageTimes)
    source_fps: float | None = None
    rotation: int | None = None
    resampled: bool = False
    seconds: float = 0.0
    audio_peak_dbfs: float | None = None  # loudest audio sample in the samples, dB full scale
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["frames_dropped"] = dict(self.frames_dropped)
        out["stage_seconds"] = self.stage_seconds.as_dict(digits=3)
        return out


@dataclass
class _Frame:
    index: int
    face: TrackedFace
    rect: tuple[int, int, int, int]
    crop_size: tuple[int, int]
    jpeg: bytes


def usable_face(
    faces: list[TrackedFace], options: SampleOptions
) -> tuple[TrackedFace | None, str | None]:
    """The frame's face for a sample, or None with the reason (no face, too small, several)."""
    if not faces:
        return None, NO_FACE
    ordered = sorted(faces, key=lambda f: -f.face.area)
    main = ordered[0]
    if len(ordered) > 1 and ordered[1].face.area >= options.multi_face_ratio * main.face.area:
        return None, SEVERAL_FACES
    x1, y1, x2, y2 = main.face.box
    if min(x2 - x1, y2 - y1) < options.min_face_size:
        return None, FACE_TOO_SMALL
    return main, None


def encode_crop(
    frame: np.ndarray, face: TrackedFace, options: SampleOptions
) -> tuple[tuple[int, int, int, int], tuple[int, int], bytes]:
    """Context crop of one frame: (rect in frame px, (width, height) stored, JPEG bytes)."""
    lms, det = face.face.landmarks, face.face.box
    rect = region.context_rect(
        det,
        lms,
        frame.shape[:2],
        shift_support=options.shift_support,
        bottom_margin=options.bottom_margin,
        context=options.context,
    )
    scale = region.crop_scale(region.training_box(det, lms), options.crop_size)
    x1, y1, x2, y2 = rect
    size = (max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale)))
    pixels = frame[y1:y2, x1:x2]
    if size != (x2 - x1, y2 - y1):
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)  # a channel swap: the same bytes as [..., ::-1]
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return rect, size, buf.tobytes()


def _timed_encode(frame: np.ndarray, face: TrackedFace, options: SampleOptions) -> tuple:
    start = time.perf_counter()
    return *encode_crop(frame, face, options), time.perf_counter() - start


class _Encoder:
    """`encode_crop` in one background thread (OpenCV releases the GIL), so that the JPEG of a
    frame is made while the next frames are decoded and tracked; results come back in order.

    ahead: crops in flight at most (each holds its whole frame until encoded, so memory stays
    bounded); 0 = encode inline, in the caller's thread.
    """

    def __init__(self, options: SampleOptions, ahead: int) -> None:
        self.options = options
        self.ahead = ahead
        self.pool = ThreadPoolExecutor(1, "musetalk-encode") if ahead > 0 else None
        self.inflight: deque[Future] = deque()

    def submit(self, frame: np.ndarray, face: TrackedFace) -> Future:
        """A future of (rect, size, jpeg, seconds spent encoding)."""
        if self.pool is None:
            done: Future = Future()
            done.set_result(_timed_encode(frame, face, self.options))
            return done
        while self.inflight and (self.inflight[0].done() or len(self.inflight) >= self.ahead):
            self.inflight.popleft().result()  # waits for the oldest while `ahead` are in flight
        future = self.pool.submit(_timed_encode, frame, face, self.options)
        self.inflight.append(future)
        return future

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class SourceProcessor:
    """Turns one source into samples; iterate `samples()`, then read `report`.

    tracker: a FaceTracker (reset here); face_info: backend name/version/settings recorded in
    every sample. Every sample stores its audio context (`musetalk.audio.context`): the source's
    30 s windows its frames' audio windows fall in, as `<key>.context.wav`; with an `encoder`
    (a `WhisperEncoder`) also the encoder states of the steps it uses, as `<key>.whisper.npy`
    (float16), described by `features_info` in the json. pipelined: decode ahead and encode
    crops behind the face analysis in threads (False: all in the caller's thread, same output).
    """

    def __init__(
        self,
        source: Source,
        tracker: FaceTracker,
        options: SampleOptions,
        face_info: dict[str, Any],
        encoder: Any | None = None,
        progress: Callable[[int], None] | None = None,
        features_info: dict[str, Any] | None = None,
        pipelined: bool = True,
    ) -> None:
        self.source = source
        self.pipelined = pipelined
        self.tracker = tracker
        self.options = options
        self.face_info = face_info
        self.encoder = encoder
        self.features_info = features_info
        self.progress = progress
        self.report = SourceReport(source.video, source.audio, source.source_id)

    def samples(self) -> Iterator[SampleData]:
        """Decode, track and cut the source; yields finished samples in frame order.

        Media errors propagate (the caller records them); samples yielded before an error are
        complete and valid.
        """
        reader = VideoReader(self.source.video, fps=FPS)
        info = self.report
        info.source_fps = round(reader.info.fps, 3)
        info.rotation = reader.info.rotation
        info.resampled = abs(reader.info.fps - FPS) > 1e-3 or reader.info.is_vfr
        if len(reader) < self.options.min_frames:
            info.status, info.reason = "skipped", TOO_SHORT
            info.detail = f"{len(reader)} frames at 25 fps < min_frames {self.options.min_frames}"
            return
        timed = info.stage_seconds
        with timed("audio"):  # probes the audio: NoAudioStream before any frame is decoded
            audio = AudioStream(self.source.audio or self.source.video)
        with audio, ContextReader(self.source.audio or self.source.video, self.encoder) as ctx:
            self.context = ctx
            yield from self._cut(reader, audio)
        if not info.samples:
            info.status = "skipped"
            info.reason = self._skip_reason()
        elif info.audio_peak_dbfs is not None and info.audio_peak_dbfs < SILENCE_DBFS:
            info.warnings.append(SILENT_AUDIO)

    def _cut(self, reader: VideoReader, audio: AudioStream) -> Iterator[SampleData]:
        """Track the frames and cut them into runs of one face; flush each run as it ends.

        Decoding (a thread ahead), face analysis (here) and crop encoding (a thread behind)
        overlap unless `pipelined` is False; the samples are the same either way.
        """
        info, timed = self.report, self.report.stage_seconds
        self.tracker.reset()
        self.frame_size = (reader.info.height, reader.info.width)
        run: list[tuple[int, TrackedFace, Future]] = []
        frames = reader.frames(prefetch=PREFETCH if self.pipelined else 0)
        encoder = _Encoder(self.options, ENCODE_AHEAD if self.pipelined else 0)
        try:
            while True:
                with timed("decode"):
                    index, frame = next(frames, (None, None))
                if frame is None:
                    break
                info.frames_decoded += 1
                if self.progress is not None:
                    self.progress(1)
                with timed("faces"):
                    faces = self.tracker.update(frame)
                info.max_faces_in_frame = max(info.max_faces_in_frame, len(faces))
                face, reason = usable_face(faces, self.options)
                if face is not None:
                    info.frames_with_face += 1
                if face is not None and audio.ended and index >= audio.frames_available(FPS):
                    face, reason = None, NO_AUDIO_LEFT
                if run and (face is None or face.track_id != run[-1][1].track_id):
                    yield from self._flush(self._encoded(run), audio)
                    run = []
                if face is None:
                    info.frames_dropped[reason] += 1
                    continue
                run.append((index, face, encoder.submit(frame, face)))
                if len(run) == self.options.max_frames:
                    yield from self._flush(self._encoded(run), audio)
                    run = []
            yield from self._flush(self._encoded(run), audio)
        finally:
            encoder.close()
            frames.close()

    def _encoded(self, run: list[tuple[int, TrackedFace, Future]]) -> list[_Frame]:
        """The run's frames with their crops, once encoded (`crop_encode`: the encoding time)."""
        out = []
        for index, face, future in run:
            rect, size, jpeg, seconds = future.result()
            self.report.stage_seconds.seconds["crop_encode"] += seconds
            self.report.stage_seconds.calls["crop_encode"] += 1
            out.append(_Frame(index, face, rect, size, jpeg))
        return out

    def _skip_reason(self) -> str:
        dropped = self.report.frames_dropped
        if not dropped:
            return "no_frames"
        if self.report.frames_with_face == 0:
            # no usable face anywhere: the most common frame-level reason names it
            return max((NO_FACE, FACE_TOO_SMALL, SEVERAL_FACES), key=lambda r: dropped[r])
        return max(dropped, key=lambda r: dropped[r])

    def _flush(self, run: list[_Frame], audio: AudioStream) -> Iterator[SampleData]:
        """Read the run's audio, cut the run where the audio ends, and build its sample.

        Runs hold consecutive frame indices. Frames past the audio end are `past_audio_end`;
        what is left, if shorter than `min_frames`, is a `short_track`.
        """
        if not run:
            return
        dropped = self.report.frames_dropped
        with self.report.stage_seconds("audio"):
            wav = audio.read_frames(run[0].index, len(run), fps=FPS)  # (len(run) * 640,)
        if audio.ended:
            keep = min(len(run), max(0, audio.frames_available(FPS) - run[0].index))
            if keep < len(run):
                dropped[NO_AUDIO_LEFT] += len(run) - keep
                run, wav = run[:keep], wav[: keep * SAMPLES_PER_FRAME]
        if not run:
            return
        if len(run) < self.options.min_frames:
            dropped[SHORT_TRACK] += len(run)
            return
        with self.report.stage_seconds("context"):
            context, context_audio, states = self.context.read(run[0].index, len(run))
        with self.report.stage_seconds("pack"):
            sample = self._build(run, wav, context)
            sample.members["context.wav"] = encode_wav(context_audio)
            if states is not None:
                sample.members["whisper.npy"] = encode_npy(states.astype(np.float16))
        self.report.samples.append(sample.key)
        self.report.frames_in_samples += len(run)
        peak = 20 * math.log10(max(float(np.abs(wav).max(initial=0.0)), 1e-10))
        previous = self.report.audio_peak_dbfs
        self.report.audio_peak_dbfs = round(peak if previous is None else max(previous, peak), 1)
        yield sample

    def _build(self, run: list[_Frame], wav: np.ndarray, context: SampleContext) -> SampleData:
        """The sample of a run; wav: (len(run) * 640,) float32, its 16 kHz audio; context:
        where its audio context sits in the source. Scalars go to the json member, per-frame
        arrays to `<name>.npy` members (`schema.FRAME_ARRAYS`); `meta` holds both, as the
        reader decodes them."""
        start = run[0].index
        key = f"{self.source.source_id}_t{run[0].face.track_id}_{start:06d}"
        lms = np.stack([f.face.face.landmarks for f in run])
        det = np.stack([f.face.face.box for f in run])
        facts = [region.training_frame(d, lm) for d, lm in zip(det, lms, strict=True)]
        arrays = {
            "frame_index": [f.index for f in run],
            "landmarks": lms,
            "det_box": det,
            "det_score": [f.face.face.score for f in run],
            "detected": [bool(f.face.detected) for f in run],
            "training_box": [f.box for f in facts],
            "mask_upper_bound": [f.mask_upper_bound for f in facts],
            "nearest_nose_landmark": [f.nearest_nose_landmark for f in facts],
            "nose_length": [f.nose_length for f in facts],
            "equivalent_shift": [f.equivalent_shift for f in facts],
            "equivalent_shift_norm": [
                np.nan if f.equivalent_shift_norm is None else f.equivalent_shift_norm
                for f in facts
            ],
            "crop_rect": [f.rect for f in run],
            "crop_size": [f.crop_size for f in run],
        }
        arrays = {k: np.asarray(v, dtype=FRAME_ARRAYS[k][1]) for k, v in arrays.items()}
        meta: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "region_version": REGION_VERSION,
            "key": key,
            "source": self.source.video,
            "audio_source": self.source.audio,
            "source_id": self.source.source_id,
            "track_id": run[0].face.track_id,
            "fps": FPS,
            "num_frames": len(run),
            "source_size": list(self.frame_size),
            "source_fps": self.report.source_fps,
            "rotation": self.report.rotation,
            "landmark_convention": LANDMARK_CONVENTION,
            "audio": {"sample_rate": SAMPLES_PER_FRAME * FPS, "num_samples": int(len(wav))},
            "audio_context": context.to_json(),
            "face": self.face_info,
            "audio_features": self.features_info,
        }
        members = {"json": json.dumps(meta, separators=(",", ":")).encode(), "wav": encode_wav(wav)}
        members |= {array_member(k): encode_npy(v) for k, v in arrays.items()}
        for i, f in enumerate(run):
            members[frame_member(i)] = f.jpeg
        return SampleData(key, members, meta | arrays)
