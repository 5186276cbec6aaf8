"""H.264 + AAC mp4 writing, streamed, without an ffmpeg binary (see `musetalk.video`).

Encoders (`select_encoder`): libx264 on the CPU (preset veryfast, crf 18: bench/encode.py
measured the presets on 1080x1920 frames; the faster ones save at most 38% of the time for
2.3-4.8x larger files at the same fidelity) or NVIDIA's NVENC (`h264_nvenc`, preset p4, tune
hq, constant quality 19) when a CUDA device is present and PyAV's FFmpeg can open it.

Frames are handed to FFmpeg without a copy (`VideoFrame.from_numpy_buffer`); FFmpeg's swscale
converts them to yuv420p once, inside the encoder, as before (the output is unchanged).
With `queue_size > 0` the encoder runs in its own thread behind a bounded queue, so encoding
(which releases the GIL; libx264 also has its own threads) overlaps the caller's work.

libx264's thread count is left to libx264 (1.5 x cores) on purpose: on 2 cores the CPU time per
1080x1920 frame was the same with 1, 2 or auto threads (about 26 ms, loaded machine), so fewer
threads would not free the cores for the model, while more let the encoder keep up when the
model is fast. Its bitstream is not reproducible from run to run at any thread count (the same
frames gave different file sizes, even with threads=1); the decoded pictures are what tests
compare, losslessly encoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.container
import numpy as np

from musetalk.timebase import FPS, SAMPLE_RATE
from musetalk.video.reader import _as_fraction

__all__ = ["ENCODERS", "VideoWriter", "select_encoder"]

log = logging.getLogger(__name__)

#: The `encoder` values: auto = h264_nvenc when usable (CUDA present, PyAV has it, it opens),
#: else libx264.
ENCODERS = ("auto", "libx264", "h264_nvenc")
#: NVENC settings: NVIDIA's balanced preset, tuned for quality, constant-quality VBR at cq 19
#: (about libx264's crf 18); no bitrate cap (b 0).
NVENC_OPTIONS = {"preset": "p4", "tune": "hq", "rc": "vbr", "cq": "19", "b": "0"}
_STOP = object()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def nvenc_problem(cuda: bool | None = None) -> str | None:
    """Why h264_nvenc cannot be used here, or None when it opens (a 256x256 probe)."""
    if not (_cuda_available() if cuda is None else cuda):
        return "no CUDA device"
    if "h264_nvenc" not in av.codecs_available:
        return "PyAV's FFmpeg has no h264_nvenc"
    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.options = dict(NVENC_OPTIONS)
        ctx.open()
    except av.error.FFmpegError as exc:
        return f"h264_nvenc failed to open ({exc})"
    return None


def select_encoder(encoder: str = "auto", cuda: bool | None = None) -> str:
    """The encoder to use: "libx264" or "h264_nvenc".

    encoder: "auto" (h264_nvenc when `nvenc_problem` finds none, else libx264), "libx264" or
    "h264_nvenc" (ValueError when it is not usable here). cuda: whether a CUDA device is
    present (None: ask torch).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder}: expected one of {', '.join(ENCODERS)}")
    if encoder == "libx264":
        return encoder
    problem = nvenc_problem(cuda)
    if problem is None:
        return "h264_nvenc"
    if encoder == "h264_nvenc":
        raise ValueError(f"encoder=h264_nvenc: not usable here ({problem}); use auto or libx264")
    return "libx264"


class VideoWriter:
    """Streaming mp4 writer: H.264 (yuv420p) video plus optional AAC mono audio.

    >>> with VideoWriter("out.mp4", fps=25, audio=wav16k, queue_size=8) as w:
    ...     for frame in frames:          # (H, W, 3) uint8 RGB, all the same size
    ...         w.write(frame)

    Odd widths/heights are padded by one edge-replicated pixel column/row at the right/bottom
    (yuv420p needs even sizes). The audio ((N,) float at `sr` Hz, mono, clipped to [-1, 1])
    starts at t = 0 and is written in full, interleaved with the video as frames arrive.
    The file is written under a temporary name and renamed on a clean close; on an exception
    (the caller's or the encoder's) it is removed.

    encoder: "libx264", "h264_nvenc" or "auto" (`select_encoder`). crf, preset: libx264's
    (NVENC uses `NVENC_OPTIONS`). threads: libx264's thread count, 0 = its own choice
    (1.5 x cores); the bitstream depends on it. queue_size: 0 encodes in `write`; N > 0
    encodes in a background thread with up to N frames waiting (`write` blocks when the
    queue is full); the encoder's errors are raised by the next `write` or by `close`. A
    frame passed to `write` must not be modified afterwards (it is encoded later).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = FPS,
        audio: np.ndarray | None = None,
        sr: int = SAMPLE_RATE,
        crf: int = 18,
        preset: str = "veryfast",
        *,
        encoder: str = "libx264",
        threads: int = 0,
        queue_size: int = 0,
    ) -> None:
        if threads < 0 or queue_size < 0:
            raise ValueError(f"threads and queue_size must be >= 0, got {threads}, {queue_size}")
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.sr = int(sr)
        self.crf = int(crf)
        self.preset = preset
        self.encoder = select_encoder(encoder)
        self.threads = int(threads)
        self.queue_size = int(queue_size)
        self.audio = None if audio is None else _check_audio(audio)
        self.num_frames = 0  # frames accepted by `write`
        self.size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._tmp = self.path.with_name(f".{self.path.name}.part")
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._audio_pos = 0  # samples of `audio` already sent to the encoder
        self._encoded = 0  # frames sent to the encoder
        self._closed = False
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._error: BaseException | None = None

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
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        if self.size is None:
            self.size = frame.shape[:2]
        elif frame.shape[:2] != self.size:
            raise ValueError(f"frame size {frame.shape[:2]} differs from the first {self.size}")
        self.num_frames += 1
        if not self.queue_size:
            self._encode(frame)
            return
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.queue_size)
            self._thread = threading.Thread(target=self._run, name="musetalk-encode", daemon=True)
            self._thread.start()
        self._put(frame)

    def close(self) -> None:
        """Flush encoders, finish the file and move it to `path`. Needs at least one frame."""
        if self._closed:
            return
        if self.size is None:
            raise ValueError(f"{self.path}: no frames were written")
        try:
            if self._thread is None:
                self._finish()
            else:
                self._put(None)  # finish the file, then stop
                self._thread.join()
                if self._error is not None:
                    raise self._error
        except BaseException:
            self._abort()
            raise
        os.replace(self._tmp, self.path)
        self._closed = True

    # -- encoding (the caller's thread, or the encoder thread with queue_size > 0) ----------

    def _encode(self, frame: np.ndarray) -> None:
        if self._container is None:
            self._open()
        h, w = self.size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        # no copy: swscale reads the array while converting it to yuv420p inside `encode`
        vf = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame), "rgb24")
        vf.pts = self._encoded
        self._mux(self._video.encode(vf))
        self._encoded += 1
        if self.audio is not None:
            self._write_audio(round(Fraction(self._encoded) * self.sr / self.fps))

    def _finish(self) -> None:
        self._mux(self._video.encode(None))
        if self.audio is not None:
            self._write_audio(len(self.audio))
            self._mux(self._audio.encode(None))
        self._container.close()
        self._container = None

    def _open(self) -> None:
        h, w = self.size
        self._container = av.open(str(self._tmp), "w", format="mp4")
        if self.encoder == "h264_nvenc":
            options = dict(NVENC_OPTIONS)
        else:
            options = {"crf": str(self.crf), "preset": self.preset}
            if self.threads:
                options["threads"] = str(self.threads)
        self._video = self._container.add_stream(self.encoder, rate=self.fps, options=options)
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

    # -- the encoder thread -----------------------------------------------------------------

    def _run(self) -> None:
        """Encode queued frames until None (finish the file) or a cancel; errors are kept."""
        try:
            while not self._cancel.is_set():
                frame = self._queue.get()
                if self._cancel.is_set():
                    break
                if frame is None:
                    self._finish()
                    return
                self._encode(frame)
        except BaseException as exc:  # raised again in the caller's thread
            self._error = exc
        self._close_container()

    def _put(self, item: np.ndarray | None) -> None:
        """Queue `item` for the encoder thread; raises the encoder's error if it stopped."""
        while self._error is None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.05)
                break
        if self._error is not None:
            raise self._error

    def _close_container(self) -> None:
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError):
                self._container.close()
            self._container = None

    def _abort(self) -> None:
        if self._thread is not None:
            self._cancel.set()
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)  # wakes a worker waiting on an empty queue
            self._thread.join()
        self._close_container()
        self._tmp.unlink(missing_ok=True)


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"expected mono float audio of shape (N,), got {audio.shape} {audio.dtype}"
        )
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)
