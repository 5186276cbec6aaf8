"""Training: the shard DataModule (batch contract: `musetalk.training.data`), reference rules."""

from musetalk.training.data import (
    ClipOptions,
    ShardClips,
    TalkingFaceDataModule,
    context_box,
    log_mel,
    make_clips,
    mel_window,
    wav_audio_windows,
)
from musetalk.training.reference import pose_mouth_descriptors, select_references, v15_candidates

__all__ = [
    "ClipOptions",
    "ShardClips",
    "TalkingFaceDataModule",
    "context_box",
    "log_mel",
    "make_clips",
    "mel_window",
    "pose_mouth_descriptors",
    "select_references",
    "v15_candidates",
    "wav_audio_windows",
]
