"""LSE-C / LSE-D of a tracked video and its audio with SyncNet v2 (`musetalk.eval.syncnet`)."""

from __future__ import annotations

import numpy as np
import torch

from musetalk.eval.syncnet import (
    LSEResult,
    SyncNetV2,
    lip_windows,
    lse_from_embeddings,
    mfcc_windows,
)
from musetalk.eval.tracks import FaceTrack
from musetalk.timebase import SAMPLES_PER_FRAME

__all__ = ["lse_of_track"]

BATCH = 20  # windows per SyncNet call (syncnet_python's)


def lse_of_track(
    track: FaceTrack, audio: np.ndarray, weights: str, device: str = "cpu", max_offset: int = 15
) -> tuple[LSEResult, int]:
    """(LSE of the video's face crops against 16 kHz `audio`, frames used): the frames both
    the video and the audio cover (at least 6)."""
    used = min(len(track), len(audio) // SAMPLES_PER_FRAME)
    if used < 6:
        raise ValueError(f"LSE needs 6 frames of video and audio, got {used}")
    model = SyncNetV2.load(weights).to(device)
    lips = lip_windows(track.sync_crops(used))
    mfcc = torch.from_numpy(mfcc_windows(audio[: used * SAMPLES_PER_FRAME], used))
    video, sound = [], []
    with torch.inference_mode():
        for b in range(0, len(lips), BATCH):
            video.append(model.forward_lip(lips[b : b + BATCH].to(device)).cpu())
            sound.append(model.forward_aud(mfcc[b : b + BATCH].to(device)).cpu())
    return lse_from_embeddings(torch.cat(video), torch.cat(sound), max_offset), used
