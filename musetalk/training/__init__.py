"""Training: shard clips (batch contract: `musetalk.training.clips`), the DataModule, the
LightningModule, callbacks and the run helpers."""

from musetalk.training.clips import (
    ClipOptions,
    collate,
    context_audio_windows,
    finish_batch,
    make_clips,
)
from musetalk.training.crops import context_box
from musetalk.training.data import ShardClips, TalkingFaceDataModule
from musetalk.training.reference import pose_mouth_descriptors, select_references, v15_candidates

__all__ = [
    "ClipOptions",
    "ShardClips",
    "TalkingFaceDataModule",
    "collate",
    "context_audio_windows",
    "context_box",
    "finish_batch",
    "make_clips",
    "pose_mouth_descriptors",
    "select_references",
    "v15_candidates",
]
