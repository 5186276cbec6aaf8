"""Log-mel spectrograms for the SyncNet loss (and LSE metrics): Wav2Lip / LatentSync parameters.

80 mel bins of 16 kHz audio, n_fft 800, hop 200 (12.5 ms: 80 mel frames per second, 3.2 per
25 fps video frame), Slaney filters 55-7600 Hz, pre-emphasis 0.97, values in [-4, 4]
(LatentSync's configs/audio.yaml).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from musetalk.timebase import FPS, SAMPLE_RATE

__all__ = ["MEL_BINS", "MEL_PER_FRAME", "log_mel", "mel_window"]

MEL_BINS = 80
MEL_N_FFT = 800
MEL_HOP = 200  # 12.5 ms: 80 mel frames per second, 3.2 per video frame
MEL_WIN = 800
MEL_FMIN = 55.0
MEL_FMAX = 7600.0
MEL_PREEMPHASIS = 0.97
MEL_MIN_LEVEL_DB = -100.0
MEL_REF_LEVEL_DB = 20.0
MEL_MAX_ABS = 4.0
MEL_PER_FRAME = SAMPLE_RATE / MEL_HOP / FPS  # 3.2


@functools.cache
def _mel_basis() -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=MEL_N_FFT // 2 + 1,
        num_mel_filters=MEL_BINS,
        min_frequency=MEL_FMIN,
        max_frequency=MEL_FMAX,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )  # (401, 80), librosa.filters.mel's defaults
    return torch.from_numpy(bank.T.astype(np.float32))


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, N // 200 + 1) float32 log-mel in [-4, 4] of (N,) 16 kHz audio (SyncNet input).

    Wav2Lip/LatentSync `melspectrogram`: pre-emphasis 0.97, |STFT| (n_fft 800, hann window 800,
    hop 200, centred with zero padding), Slaney mel filters 55-7600 Hz, 20 log10(max(1e-5, x))
    - 20 dB, then (db + 100) / 100 mapped to [-4, 4] and clipped. Mel frame k is centred on
    sample 200 k, i.e. 80 frames per second.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected (N,) mono audio, got shape {x.shape}")
    x = np.concatenate([x[:1], x[1:] - MEL_PREEMPHASIS * x[:-1]])
    spec = torch.stft(
        torch.from_numpy(x),
        n_fft=MEL_N_FFT,
        hop_length=MEL_HOP,
        win_length=MEL_WIN,
        window=torch.hann_window(MEL_WIN),
        center=True,
        pad_mode="constant",
        return_complex=True,
    ).abs()
    mel = _mel_basis() @ spec
    min_level = 10.0 ** (MEL_MIN_LEVEL_DB / 20.0)
    db = 20.0 * torch.log10(mel.clamp_min(min_level)) - MEL_REF_LEVEL_DB
    scaled = 2 * MEL_MAX_ABS * (db - MEL_MIN_LEVEL_DB) / -MEL_MIN_LEVEL_DB - MEL_MAX_ABS
    return scaled.clamp(-MEL_MAX_ABS, MEL_MAX_ABS).numpy()


def mel_window(mel: np.ndarray, start_frame: int, num_frames: int) -> np.ndarray:
    """(80, ceil(3.2 num_frames)) mel frames of video frames [start_frame, +num_frames).

    Starts at mel frame int(3.2 start_frame) (LatentSync's `crop_audio_window`); frames past the
    end of `mel` are filled with the floor value -4.
    """
    length = math.ceil(num_frames * MEL_PER_FRAME - 1e-9)
    start = int(start_frame * MEL_PER_FRAME + 1e-9)
    out = np.full((mel.shape[0], length), -MEL_MAX_ABS, dtype=np.float32)
    part = mel[:, start : start + length]
    out[:, : part.shape[1]] = part
    return out
