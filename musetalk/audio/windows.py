"""Whisper features -> per-video-frame audio tokens, and their sinusoidal positional encoding.

The one implementation of MuseTalk's audio windowing, shared by preprocessing, training and
inference. Encoder steps are at 50 Hz (step s covers [s / 50, (s + 1) / 50) s of audio); video
frame i (at 25 fps) is conditioned on the 10 steps [2i - 4, 2i + 6), zero padded past both ends
of the features, flattened layer-fastest into 10 * L tokens (token = step * L + layer; 50 tokens
for whisper-tiny's L = 5 hidden states). This equals upstream MuseTalk's `get_whisper_chunk`.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from musetalk.timebase import FPS, SAMPLE_RATE

if TYPE_CHECKING:  # torch is imported where it is used: preprocessing workers do without it
    import torch

__all__ = [
    "STEPS_PER_SECOND",
    "WINDOW_LEFT",
    "WINDOW_STEPS",
    "add_positional_encoding",
    "audio_windows",
    "num_frames_for",
    "num_steps_for",
    "sinusoidal_encoding",
    "window_steps",
]

STEPS_PER_SECOND = 50  # Whisper encoder rate: mel hop 10 ms, then a stride-2 convolution
WINDOW_LEFT = 4  # encoder steps before a frame's own first step
WINDOW_STEPS = 10  # encoder steps per video frame

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


def _fraction(x: float, name: str) -> Fraction:
    value = Fraction(x).limit_denominator(1_000_000)
    if value <= 0:
        raise ValueError(f"expected {name} > 0, got {x}")
    return value


def num_frames_for(num_samples: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Video frames conditioned by `num_samples` of audio at `sr` Hz: floor(seconds * fps)."""
    if num_samples < 0:
        raise ValueError(f"expected num_samples >= 0, got {num_samples}")
    return math.floor(Fraction(num_samples) / _fraction(sr, "sr") * _fraction(fps, "fps"))


def num_steps_for(num_samples: int, sr: int = SAMPLE_RATE) -> int:
    """50 Hz encoder steps kept for `num_samples` of audio: floor(seconds * 50).

    A trailing partial step (< 20 ms) is dropped, as upstream does; the last video frame's
    own steps (2i, 2i + 1 at 25 fps) are always whole.
    """
    if num_samples < 0:
        raise ValueError(f"expected num_samples >= 0, got {num_samples}")
    return math.floor(Fraction(num_samples) / _fraction(sr, "sr") * STEPS_PER_SECOND)


def window_steps(num_frames: int, fps: float = FPS, start_frame: int = 0) -> np.ndarray:
    """(num_frames, 10) int64 encoder steps of frames [start_frame, start_frame + num_frames).

    Row j holds steps [c - 4, c + 6) with c = floor((start_frame + j) * 50 / fps) (= 2i at
    25 fps); steps < 0 or past the features are padding.
    """
    if num_frames < 0 or start_frame < 0:
        raise ValueError(f"expected num_frames, start_frame >= 0, got {num_frames}, {start_frame}")
    rate = STEPS_PER_SECOND / _fraction(fps, "fps")
    frames = np.arange(start_frame, start_frame + num_frames, dtype=np.int64)
    first = frames * rate.numerator // rate.denominator - WINDOW_LEFT
    return first[:, None] + np.arange(WINDOW_STEPS, dtype=np.int64)


def audio_windows(
    features: Array, num_frames: int, fps: float = FPS, start_frame: int = 0
) -> Array:
    """Per-frame audio tokens (num_frames, 10 * L, d) from encoder features (T50, L, d).

    Frames [start_frame, start_frame + num_frames) at `fps`; token t of frame i is step
    `window_steps(...)[i, t // L]`, layer t % L, zero where the step is outside [0, T50).
    Works on numpy arrays and torch tensors alike (same type, dtype and device out), so the
    cached float16 shard features and the training loop share this one function.
    Raises ValueError when a frame's own first step is past the features (wrong audio length).
    """
    if features.ndim != 3:
        raise ValueError(f"expected features (T50, L, d), got shape {tuple(features.shape)}")
    steps, layers, dim = features.shape
    idx = window_steps(num_frames, fps, start_frame)
    if num_frames and idx[-1, WINDOW_LEFT] >= steps:
        raise ValueError(
            f"frame {start_frame + num_frames - 1} at {fps} fps starts at encoder step "
            f"{idx[-1, WINDOW_LEFT]}, but the features have only {steps} steps"
        )
    lo = max(0, -int(idx.min())) if num_frames else 0
    hi = max(0, int(idx.max()) + 1 - steps) if num_frames else 0
    flat = (idx + lo).reshape(-1)
    torch = sys.modules.get("torch")  # a tensor means torch is imported
    if torch is not None and isinstance(features, torch.Tensor):
        pad = features.new_zeros
        padded = torch.cat([pad(lo, layers, dim), features, pad(hi, layers, dim)])
        out = padded[torch.from_numpy(flat).to(features.device)]
    else:
        zeros = np.zeros((lo + steps + hi, layers, dim), dtype=features.dtype)
        zeros[lo : lo + steps] = features
        out = zeros[flat]
    return out.reshape(num_frames, WINDOW_STEPS * layers, dim)


def sinusoidal_encoding(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(num_positions, dim) float32 table: pe[p, 2k] = sin(p / base^(2k / dim)), pe[p, 2k+1] = cos.

    Computed in float64, then rounded (upstream MuseTalk's `PositionalEncoding` within 1e-6).
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"expected an even dim > 0, got {dim}")
    if num_positions < 0:
        raise ValueError(f"expected num_positions >= 0, got {num_positions}")
    import torch

    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    angle = pos / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.empty(num_positions, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()


def add_positional_encoding(x: torch.Tensor) -> torch.Tensor:
    """x (..., T, d) + sinusoidal_encoding(T, d) in x's dtype and device (MuseTalk: T 50, d 384)."""
    if x.ndim < 2:
        raise ValueError(f"expected tokens (..., T, d), got shape {tuple(x.shape)}")
    pe = sinusoidal_encoding(x.shape[-2], x.shape[-1])
    return x + pe.to(device=x.device, dtype=x.dtype)
