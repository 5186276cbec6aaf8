"""The time base of the whole framework: 25 video frames and 16 kHz mono audio per second.

Every part (decoding, samples, audio windows, training clips, inference) works on this grid:
video frame i <-> audio [i / FPS, (i + 1) / FPS) s = samples [640 i, 640 (i + 1)).
"""

from __future__ import annotations

FPS = 25  # video frames per second; inputs at other rates are resampled to it
SAMPLE_RATE = 16000  # audio samples per second (mono)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
