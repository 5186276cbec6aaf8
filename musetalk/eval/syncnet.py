"""SyncNet v2 (Chung & Zisserman, `syncnet_v2.model`) and the LSE-C / LSE-D metrics it defines.

The network, in the key layout of the public `syncnet_v2.model` state dict (so the file loads
strictly, with `torch.load(weights_only=True)`): an audio stream on 13 MFCC x 20 frames (0.2 s)
and a lip stream on 5 frames of 224x224 face crops (BGR, 0-255, no normalisation), each ending in
a raw 1024-d embedding. LSE follows syncnet_python's evaluation: one window per frame (5 video
frames, 20 MFCC frames), Euclidean distances between every video window and the audio windows
at offsets -15..+15 frames (zero embeddings past the audio's ends count), averaged over the
windows into a distance curve; LSE-D is its minimum, LSE-C its median minus the minimum, and the
AV offset is 15 minus the minimum's index: positive when the video lags the audio (the audio
leads) by that many frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from musetalk.errors import CheckpointError, MissingWeightsError

__all__ = ["MAX_OFFSET", "LSEResult", "SyncNetV2", "lse_from_embeddings", "mfcc_windows"]

MAX_OFFSET = 15  # frames searched either way (syncnet_python's vshift)
WINDOW_FRAMES = 5  # video frames per lip window
MFCC_PER_FRAME = 4  # 100 MFCC frames per second, 25 video frames per second
CROP = 224


def _conv_bn(conv: nn.Module, channels: int, dims: int) -> list[nn.Module]:
    norm = nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    return [conv, norm, nn.ReLU()]


class SyncNetV2(nn.Module):
    """SyncNet v2 with syncnet_python's attribute names and layer order (`netcnnaud`,
    `netfcaud`, `netcnnlip`, `netfclip`, indices as in its `nn.Sequential`s).

    audio: (N, 1, 13, 20) MFCC windows -> (N, 1024); lips: (N, 3, 5, 224, 224) BGR 0-255 crops
    -> (N, 1024). Embeddings are raw (no normalisation), as LSE uses them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, 64, 3, padding=1), 64, 2),
            nn.MaxPool2d(1, 1),
            *_conv_bn(nn.Conv2d(64, 192, 3, padding=1), 192, 2),
            nn.MaxPool2d(3, stride=(1, 2)),
            *_conv_bn(nn.Conv2d(192, 384, 3, padding=1), 384, 2),
            *_conv_bn(nn.Conv2d(384, 256, 3, padding=1), 256, 2),
            *_conv_bn(nn.Conv2d(256, 256, 3, padding=1), 256, 2),
            nn.MaxPool2d(3, stride=2),
            *_conv_bn(nn.Conv2d(256, 512, (5, 4)), 512, 2),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024)
        )
        self.netcnnlip = nn.Sequential(
            *_conv_bn(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, 3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, 3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(256, 512, (1, 6, 6)), 512, 3),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024)
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SyncNetV2:
        """The network with the weights of a `syncnet_v2.model` state dict (read with
        `torch.load(weights_only=True)`), in eval mode; missing or misshaped tensors are a
        CheckpointError (`num_batches_tracked` may be absent)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"syncnet weights not found: {path} (syncnet_v2.model from syncnet_python's "
                "download_model.sh or LatentSync's auxiliary/ folder)"
            )
        from musetalk.models.unet import read_weights

        state = read_weights(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a SyncNet v2 state dict")
        model = cls()
        own = model.state_dict()
        needed = [k for k in own if not k.endswith("num_batches_tracked")]
        missing = [k for k in needed if k not in state]
        wrong = [k for k in needed if k in state and tuple(state[k].shape) != own[k].shape]
        if missing or wrong:
            raise CheckpointError(
                f"{path} is not a syncnet_v2 state dict: missing {missing[:3]}, wrong shapes "
                f"{wrong[:3]}"
            )
        model.load_state_dict({k: state.get(k, own[k]) for k in own}, strict=True)
        return model.eval()


def mfcc_windows(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames - 4, 1, 13, 20) float32 MFCC windows of 16 kHz mono audio for 25 fps frames:
    python_speech_features' defaults on int16-scaled samples (as syncnet_python reads its
    wav), window i = MFCC frames [4i, 4i + 20). Needs num_frames >= 6."""
    from python_speech_features import mfcc

    samples = np.asarray(audio, dtype=np.float64) * 32768.0
    features = mfcc(samples, 16000).T.astype(np.float32)  # (13, ~4 per video frame)
    windows = num_frames - WINDOW_FRAMES
    if windows < 1:
        raise ValueError(f"LSE needs at least 6 frames, got {num_frames}")
    needed = MFCC_PER_FRAME * (windows - 1) + 20
    if features.shape[1] < needed:
        pad = np.zeros((13, needed - features.shape[1]), np.float32)
        features = np.concatenate([features, pad], axis=1)
    return np.stack(
        [features[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + 20] for i in range(windows)]
    )[:, None]


@dataclass(frozen=True)
class LSEResult:
    """curve: mean distance per offset -15..+15 (frames); lse_d = min, lse_c = median - min,
    av_offset = the offset of the minimum (positive: the video lags the audio)."""

    curve: dict[int, float]
    lse_d: float
    lse_c: float
    av_offset: int


def lse_from_embeddings(
    video: torch.Tensor, audio: torch.Tensor, max_offset: int = MAX_OFFSET
) -> LSEResult:
    """LSE of (W, D) video-window and (W, D) audio-window embeddings (window i = frames
    [i, i + 5)), syncnet_python's `calc_pdist` and statistics (see the module docstring)."""
    if video.shape != audio.shape or video.ndim != 2 or len(video) < 1:
        raise ValueError(f"expected equal (W, D) embeddings, got {video.shape} and {audio.shape}")
    padded = torch.nn.functional.pad(audio, (0, 0, max_offset, max_offset))
    span = 2 * max_offset + 1
    dists = torch.stack(
        [
            torch.nn.functional.pairwise_distance(
                video[i : i + 1].expand(span, -1), padded[i : i + span]
            )
            for i in range(len(video))
        ]
    )  # (W, 31): column j = audio window i + j - max_offset
    curve = dists.mean(dim=0)
    minimum, index = torch.min(curve, dim=0)
    median = torch.median(curve)
    offsets = range(max_offset, -max_offset - 1, -1)  # column j <-> av offset max_offset - j
    return LSEResult(
        curve={k: float(v) for k, v in zip(offsets, curve, strict=True)},
        lse_d=float(minimum),
        lse_c=float(median - minimum),
        av_offset=int(max_offset - int(index)),
    )


def lip_windows(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """(W, 3, 5, 224, 224) float lip windows (BGR, 0-255) of T 224x224 RGB uint8 crops."""
    stack = torch.from_numpy(np.stack(crops)[..., ::-1].copy()).float()  # (T, H, W, 3) BGR
    frames = stack.permute(3, 0, 1, 2)  # (3, T, H, W)
    return torch.stack(
        [frames[:, i : i + WINDOW_FRAMES] for i in range(len(crops) - WINDOW_FRAMES)]
    )
