"""The audio context of a sample: one definition shared by preprocessing, training and inference.

Inference encodes a whole audio file with Whisper in consecutive 30 s windows aligned to its
time 0 (`WhisperEncoder.encode`) and conditions video frame i on encoder steps [2i - 4, 2i + 6)
(`audio_windows`). A training sample is frames [f, f + n) of a source; its frames must see the
same features, so preprocessing stores, per sample, the source's audio context: the 30 s windows
(aligned to source time 0) that hold steps [2f - 4, 2(f + n) + 6), as 16 kHz audio (`context.wav`,
for on-device encoding) and, when features are cached, the encoder states of the steps the sample
needs (`whisper.npy`). Steps before the source's start or past its end are absent (zeros), as at
inference. `SampleContext` describes where a sample's context sits in its source.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from musetalk.audio.windows import STEPS_PER_SECOND, WINDOW_LEFT, WINDOW_STEPS, audio_windows
from musetalk.timebase import FPS, SAMPLE_RATE

if TYPE_CHECKING:
    import torch

__all__ = [
    "WINDOW_SAMPLES",
    "WINDOW_STEPS_30S",
    "SampleContext",
    "context_features",
    "context_of",
]

WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480000 audio samples per encoder window
WINDOW_STEPS_30S = WINDOW_SECONDS * STEPS_PER_SECOND  # 1500 encoder steps per window
STEPS_PER_FRAME = STEPS_PER_SECOND // FPS  # 2


@dataclass(frozen=True)
class SampleContext:
    """Where a sample's audio context sits in its source (the sample json's `audio_context`).

    first_frame: the sample's first frame in the source (25 fps). first_window: index of the
    first 30 s window; num_windows: windows stored in `context.wav` (from first_window).
    first_step, num_steps: the encoder steps the sample's frames use that exist in the source
    ([max(0, 2f - 4), min(source steps, 2(f + n) + 6))), i.e. the rows of `whisper.npy`.
    """

    first_frame: int
    first_window: int
    num_windows: int
    first_step: int
    num_steps: int

    @property
    def first_sample(self) -> int:
        """The context audio's first sample in the source (16 kHz)."""
        return self.first_window * WINDOW_SAMPLES

    @property
    def token_start_frame(self) -> int:
        """`audio_windows(steps, n, start_frame=...)` on the stored steps gives the sample's
        frames: frame j uses rows [2 (token_start_frame + j) - 4, ...)."""
        return self.first_frame - self.first_step // STEPS_PER_FRAME

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SampleContext:
        return cls(**{k: int(obj[k]) for k in cls.__dataclass_fields__})


def context_of(first_frame: int, num_frames: int, source_steps: int | None) -> SampleContext:
    """The context of frames [first_frame, first_frame + num_frames) of a source with
    `source_steps` encoder steps (None: the source is known to go on past the sample's last
    window, i.e. its end was not reached when the windows were read)."""
    if first_frame < 0 or num_frames < 1:
        raise ValueError(f"expected first_frame >= 0, num_frames >= 1: {first_frame}, {num_frames}")
    lo = max(0, STEPS_PER_FRAME * first_frame - WINDOW_LEFT)
    hi = STEPS_PER_FRAME * (first_frame + num_frames) - WINDOW_LEFT + WINDOW_STEPS
    first_window = lo // WINDOW_STEPS_30S
    last_window = (hi - 1) // WINDOW_STEPS_30S
    if source_steps is not None:
        hi = min(hi, source_steps)
        last_window = min(last_window, max(first_window, (source_steps - 1) // WINDOW_STEPS_30S))
    return SampleContext(first_frame, first_window, last_window - first_window + 1, lo, hi - lo)


def context_features(
    states: np.ndarray | torch.Tensor, context: SampleContext, num_frames: int, start: int = 0
) -> np.ndarray | torch.Tensor:
    """(num_frames, 10 L, d) audio tokens of sample frames [start, start + num_frames).

    states: the encoder states of the context's windows (num_windows x 1500, L, d), as
    `WhisperEncoder` gives them for `context.wav`, or the stored steps alone
    (`context.num_steps`, L, d; `whisper.npy`). Steps outside the source are zeros.
    """
    if len(states) != context.num_steps:
        offset = context.first_step - context.first_window * WINDOW_STEPS_30S
        states = states[offset : offset + context.num_steps]
    return audio_windows(states, num_frames, start_frame=context.token_start_frame + start)
