"""Lip-sync loss with a SyncNet in the checkpoint format of LatentSync's `latentsync_syncnet.pt`.

The network (our implementation of LatentSync's "StableSyncNet" architecture, same parameter
names so its checkpoints load strictly) has two convolutional encoders: audio (1, 80, 52) mel
frames -> D, and video (3 * 16, 128, 256) = 16 RGB lower-half face crops stacked on channels
(frame-major) -> D. Each encoder is conv_in, a chain of residual blocks (GroupNorm, SiLU, two
3x3 convolutions, optional strided 3x3 downsampling convolution) with optional self-attention
blocks, then GroupNorm + ReLU; the final map is flattened and L2-normalised. The loss is the
binary cross entropy of the cosine similarity (clamped to [0, 1]) against "in sync" (MuseTalk).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from musetalk.files import fetch_weights

#: LatentSync's `configs/syncnet/syncnet_16_pixel.yaml` (the one MuseTalk trains with).
LATENTSYNC_SYNCNET: dict[str, dict[str, Any]] = {
    "audio_encoder": {  # input (1, 80, 52)
        "in_channels": 1,
        "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
        "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
        "attn_blocks": [0, 0, 0, 0, 0, 0, 0],
        "dropout": 0.0,
    },
    "visual_encoder": {  # input (48, 128, 256)
        "in_channels": 48,
        "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
        "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
        "attn_blocks": [0, 0, 0, 0, 0, 0, 0, 0],
        "dropout": 0.0,
    },
}
#: Where LatentSync publishes the checkpoint (MuseTalk's models/syncnet/latentsync_syncnet.pt).
LATENTSYNC_SYNCNET_URL = (
    "https://huggingface.co/ByteDance/LatentSync/resolve/main/latentsync_syncnet.pt"
)


def _pair(factor: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(factor, int):
        return factor, factor
    h, w = factor
    return int(h), int(w)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv x2 with a residual path, then an optional strided 3x3 convolution
    (padded by 1 after, and also 1 before along axes that are not downsampled)."""

    def __init__(
        self, in_ch: int, out_ch: int, downsample: int | Sequence[int], groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        stride = _pair(downsample)
        self.downsample_conv = None
        self.pad = (0, 0, 0, 0)
        if stride != (1, 1):
            self.downsample_conv = nn.Conv2d(out_ch, out_ch, 3, stride=stride)
            before_h, before_w = (1 if stride[0] == 1 else 0), (1 if stride[1] == 1 else 0)
            self.pad = (before_w, 1, before_h, 1)  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + (x if self.conv_shortcut is None else self.conv_shortcut(x))
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class _AttentionBlock(nn.Module):
    """Self-attention over the positions of a (N, C, H, W) map, with a GEGLU feed-forward."""

    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        from diffusers.models.attention import FeedForward
        from diffusers.models.attention_processor import Attention

        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads=8, dim_head=channels // 8, dropout=dropout, bias=True)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, dropout=dropout, activation_fn="geglu")
        self.conv_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)  # (N, HW, C)
        tokens = self.attn(self.norm2(tokens)) + tokens
        tokens = self.ff(self.norm3(tokens)) + tokens
        return self.conv_out(tokens.transpose(1, 2).reshape(n, c, h, w)) + x


class SyncEncoder(nn.Module):
    """(N, in_channels, H, W) -> (N, C, h, w) map (1 x 1 for the input size it is built for)."""

    def __init__(
        self,
        in_channels: int,
        block_out_channels: Sequence[int],
        downsample_factors: Sequence[int | Sequence[int]],
        attn_blocks: Sequence[int],
        dropout: float = 0.0,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        if not len(block_out_channels) == len(downsample_factors) == len(attn_blocks):
            raise ValueError(
                "block_out_channels, downsample_factors and attn_blocks need equal lengths, got "
                f"{len(block_out_channels)}, {len(downsample_factors)}, {len(attn_blocks)}"
            )
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        width = block_out_channels[0]
        for out, factor, attn in zip(
            block_out_channels, downsample_factors, attn_blocks, strict=True
        ):
            self.down_blocks.append(_ResBlock(width, out, factor, norm_num_groups, dropout))
            if attn:
                self.down_blocks.append(_AttentionBlock(out, norm_num_groups, dropout))
            width = out
        self.norm_out = nn.GroupNorm(norm_num_groups, width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return F.relu(self.norm_out(x))


class SyncNet(nn.Module):
    """Audio and video embeddings whose cosine similarity scores lip sync.

    config: {"audio_encoder": {...}, "visual_encoder": {...}} with SyncEncoder arguments
    (LatentSync's config keys; default `LATENTSYNC_SYNCNET`).
    """

    def __init__(self, config: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        config = copy.deepcopy(dict(config or LATENTSYNC_SYNCNET))
        self.config = config
        self.audio_encoder = SyncEncoder(**config["audio_encoder"])
        self.visual_encoder = SyncEncoder(**config["visual_encoder"])

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 52) mel -> (N, D) unit vectors."""
        return F.normalize(self.audio_encoder(mel).flatten(1), dim=1)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3 * F, H, W) stacked frames in [-1, 1] -> (N, D) unit vectors."""
        return F.normalize(self.visual_encoder(frames).flatten(1), dim=1)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """(N,) cosine similarity of frames (N, 3F, H, W) and mel (N, 1, 80, 52)."""
        v, a = self.embed_frames(frames), self.embed_audio(mel)
        if v.shape != a.shape:
            raise ValueError(
                f"video embedding {tuple(v.shape)} and audio embedding {tuple(a.shape)} differ: "
                "the frames or the mel do not have the size this SyncNet was built for"
            )
        return (v * a).sum(dim=1)


def load_syncnet(path: str | Path, config: dict[str, dict[str, Any]] | None = None) -> SyncNet:
    """A SyncNet with the weights of a LatentSync-format checkpoint ({"state_dict": ...} or a
    plain state dict), loaded strictly with `torch.load(weights_only=True)`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with objects other than tensors and containers
        raise ValueError(f"{path}: not a loadable SyncNet checkpoint ({err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    net = SyncNet(config)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match the SyncNet config: {len(missing)} missing (e.g. "
            f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
            f"{len(wrong)} with wrong shapes (e.g. {wrong[:2]})"
        )
    net.load_state_dict(state, strict=True)
    return net


class SyncLoss(nn.Module):
    """BCE of the clamped SyncNet similarity between generated lower-half faces and audio.

    weight: factor in the generator loss (MuseTalk: 0.05); with 0 nothing is built or loaded.
    weights: LatentSync's `latentsync_syncnet.pt`; None = the torch hub cache copy of
    `LATENTSYNC_SYNCNET_URL` (downloaded there when `download` and the network allow).
    random_init: a seeded random SyncNet instead (smoke runs; no sync signal).
    config: the SyncNet architecture (default LatentSync's 16-frame pixel config).
    num_frames: frames per clip the network takes (16).
    """

    def __init__(
        self,
        weight: float = 0.05,
        weights: str | None = None,
        download: bool = True,
        random_init: bool = False,
        config: dict[str, dict[str, Any]] | None = None,
        num_frames: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"expected weight >= 0, got {weight}")
        self.weight = float(weight)
        self.num_frames = int(num_frames)
        self.syncnet: SyncNet | None = None
        if not self.active:
            return
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.syncnet = SyncNet(config)
        else:
            try:
                path = fetch_weights(
                    weights, LATENTSYNC_SYNCNET_URL, option="losses.sync.weights", download=download
                )
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"sync loss: {err}. Get LatentSync's latentsync_syncnet.pt "
                    f"({LATENTSYNC_SYNCNET_URL}) onto this machine and set "
                    "losses.sync.weights=<path>, or turn the loss off with losses.sync.weight=0"
                ) from err
            self.syncnet = load_syncnet(path, config)
        self.syncnet.eval().requires_grad_(False)

    @property
    def active(self) -> bool:
        return self.weight > 0

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Scalar loss (unweighted) of generated clips (B, F, 3, S, S) in [-1, 1] and their mel
        (B, 80, 52): mean over clips of -log(clamp(cos(video, audio), 0, 1))."""
        similarity = self.similarity(frames, mel).clamp(0, 1)
        return F.binary_cross_entropy(similarity, torch.ones_like(similarity))

    def similarity(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of the SyncNet embeddings of clips (B, F, 3, S, S) in [-1, 1]
        (their lower halves) and their mel (B, 80, 52): near 1 in sync."""
        if self.syncnet is None:
            raise RuntimeError("the sync loss has weight 0 and no network")
        b, f, c, s, _ = frames.shape
        if f != self.num_frames:
            raise ValueError(f"the sync loss needs clips of {self.num_frames} frames, got {f}")
        lower = frames[:, :, :, s // 2 :, :].reshape(b, f * c, s - s // 2, frames.shape[-1])
        with torch.no_grad():
            audio = self.syncnet.embed_audio(mel[:, None].to(lower.dtype))
        video = self.syncnet.embed_frames(lower)
        if video.shape != audio.shape:
            raise ValueError(
                f"video embedding {tuple(video.shape)} vs audio {tuple(audio.shape)}: this SyncNet "
                f"expects other lower-half faces than (3 x {f}, {s - s // 2}, {frames.shape[-1]})"
            )
        return (video.float() * audio.float()).sum(dim=1)
