"""Audio loading and saving: any file FFmpeg reads -> 16 kHz mono float32, aligned to the video.

Alignment: sample n of `load_audio` plays at t = n / sr seconds, with t = 0 at the start of the
file's video stream (the same origin as `musetalk.video` frames: frame i <-> t = i / fps). The
audio stream's own start is read from its first decoded frame's timestamp; when it starts after
the video the gap is filled with zeros, when it starts before, the samples before t = 0 are
dropped. In files without video, t = 0 is the first decoded audio sample. Gaps inside the audio
stream are not filled. Truncated ISO-BMFF files raise TruncatedMedia at open (as for video);
in other containers the decodable part is returned.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from musetalk.errors import CorruptMedia, NoAudioStream
from musetalk.video import open_media, video_start

__all__ = ["SAMPLE_RATE", "audio_for_frames", "load_audio", "write_wav"]

SAMPLE_RATE = 16000


def load_audio(path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) float32 mono samples in [-1, 1] at `sr` Hz, sample 0 at the video's t = 0.

    Resampled by FFmpeg (PyAV AudioResampler); channels are averaged (librosa's downmix, which
    MuseTalk's features were trained with), not FFmpeg's power-preserving sum * 0.707.
    Raises NoAudioStream for files without audio, and the errors of `open_media`.
    """
    path = Path(path)
    with open_media(path) as container:
        if not container.streams.audio:
            raise NoAudioStream(path, "expected an audio stream, the file has none")
        stream = container.streams.audio[0]
        t0 = video_start(container)
        resampler = av.AudioResampler(format="fltp", rate=sr)  # keeps the channel layout
        chunks: list[np.ndarray] = []
        first: Fraction | None = None
        try:
            for frame in container.decode(stream):
                if first is None and frame.pts is not None:
                    first = Fraction(frame.pts) * stream.time_base
                chunks.extend(_mono(f) for f in resampler.resample(frame))
            chunks.extend(_mono(f) for f in resampler.resample(None))
        except av.error.FFmpegError as e:
            raise CorruptMedia(path, f"decoding audio failed: {e.strerror}") from e
    if not chunks:
        raise CorruptMedia(path, "no decodable audio")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    if t0 is not None and first is not None:
        shift = round((first - t0) * sr)
        if shift > 0:
            audio = np.concatenate([np.zeros(shift, np.float32), audio])
        elif shift < 0:
            audio = audio[-shift:]
    return np.clip(audio, -1.0, 1.0)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """(n,) mean of the channels of a planar float frame (as librosa's to_mono)."""
    return frame.to_ndarray().mean(axis=0, dtype=np.float32)


def audio_for_frames(
    audio: np.ndarray,
    start_frame: int,
    num_frames: int,
    fps: float = 25,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """Samples of video frames [start_frame, start_frame + num_frames): (num_frames * sr / fps,).

    Frame i covers [i / fps, (i + 1) / fps) s; sample bounds are rounded when sr / fps is not an
    integer. Past the end of `audio` the result is zero padded.
    """
    if start_frame < 0 or num_frames < 0:
        raise ValueError(f"expected start_frame, num_frames >= 0, got {start_frame}, {num_frames}")
    rate = Fraction(sr) / Fraction(fps).limit_denominator(1_000_000)
    a = round(start_frame * rate)
    b = round((start_frame + num_frames) * rate)
    out = np.zeros(b - a, dtype=np.float32)
    part = audio[a:b]
    out[: len(part)] = part
    return out


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write (N,) or (N, C) float audio in [-1, 1] as 16-bit PCM wav (values are clipped)."""
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected float audio (N,) or (N, C), got {audio.shape} {audio.dtype}")
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
