"""Video decoding and encoding: the only module that touches video codecs.

Reading: any container/codec FFmpeg reads (via PyAV), streamed frame by frame, rotated upright
according to the display matrix, and resampled to a constant frame rate (25 fps by default):

- output frame ``i`` <-> time ``t_i = i / fps`` seconds, with ``t = 0`` at the video stream's
  start time (``stream.start_time``); audio uses the same origin (`musetalk.audio.load_audio`).
- each output frame is the latest source frame whose presentation time is ``<= t_i``
  (nearest-previous), so 30/60 fps inputs drop frames, low fps inputs repeat them and variable
  frame rate inputs follow their timestamps.
- the number of output frames is ``floor(duration * fps)``, duration being the video stream's
  duration as stored in the container (seconds).

Truncation rule: an ISO-BMFF file (mp4/mov/m4a) whose top-level boxes run past the end of the file
is truncated (detected at open, before any decoding). For other containers, a stream whose last
decodable frame ends more than ``max(0.5 s, 5 %)`` before the stored duration is truncated; the
reader yields the frames it can decode and raises `TruncatedMedia` at that point.

Writing: `VideoWriter` encodes RGB frames to H.264 (libx264, yuv420p) plus optional AAC audio
into an mp4, streaming, with no ffmpeg binary.
"""

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
from types import TracebackType
from typing import TypeVar

import av
import av.container
import numpy as np

from musetalk.errors import (
    CorruptMedia,
    EmptyFile,
    MissingMedia,
    NotAMediaFile,
    NoVideoStream,
    TruncatedMedia,
)

T = TypeVar("T")

__all__ = [
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "iter_frames",
    "open_media",
    "probe",
    "video_start",
]

DEFAULT_FPS = 25

# Truncation tolerance: missing video at the end, max(absolute seconds, fraction of duration).
_TRUNCATION_SLACK_S = Fraction(1, 2)
_TRUNCATION_SLACK_FRAC = Fraction(1, 20)
# Seek margins (s) tried before decoding from the start, when a seek lands after the target.
_SEEK_MARGINS: tuple[float | None, ...] = (0, 1, 5, None)

_ISO_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"styp", b"uuid"}
_MAGICS = (
    b"RIFF",  # wav, avi
    b"OggS",
    b"\x1a\x45\xdf\xa3",  # matroska / webm
    b"FLV",
    b"ID3",
    b"fLaC",
    b"\x00\x00\x01\xba",  # mpeg-ps
    b"\x30\x26\xb2\x75",  # asf / wmv
    b"#!AMR",
)


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


def open_media(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open any media file FFmpeg reads; failures raise `musetalk.errors` types, never av errors.

    Raises MissingMedia, EmptyFile, NotAMediaFile (not media, a still image, or no audio/video
    stream), TruncatedMedia (ISO-BMFF boxes past EOF) or CorruptMedia (recognised but
    unreadable).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingMedia(path, "no such file") from None
    if size == 0:
        raise EmptyFile(path, "expected a media file, got 0 bytes")
    overrun = _bmff_overrun(path)
    if overrun is not None:
        raise TruncatedMedia(path, overrun)
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        if _looks_like_media(head):
            raise CorruptMedia(path, f"FFmpeg cannot open it: {e.strerror}") from e
        raise NotAMediaFile(path, "expected an audio or video file FFmpeg can read") from e
    if _is_still_image(container):
        name = container.format.name
        container.close()
        raise NotAMediaFile(path, f"a still image ({name}), not a video or audio file")
    if not container.streams.audio and not _video_streams(container):
        container.close()
        raise NotAMediaFile(path, "no audio or video stream")
    return container


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg's image demuxers (image2, jpeg_pipe, png_pipe, ...) read single pictures."""
    names = container.format.name.split(",")
    return any(n == "image2" or (n.endswith("_pipe") and n != "gif_pipe") for n in names)


def video_start(container: av.container.InputContainer) -> Fraction | None:
    """The t = 0 of a file in container seconds: its video stream's start, None without video."""
    streams = _video_streams(container)
    return _start(streams[0]) if streams else None


def probe(path: str | os.PathLike[str], fps: float = DEFAULT_FPS) -> VideoInfo:
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

    def __init__(self, path: str | os.PathLike[str], fps: float = DEFAULT_FPS) -> None:
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
        indices = iter(wanted)
        i = next(indices)
        prev = first
        for frame in frames:
            t = _time(frame, stream, t0)
            while Fraction(i) / self.fps < t:
                yield i, _to_rgb(prev, k)
                i = next(indices, None)
                if i is None:
                    return
            prev = frame
        duration = Fraction(self.info.duration)
        end = _time(prev, stream, t0) + _frame_duration(prev, stream, self.info.fps)
        truncated = duration - end > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRAC * duration)
        while i is not None and (not truncated or Fraction(i) / self.fps < end):
            yield i, _to_rgb(prev, k)
            i = next(indices, None)
        if i is not None:
            raise TruncatedMedia(
                self.path,
                f"video decodes to {float(end):.2f} s of {float(duration):.2f} s stored: "
                f"frames {i}..{len(self) - 1} at {float(self.fps):g} fps are missing",
            )


def iter_frames(
    path: str | os.PathLike[str],
    fps: float = DEFAULT_FPS,
    start: int = 0,
    end: int | None = None,
    step: int = 1,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream `(i, frame)` pairs of a video resampled to `fps`; see `VideoReader.frames`.

    The file is probed now (errors raise here); frames decode lazily as the iterator advances.
    """
    return VideoReader(path, fps).frames(start, end, step)


class VideoWriter:
    """Streaming mp4 writer: H.264 (libx264, yuv420p) video plus optional AAC mono audio.

    >>> with VideoWriter("out.mp4", fps=25, audio=wav16k) as w:
    ...     for frame in frames:          # (H, W, 3) uint8 RGB, all the same size
    ...         w.write(frame)

    Odd widths/heights are padded by one edge-replicated pixel column/row at the right/bottom
    (yuv420p needs even sizes). The audio ((N,) float at `sr` Hz, mono, clipped to [-1, 1])
    starts at t = 0 and is written in full, interleaved with the video as frames arrive.
    The file is written under a temporary name and renamed on a clean close; on an exception
    it is removed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = DEFAULT_FPS,
        audio: np.ndarray | None = None,
        sr: int = 16000,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.sr = int(sr)
        self.crf = int(crf)
        self.preset = preset
        self.audio = None if audio is None else _check_audio(audio)
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._tmp = self.path.with_name(f".{self.path.name}.part")
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._audio_pos = 0  # samples of `audio` already sent to the encoder
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame, shown for 1 / fps seconds."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}"
            )
        if self.size is None:
            self.size = frame.shape[:2]
            self._open()
        elif frame.shape[:2] != self.size:
            raise ValueError(f"frame size {frame.shape[:2]} differs from the first {self.size}")
        h, w = self.size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.num_frames
        self._mux(self._video.encode(vf))
        self.num_frames += 1
        if self.audio is not None:
            self._write_audio(round(Fraction(self.num_frames) * self.sr / self.fps))

    def close(self) -> None:
        """Flush encoders, finish the file and move it to `path`. Needs at least one frame."""
        if self._closed:
            return
        if self._container is None:
            raise ValueError(f"{self.path}: no frames were written")
        try:
            self._mux(self._video.encode(None))
            if self.audio is not None:
                self._write_audio(len(self.audio))
                self._mux(self._audio.encode(None))
            self._container.close()
        except BaseException:
            self._abort()
            raise
        self._container = None
        os.replace(self._tmp, self.path)
        self._closed = True

    def _open(self) -> None:
        h, w = self.size
        self._container = av.open(str(self._tmp), "w", format="mp4")
        self._video = self._container.add_stream(
            "libx264", rate=self.fps, options={"crf": str(self.crf), "preset": self.preset}
        )
        self._video.width, self._video.height = w + w % 2, h + h % 2
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = 1 / self.fps
        if self.audio is not None:
            self._audio = self._container.add_stream("aac", rate=self.sr, layout="mono")
            self._audio.codec_context.time_base = Fraction(1, self.sr)

    def _write_audio(self, upto: int) -> None:
        """Encode audio samples [_audio_pos, upto)."""
        upto = min(upto, len(self.audio))
        if upto <= self._audio_pos:
            return
        chunk = self.audio[self._audio_pos : upto]
        af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        af.sample_rate = self.sr
        af.pts = self._audio_pos
        af.time_base = Fraction(1, self.sr)
        self._mux(self._audio.encode(af))
        self._audio_pos = upto

    def _mux(self, packets: list[av.Packet]) -> None:
        self._container.mux(packets)

    def _abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError):
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)


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


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"expected mono float audio of shape (N,), got {audio.shape} {audio.dtype}"
        )
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


def _as_fraction(fps: float) -> Fraction:
    value = Fraction(fps).limit_denominator(1_000_000)
    if value <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return value


def _video_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """Video streams that are real video (not cover art attached to an audio file)."""
    return [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]


def _video_stream(
    container: av.container.InputContainer, path: Path
) -> av.video.stream.VideoStream:
    streams = _video_streams(container)
    if not streams:
        raise NoVideoStream(path, "expected a video stream, the file has only audio")
    return streams[0]


def _start(stream: av.stream.Stream) -> Fraction:
    """Stream start time in seconds: the t = 0 of frames and audio."""
    if stream.start_time is None:
        return Fraction(0)
    return Fraction(stream.start_time) * stream.time_base


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


def _to_rgb(frame: av.VideoFrame, k: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB, rotated counter-clockwise by k * 90 degrees."""
    rgb = frame.to_ndarray(format="rgb24")  # a view of a converted frame, rows may be padded
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
    return Fraction(DEFAULT_FPS)


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


def _looks_like_media(head: bytes) -> bool:
    """Whether the first bytes carry a known audio/video container signature."""
    if head[4:8] in _ISO_BMFF_BOXES or head.startswith(_MAGICS):
        return True
    mpeg_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # mp3 / adts
    return mpeg_sync or head[:1] == b"\x47"  # mpeg-ts sync byte


def _bmff_overrun(path: Path) -> str | None:
    """For ISO-BMFF files (mp4/mov/m4a): a description of a top-level box running past EOF."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8)[4:8] not in _ISO_BMFF_BOXES:
            return None
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if not kind.isalnum():
                return None  # not a box header: corrupt, not truncated
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            if length == 0:  # box extends to the end of the file
                return None
            if length < 8:
                return None  # malformed, not truncated: left to FFmpeg
            if pos + length > size:
                name = kind.decode("latin-1")
                return f"box '{name}' needs {pos + length} bytes, the file has {size}"
            pos += length
    return None
