"""Streaming video reading at a constant frame rate (see `musetalk.video`)."""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import av.container
import numpy as np

from musetalk.errors import (
    CorruptMedia,
    TruncatedMedia,
)
from musetalk.timebase import FPS
from musetalk.video.media import _start, _video_stream, open_media

T = TypeVar("T")

# Truncation tolerance: missing video at the end, max(absolute seconds, fraction of duration).
_TRUNCATION_SLACK_S = Fraction(1, 2)


_TRUNCATION_SLACK_FRAC = Fraction(1, 20)


# Seek margins (s) tried before decoding from the start, when a seek lands after the target.
_SEEK_MARGINS: tuple[float | None, ...] = (0, 1, 5, None)

_decode_threads = 0  # see set_decode_threads


def set_decode_threads(threads: int) -> None:
    """FFmpeg threads of each video decoder opened from now on in this process, for decoding
    and for the conversion to RGB (the frames are the same whatever the number); 0 = FFmpeg's
    choice, about one per core. Like `cv2.setNumThreads`: worker processes sharing the cores
    set cores / workers so that they do not oversubscribe them."""
    global _decode_threads
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    _decode_threads = int(threads)


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video file. Sizes are after rotation (as displayed)."""

    path: str
    width: int  # pixels, displayed orientation
    height: int  # pixels, displayed orientation
    rotation: int  # degrees counter-clockwise applied to stored frames: 0, 90, 180 or -90
    duration: float  # seconds, video stream
    fps: float  # source average frame rate
    codec: str  # e.g. "h264", "hevc", "vp9"
    has_audio: bool
    num_frames: int  # output frames at `out_fps`: floor(duration * out_fps)
    out_fps: float  # the constant rate the reader resamples to
    source_frames: int  # frame count stored in the container, 0 if unknown
    is_vfr: bool  # variable frame rate guess from the container index / stream rates


def probe(path: str | os.PathLike[str], fps: float = FPS) -> VideoInfo:
    """Read the facts of a video file, decoding only its first frame.

    `fps` is the rate frames will be read at; it only sets `num_frames` and `out_fps`.
    Raises NoVideoStream for audio-only files, and the errors of `open_media`.
    """
    path = Path(path)
    out_fps = _as_fraction(fps)
    with open_media(path) as container:
        stream = _video_stream(container, path)
        t0 = _start(stream)
        first = _first_frame(container, stream, path)
        rotation = _rotation(first)
        w, h = (first.height, first.width) if rotation in (90, -90) else (first.width, first.height)
        source_fps = _source_fps(stream)
        duration = _stored_duration(container, stream, t0)
        if duration is None:
            duration = _scanned_duration(container, stream, t0, source_fps, path)
        return VideoInfo(
            path=str(path),
            width=w,
            height=h,
            rotation=rotation,
            duration=float(duration),
            fps=float(source_fps),
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
            num_frames=math.floor(duration * out_fps + Fraction(1, 1000)),
            out_fps=float(out_fps),
            source_frames=int(stream.frames or 0),
            is_vfr=_guess_vfr(stream),
        )


class VideoReader:
    """Streaming reader of one video at a constant frame rate.

    >>> reader = VideoReader("clip.mp4")            # probes; raises musetalk.errors types
    >>> for i, frame in reader.frames(0, 100, 5):   # frame: (H, W, 3) uint8 RGB, upright
    ...     ...

    Each `frames` call opens its own decoder, so ranges can be read independently (e.g. chunks
    of a long video); memory is bounded by a few frames, not by the video length.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = FPS) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.info = probe(self.path, self.fps)

    def __len__(self) -> int:
        """Number of output frames at `fps`."""
        return self.info.num_frames

    def frames(
        self, start: int = 0, end: int | None = None, step: int = 1, prefetch: int = 0
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(i, frame)` for output indices `range(start, min(end, len(self)), step)`.

        frame: (H, W, 3) uint8 RGB, H/W as in `info` (rotation applied); frame i shows time
        i / fps seconds. Source frames that no index needs are decoded but never converted,
        so a large `step` is cheap. Raises TruncatedMedia / CorruptMedia when decoding fails.
        prefetch: decode up to this many frames ahead in a background thread (FFmpeg releases
        the GIL), overlapping decoding with the caller's work; 0 = decode on demand.
        """
        if start < 0 or step < 1 or prefetch < 0 or (end is not None and end < start):
            raise ValueError(f"bad frame range start={start} end={end} step={step}")
        stop = len(self) if end is None else min(end, len(self))
        frames = self._generate(range(start, stop, step))
        return prefetched(frames, prefetch) if prefetch else frames

    def _generate(self, wanted: range) -> Iterator[tuple[int, np.ndarray]]:
        if not wanted:
            return
        target = Fraction(wanted[0]) / self.fps
        for margin in _SEEK_MARGINS:
            seek_to = None if margin is None else target - Fraction(margin)
            with open_media(self.path) as container:
                stream = _video_stream(container, self.path)
                stream.thread_type = "AUTO"
                stream.thread_count = _decode_threads
                t0 = _start(stream)
                seeked = seek_to is not None and seek_to > 0
                if seeked:
                    _seek(container, stream, t0 + seek_to, self.path)
                frames = _decode(container, stream, self.path)
                first = next(frames, None)
                if seeked and (first is None or _time(first, stream, t0) > target):
                    continue  # landed after the target: seek earlier
                if first is None:
                    raise CorruptMedia(self.path, "no decodable video frame")
                yield from self._resample(frames, first, stream, t0, wanted)
                return

    def _resample(
        self,
        frames: Iterator[av.VideoFrame],
        first: av.VideoFrame,
        stream: av.video.stream.VideoStream,
        t0: Fraction,
        wanted: range,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Nearest-previous selection: frame i gets the latest source frame with time <= i/fps."""
        k = self.info.rotation // 90
        threads = _decode_threads
        indices = iter(wanted)
        i = next(indices)
        prev = first
        for frame in frames:
            t = _time(frame, stream, t0)
            while Fraction(i) / self.fps < t:
                yield i, _to_rgb(prev, k, threads)
                i = next(indices, None)
                if i is None:
                    return
            prev = frame
        duration = Fraction(self.info.duration)
        end = _time(prev, stream, t0) + _frame_duration(prev, stream, self.info.fps)
        truncated = duration - end > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRAC * duration)
        while i is not None and (not truncated or Fraction(i) / self.fps < end):
            yield i, _to_rgb(prev, k, threads)
            i = next(indices, None)
        if i is not None:
            raise TruncatedMedia(
                self.path,
                f"video decodes to {float(end):.2f} s of {float(duration):.2f} s stored: "
                f"frames {i}..{len(self) - 1} at {float(self.fps):g} fps are missing",
            )


def iter_frames(
    path: str | os.PathLike[str],
    fps: float = FPS,
    start: int = 0,
    end: int | None = None,
    step: int = 1,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream `(i, frame)` pairs of a video resampled to `fps`; see `VideoReader.frames`.

    The file is probed now (errors raise here); frames decode lazily as the iterator advances.
    """
    return VideoReader(path, fps).frames(start, end, step)


def prefetched(items: Iterator[T], size: int) -> Iterator[T]:
    """Iterate `items` in a background thread, at most `size` items ahead.

    Exceptions of the producer are raised in the consumer; closing the consumer stops the
    producer and closes `items`.
    """
    ahead: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(entry: tuple[bool, object]) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ahead.put(entry, timeout=0.05)
                return

    def produce() -> None:
        try:
            for item in items:
                put((True, item))
                if stop.is_set():
                    break
            put((False, None))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))
        finally:
            if hasattr(items, "close"):
                items.close()

    thread = threading.Thread(target=produce, name="musetalk-decode", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = ahead.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _as_fraction(fps: float) -> Fraction:
    value = Fraction(fps).limit_denominator(1_000_000)
    if value <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return value


def _time(frame: av.VideoFrame, stream: av.video.stream.VideoStream, t0: Fraction) -> Fraction:
    """Presentation time of a frame in seconds since t0."""
    pts = frame.pts if frame.pts is not None else frame.dts
    if pts is None:
        raise CorruptMedia(stream.container.name, "video frame without timestamp")
    return Fraction(pts) * stream.time_base - t0


def _frame_duration(
    frame: av.VideoFrame, stream: av.video.stream.VideoStream, fps: float
) -> Fraction:
    if frame.duration:
        return Fraction(frame.duration) * stream.time_base
    return 1 / Fraction(fps).limit_denominator(1_000_000)


def _to_rgb(frame: av.VideoFrame, k: int, threads: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB, rotated counter-clockwise by k * 90 degrees; `threads`: of the
    conversion, 0 = FFmpeg's choice."""
    # a view of a converted frame, rows may be padded; swscale's threads since PyAV 17
    rgb = frame.to_ndarray(format="rgb24", **({"threads": threads} if threads else {}))
    if frame.format.name == "rgb24":  # no conversion: the view would alias the decoder's frame
        rgb = rgb.copy()
    # one contiguous copy here, so that no consumer has to make its own
    return np.ascontiguousarray(np.rot90(rgb, k))


def _rotation(frame: av.VideoFrame) -> int:
    """Display-matrix rotation rounded to a multiple of 90: 0, 90, 180 or -90 (ccw degrees)."""
    quarter = round(frame.rotation / 90) % 4
    return (0, 90, 180, -90)[quarter]


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as e:
        raise CorruptMedia(path, f"decoding failed: {e.strerror}") from e


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> av.VideoFrame:
    frame = next(_decode(container, stream, path), None)
    if frame is None:
        raise CorruptMedia(path, "no decodable video frame")
    return frame


def _seek(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    t: Fraction,
    path: Path,
) -> None:
    try:
        container.seek(math.floor(t / stream.time_base), stream=stream, backward=True)
    except av.error.FFmpegError as e:
        raise CorruptMedia(path, f"seek to {float(t):.2f} s failed: {e.strerror}") from e


def _source_fps(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(FPS)


def _stored_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, t0: Fraction
) -> Fraction | None:
    """Video duration in seconds as the container states it, or None."""
    if stream.duration:
        return Fraction(stream.duration) * stream.time_base
    tag = stream.metadata.get("DURATION")  # matroska/webm: end time "HH:MM:SS.fffffffff"
    if tag:
        try:
            h, m, s = tag.split(":")
            return Fraction(int(h) * 3600 + int(m) * 60) + Fraction(s) - t0
        except ValueError:
            pass
    if container.duration:  # span of the whole file, from its start
        start = Fraction(container.start_time or 0, 1_000_000)
        return start + Fraction(container.duration, 1_000_000) - t0
    return None


def _scanned_duration(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    t0: Fraction,
    fps: Fraction,
    path: Path,
) -> Fraction:
    """Video duration from the packets' timestamps (reads the whole file, no decoding)."""
    end = Fraction(0)
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                length = Fraction(packet.duration or 0) * stream.time_base
                length = length or 1 / fps
                end = max(end, Fraction(packet.pts) * stream.time_base - t0 + length)
    except av.error.FFmpegError as e:
        raise CorruptMedia(path, f"reading packets failed: {e.strerror}") from e
    return end


def _guess_vfr(stream: av.video.stream.VideoStream) -> bool:
    """Variable frame rate guess: uneven index timestamps, else differing stream rates."""
    stamps = np.array([e.timestamp for e in stream.index_entries], dtype=np.int64)
    if len(stamps) >= 3:
        steps = np.diff(np.sort(stamps))
        steps = steps[steps > 0]
        if len(steps):
            return bool(steps.max() - steps.min() > 0.1 * np.median(steps))
    return bool(
        stream.base_rate and stream.average_rate and stream.base_rate != stream.average_rate
    )
