"""Pixel L1 loss between decoded predictions and targets."""

from __future__ import annotations

import torch
from torch import nn


class L1Loss(nn.Module):
    """Mean absolute difference of (N, 3, H, W) images in [-1, 1] (MuseTalk's reconstruction term).

    weight: its factor in the generator loss (MuseTalk: 1.0); 0 turns it off.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"expected weight >= 0, got {weight}")
        self.weight = float(weight)

    @property
    def active(self) -> bool:
        return self.weight > 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar mean |pred - target| (unweighted)."""
        return (pred.float() - target.float()).abs().mean()
