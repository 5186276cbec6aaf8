"""Synthetic test media written with PyAV into a tmp dir: small, fast, with known content.

Video frames carry their source index as a 4x4 block pattern (robust to H.264 compression):
block 0 (top-left) is a red orientation marker, blocks 1..15 are the bits of the index
(light = 1, dark = 0). `read_index` recovers the index, `marker_corner` where the marker went.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

GRID = 4
LIGHT, DARK = 220, 30
MARKER = (230, 20, 20)


def pattern_frame(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """(height, width, 3) uint8 RGB frame showing `index` (< 2**15) as a block pattern."""
    if not 0 <= index < 2**15:
        raise ValueError(f"index {index} does not fit 15 bits")
    frame = np.empty((height, width, 3), np.uint8)
    bh, bw = height // GRID, width // GRID
    for b in range(GRID * GRID):
        r, c = divmod(b, GRID)
        block = frame[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw]
        if b == 0:
            block[:] = MARKER
        else:
            block[:] = LIGHT if index >> (b - 1) & 1 else DARK
    return frame


def read_index(frame: np.ndarray) -> int:
    """Index encoded by `pattern_frame` in an upright (unrotated) decoded frame."""
    height, width = frame.shape[:2]
    bh, bw = height // GRID, width // GRID
    index = 0
    for b in range(1, GRID * GRID):
        r, c = divmod(b, GRID)
        inner = frame[r * bh + 2 : (r + 1) * bh - 2, c * bw + 2 : (c + 1) * bw - 2]
        if inner.mean() > (LIGHT + DARK) / 2:
            index |= 1 << (b - 1)
    return index


def marker_corner(frame: np.ndarray) -> str:
    """Which corner ('tl', 'tr', 'bl', 'br') holds the red marker block."""
    h, w = frame.shape[:2]
    ch, cw = h // 8, w // 8
    corners = {
        "tl": frame[:ch, :cw],
        "tr": frame[:ch, -cw:],
        "bl": frame[-ch:, :cw],
        "br": frame[-ch:, -cw:],
    }
    redness = {k: float(v[..., 0].mean()) - float(v[..., 1].mean()) for k, v in corners.items()}
    return max(redness, key=redness.get)


def tone_burst(
    duration: float, at: float, length: float = 0.02, sr: int = 16000, freq: float = 1000.0
) -> np.ndarray:
    """(duration * sr,) float32 silence with a 0.5-amplitude sine burst starting at `at` s."""
    audio = np.zeros(round(duration * sr), np.float32)
    a, n = round(at * sr), round(length * sr)
    audio[a : a + n] = 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr)
    return audio


def onset(audio: np.ndarray, threshold: float = 0.25) -> int:
    """First sample whose magnitude exceeds `threshold`."""
    return int(np.argmax(np.abs(audio) > threshold))


def write_video(
    path: Path,
    n_frames: int = 30,
    fps: int = 30,
    pts_ms: Sequence[int] | None = None,
    size: tuple[int, int] = (64, 48),
    **kwargs,
) -> Path:
    """Write pattern frames 0..n-1 (size = (W, H)) at `fps`, or at `pts_ms` (VFR, ms).

    Other keyword arguments as `write_frames`.
    """
    count = len(pts_ms) if pts_ms is not None else n_frames
    frames = (pattern_frame(i, *size) for i in range(count))
    return write_frames(path, frames, fps=fps, pts_ms=pts_ms, **kwargs)


def write_frames(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int = 30,
    pts_ms: Sequence[int] | None = None,
    rotation: int | None = None,
    codec: str = "libx264",
    audio: np.ndarray | None = None,
    sr: int = 16000,
    audio_start: float = 0.0,
    video_start: float = 0.0,
    faststart: bool = False,
    gop: int | None = None,
) -> Path:
    """Write RGB uint8 frames (all the same even size) at `fps`, or at `pts_ms` (VFR, ms).

    rotation: display-matrix rotation in counter-clockwise degrees (as FFmpeg reports it).
    audio: optional mono float track, its first sample at `audio_start` s; video frames start
    at `video_start` s. Container chosen by the suffix (.mp4, .mkv, .webm, ...). gop: keyframe
    interval in frames (more keyframes make seeking matter).
    """
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        opts = {"crf": "12"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.codec_context.max_b_frames = 0  # keeps mp4 durations exact for VFR pts
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        tb = Fraction(1, 1000) if pts_ms is not None else Fraction(1, fps)
        stream.codec_context.time_base = tb
        if rotation is not None:
            stream.set_display_rotation(rotation)
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sr, layout="mono")
        offset = round(video_start / tb)
        times = iter(pts_ms) if pts_ms is not None else itertools.count()
        for image, t in zip(itertools.chain([first], frames), times, strict=False):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = t + offset
            frame.time_base = tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if astream is not None:
            af = av.AudioFrame.from_ndarray(
                np.asarray(audio, np.float32)[None, :], format="flt", layout="mono"
            )
            af.sample_rate = sr
            af.time_base = Fraction(1, sr)
            af.pts = round(audio_start * sr)
            container.mux(astream.encode(af))
            container.mux(astream.encode(None))
    return path


def write_audio(
    path: Path, audio: np.ndarray, sr: int = 16000, channels: int = 1, cover_art: bool = False
) -> Path:
    """Write mono float audio (duplicated to `channels`): .wav via soundfile, else via PyAV.

    cover_art: add a JPEG "attached picture" video stream (as music files carry; .mp3 only).
    """
    data = np.repeat(np.asarray(audio, np.float32)[:, None], channels, axis=1)
    if path.suffix == ".wav":
        sf.write(str(path), data, sr, subtype="PCM_16")
        return path
    codec = {".mp3": "libmp3lame", ".m4a": "aac", ".mp4": "aac", ".ogg": "libopus"}[path.suffix]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sr, layout=layout)
        if cover_art:
            cover = container.add_stream("mjpeg", rate=1)
            cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
            cover.disposition = av.stream.Disposition.attached_pic
            picture = av.VideoFrame.from_ndarray(pattern_frame(0), format="rgb24")
            container.mux(cover.encode(picture) + cover.encode(None))
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = sr
        frame.pts = 0
        frame.time_base = Fraction(1, sr)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of the bytes of `src` to `dst`."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def small_talking_clip(video: Path, seconds: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first `seconds` of a real talking video, frames shrunk to 360x640 (face ~75 px
    wide: fast but real), and its 16 kHz audio of the same length."""
    import cv2

    from musetalk.audio import load_audio
    from musetalk.video import iter_frames

    frames = [
        cv2.resize(f, (360, 640), interpolation=cv2.INTER_AREA)
        for _, f in iter_frames(video, end=25 * seconds)
    ]
    return frames, load_audio(video)[: 16000 * seconds]


def tar_digest(output: Path) -> dict[str, list[tuple[str, str]]]:
    """tar name -> [(member, sha1)], the byte-level content of a dataset's shards."""
    import hashlib
    import tarfile

    digest = {}
    for path in sorted(output.glob("*.tar")):
        with tarfile.open(path) as tar:
            digest[path.name] = [
                (m.name, hashlib.sha1(tar.extractfile(m).read()).hexdigest()) for m in tar
            ]
    return digest
