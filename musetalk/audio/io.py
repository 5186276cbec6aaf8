"""Audio loading and saving: any file FFmpeg reads -> 16 kHz mono float32, aligned to the video.

Alignment: sample n of `load_audio` plays at t = n / sr seconds, with t = 0 at the start of the
file's video stream (the same origin as `musetalk.video` frames: frame i <-> t = i / fps). The
audio stream's own start is read from its first decoded frame's timestamp; when it starts after
the video the gap is filled with zeros, when it starts before, the samples before t = 0 are
dropped. In files without video, t = 0 is the first decoded audio sample. Gaps inside the audio
stream are not filled. Truncated ISO-BMFF files raise TruncatedMedia at open (as for video);
in other containers the decodable part is returned.

Streaming: `iter_audio` yields the same samples chunk by chunk (`load_audio` is their
concatenation) and `AudioStream` serves non-decreasing sample / frame ranges from it, holding
only the samples from the earliest range still needed, so memory does not grow with the length
of the file.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.container
import numpy as np
import soundfile as sf

from musetalk.errors import CorruptMedia, NoAudioStream
from musetalk.timebase import FPS, SAMPLE_RATE
from musetalk.video import open_media, video_start

__all__ = [
    "SAMPLE_RATE",
    "AudioStream",
    "audio_for_frames",
    "frame_bounds",
    "iter_audio",
    "load_audio",
    "write_wav",
]

_PAD_CHUNK = 16384  # leading zero padding is produced in pieces of at most this many samples


def load_audio(path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) float32 mono samples in [-1, 1] at `sr` Hz, sample 0 at the video's t = 0.

    Resampled by FFmpeg (PyAV AudioResampler); channels are averaged (librosa's downmix, which
    MuseTalk's features were trained with), not FFmpeg's power-preserving sum * 0.707.
    Raises NoAudioStream for files without audio, and the errors of `open_media`.
    The concatenation of `iter_audio(path, sr)`; use `AudioStream` to bound memory.
    """
    chunks = list(iter_audio(path, sr))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def iter_audio(path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """The samples of `load_audio(path, sr)` as consecutive (n,) float32 chunks, decoded lazily.

    Chunks are one resampled codec frame each (~1024 samples; leading zero padding in pieces of
    at most 16384). Errors as `load_audio`, raised on the first `next`.
    """
    path = Path(path)
    with _open_audio(path) as container:
        yield from _aligned_chunks(container, path, sr)


def _open_audio(path: Path) -> av.container.InputContainer:
    """`open_media(path)`, raising NoAudioStream (container closed) when it has no audio."""
    container = open_media(path)
    if not container.streams.audio:
        container.close()
        raise NoAudioStream(path, "expected an audio stream, the file has none")
    return container


def _decoded(
    container: av.container.InputContainer, path: Path, sr: int
) -> Iterator[tuple[Fraction | None, list[np.ndarray]]]:
    """Per decoded frame of the first audio stream, then for the resampler's flush:
    (start in container seconds of the first frame with a timestamp so far, or None;
    its mono resampled chunks, (n,) float32 each). FFmpeg errors raise CorruptMedia."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp", rate=sr)  # keeps the channel layout
    first: Fraction | None = None
    try:
        for frame in container.decode(stream):
            if first is None and frame.pts is not None:
                first = Fraction(frame.pts) * stream.time_base
            yield first, [_mono(f) for f in resampler.resample(frame)]
        yield first, [_mono(f) for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise CorruptMedia(path, f"decoding audio failed: {e.strerror}") from e


def _aligned_chunks(
    container: av.container.InputContainer, path: Path, sr: int
) -> Iterator[np.ndarray]:
    """Mono chunks of the first audio stream aligned to the video's t = 0, clipped to [-1, 1].

    The shift (audio start - video start) is known at the first decoded frame with a
    timestamp; chunks decoded before it wait. Shift > 0: zeros are yielded first; shift < 0:
    that many samples are dropped. No video (t0 None) or no timestamp at all: no shift.
    Raises CorruptMedia when the stream decodes to nothing.
    """
    t0 = video_start(container)
    pending: list[np.ndarray] = []  # chunks decoded while the shift is not known yet
    decoded = False  # the resampler produced output (load_audio's "no decodable audio")
    shift: int | None = None
    skip = 0  # samples still to drop (audio starting before the video)
    for first, chunks in _decoded(container, path, sr):
        decoded = decoded or bool(chunks)
        if shift is None:
            pending.extend(chunks)
            if not decoded or (t0 is not None and first is None):
                continue
            shift = 0 if t0 is None else round((first - t0) * sr)
            chunks, pending = pending, []
            for a in range(0, shift, _PAD_CHUNK):
                yield np.zeros(min(_PAD_CHUNK, shift - a), np.float32)
            skip = max(0, -shift)
        for chunk in chunks:
            if skip:
                n = min(skip, len(chunk))
                chunk, skip = chunk[n:], skip - n
            if len(chunk):
                yield np.clip(chunk, -1.0, 1.0)
    if not decoded:
        raise CorruptMedia(path, "no decodable audio")
    for chunk in pending:  # no frame had a timestamp: unshifted
        if len(chunk):
            yield np.clip(chunk, -1.0, 1.0)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """(n,) mean of the channels of a planar float frame (as librosa's to_mono)."""
    return frame.to_ndarray().mean(axis=0, dtype=np.float32)


def frame_bounds(
    start_frame: int, num_frames: int, fps: float = FPS, sr: int = SAMPLE_RATE
) -> tuple[int, int]:
    """Sample range [a, b) of video frames [start_frame, start_frame + num_frames).

    Frame i covers [i / fps, (i + 1) / fps) s; bounds are rounded when sr / fps is not an
    integer (consecutive ranges tile exactly).
    """
    if start_frame < 0 or num_frames < 0:
        raise ValueError(f"expected start_frame, num_frames >= 0, got {start_frame}, {num_frames}")
    rate = Fraction(sr) / Fraction(fps).limit_denominator(1_000_000)
    return round(start_frame * rate), round((start_frame + num_frames) * rate)


def audio_for_frames(
    audio: np.ndarray,
    start_frame: int,
    num_frames: int,
    fps: float = FPS,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """Samples of video frames [start_frame, start_frame + num_frames): (num_frames * sr / fps,).

    Frame i covers [i / fps, (i + 1) / fps) s; sample bounds are rounded when sr / fps is not an
    integer. Past the end of `audio` the result is zero padded.
    """
    a, b = frame_bounds(start_frame, num_frames, fps, sr)
    out = np.zeros(b - a, dtype=np.float32)
    part = audio[a:b]
    out[: len(part)] = part
    return out


class AudioStream:
    """Incremental `load_audio`: serves sample or frame ranges, decoding only as far as needed.

    >>> with AudioStream("clip.mp4") as audio:            # NoAudioStream etc. raised here
    ...     wav = audio.read_frames(0, 250)               # (250 * 640,) float32, frames 0..249
    ...     wav = audio.read_frames(250, 100)             # starts never go back
    ...     audio.ended, audio.num_samples                # the end, once reached

    The samples are exactly those of `load_audio(path, sr)` (same decoding and alignment, via
    `iter_audio`'s chunks); ranges past the end are zero padded like `audio_for_frames`.
    Requests must have non-decreasing starts: samples before the latest start are discarded,
    so the buffer holds at most the latest requested range plus one chunk on either side (a
    decoded frame, ~1024 samples, or a piece of leading zero padding, at most 16384):
    `buffered`, `peak_buffered`, whatever the file's length.
    Opening decodes the first chunk, so a stream with no decodable audio fails at once;
    decoding errors further on raise CorruptMedia from the read that meets them.
    """

    def __init__(self, path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> None:
        self.path = Path(path)
        self.sr = sr
        self._container = _open_audio(self.path)
        self._chunks = _aligned_chunks(self._container, self.path, sr)
        self._buffer: deque[np.ndarray] = deque()
        self._base = 0  # absolute index of the first buffered sample
        self._end = 0  # absolute index just past the last decoded sample
        self._floor = 0  # latest requested start: samples before it are discarded
        self.num_samples: int | None = None  # total length, known once the end is reached
        self.peak_buffered = 0  # largest `buffered` seen (samples)
        try:
            self._pull()
        except BaseException:
            self.close()
            raise

    @property
    def ended(self) -> bool:
        """The end of the audio has been reached: `num_samples` is the total length."""
        return self.num_samples is not None

    @property
    def decoded(self) -> int:
        """Samples decoded so far (absolute count from t = 0)."""
        return self._end

    @property
    def buffered(self) -> int:
        """Samples held in memory now."""
        return self._end - self._base

    def frames_available(self, fps: float = FPS) -> int | None:
        """Video frames fully covered by audio (sample end <= `num_samples`); None until ended."""
        if self.num_samples is None:
            return None
        k = int(Fraction(self.num_samples) * Fraction(fps).limit_denominator(1_000_000) / self.sr)
        while k > 0 and frame_bounds(0, k, fps, self.sr)[1] > self.num_samples:
            k -= 1
        while frame_bounds(0, k + 1, fps, self.sr)[1] <= self.num_samples:
            k += 1
        return k

    def read(self, start: int, stop: int) -> np.ndarray:
        """(stop - start,) float32 samples [start, stop) from t = 0, zeros past the end.

        `start` must be >= every earlier request's start (earlier samples are gone).
        """
        if not 0 <= start <= stop:
            raise ValueError(f"expected 0 <= start <= stop, got {start}, {stop}")
        if start < self._floor:
            raise ValueError(f"start {start} is before an earlier request's start {self._floor}")
        self._floor = start
        self._discard()
        while self.num_samples is None and self._end < stop:
            self._pull()
        out = np.zeros(stop - start, np.float32)
        pos = self._base
        for chunk in self._buffer:
            a, b = max(start, pos), min(stop, pos + len(chunk))
            if a < b:
                out[a - start : b - start] = chunk[a - pos : b - pos]
            pos += len(chunk)
            if pos >= stop:
                break
        return out

    def read_frames(self, start_frame: int, num_frames: int, fps: float = FPS) -> np.ndarray:
        """Samples of video frames [start_frame, start_frame + num_frames), as
        `audio_for_frames(load_audio(path), ...)`: (num_frames * sr / fps,) float32."""
        return self.read(*frame_bounds(start_frame, num_frames, fps, self.sr))

    def _pull(self) -> None:
        """Decode the next chunk into the buffer (or note the end), dropping what is passed."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.num_samples = self._end
            return
        self._buffer.append(chunk)
        self._end += len(chunk)
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        self._discard()

    def _discard(self) -> None:
        while self._buffer and self._base + len(self._buffer[0]) <= self._floor:
            self._base += len(self._buffer.popleft())
        if not self._buffer:
            self._base = self._end

    def close(self) -> None:
        """Stop decoding and close the file (idempotent)."""
        self._chunks.close()
        self._container.close()
        self._buffer.clear()
        self._base = self._end

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write (N,) or (N, C) float audio in [-1, 1] as 16-bit PCM wav (values are clipped)."""
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected float audio (N,) or (N, C), got {audio.shape} {audio.dtype}")
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
