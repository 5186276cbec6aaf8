"""The inpainting mask: the one implementation shared by training and inference."""

from __future__ import annotations

import torch


def mask_lower_half(images: torch.Tensor) -> torch.Tensor:
    """Copy of (..., 3, H, W) images in [-1, 1] with rows H/2.. set to -1 (black).

    The boundary is the crop's middle row: with the region module's boxes that is the mask
    upper bound (landmark 29 + bbox_shift at inference).
    """
    out = images.clone()
    out[..., images.shape[-2] // 2 :, :] = -1.0
    return out


def unet_input(masked_latents: torch.Tensor, reference_latents: torch.Tensor) -> torch.Tensor:
    """(B, 8, h, w): masked latents first, then the reference latents (MuseTalk's order)."""
    return torch.cat([masked_latents, reference_latents], dim=1)
