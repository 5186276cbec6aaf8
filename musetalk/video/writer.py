"""H.264 + AAC mp4 writing, streamed, without an ffmpeg binary (see `musetalk.video`)."""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.container
import numpy as np

from musetalk.timebase import FPS, SAMPLE_RATE
from musetalk.video.reader import _as_fraction


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
        fps: float = FPS,
        audio: np.ndarray | None = None,
        sr: int = SAMPLE_RATE,
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


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"expected mono float audio of shape (N,), got {audio.shape} {audio.dtype}"
        )
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)
