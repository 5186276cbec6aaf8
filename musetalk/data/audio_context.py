"""Reading a sample's audio context while a source streams by (see `musetalk.audio.context`).

`ContextReader` keeps its own `AudioStream` of the source (the sample stream's reads are per
sample; the context needs whole 30 s windows aligned to the source's time 0, read in order)
and, with an encoder, the Whisper states of the windows the current samples use (computed once
per window, dropped when no later sample can use them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musetalk.audio import AudioStream
from musetalk.audio.context import WINDOW_SAMPLES, WINDOW_STEPS_30S, SampleContext, context_of
from musetalk.audio.windows import num_steps_for

__all__ = ["ContextReader"]


class ContextReader:
    """The audio context (and optionally Whisper states) of samples of one source, in frame
    order. encoder: a `WhisperEncoder` (or None: no states)."""

    def __init__(self, path: str, encoder: Any | None = None) -> None:
        self.stream = AudioStream(path)
        self.encoder = encoder
        self._states: dict[int, np.ndarray] = {}

    def read(
        self, first_frame: int, num_frames: int
    ) -> tuple[SampleContext, np.ndarray, np.ndarray | None]:
        """(context, its audio from the first window's start to the source end or the last
        window's end, float32; the states of its steps (num_steps, L, d) or None)."""
        context = context_of(first_frame, num_frames, None)
        stop = context.first_sample + context.num_windows * WINDOW_SAMPLES
        audio = self.stream.read(context.first_sample, stop)
        if self.stream.ended:
            total = self.stream.num_samples
            context = context_of(first_frame, num_frames, num_steps_for(total))
            audio = audio[: max(0, total - context.first_sample)]
        if self.encoder is None:
            return context, audio, None
        windows = range(context.first_window, context.first_window + context.num_windows)
        for k in [k for k in self._states if k < context.first_window]:
            del self._states[k]
        for i, k in enumerate(windows):
            if k not in self._states:
                piece = audio[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
                padded = np.zeros(WINDOW_SAMPLES, np.float32)
                padded[: len(piece)] = piece
                self._states[k] = self.encoder.encode_windows(padded)
        states = np.concatenate([self._states[k] for k in windows])
        offset = context.first_step - context.first_window * WINDOW_STEPS_30S
        return context, audio, states[offset : offset + context.num_steps]

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> ContextReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
