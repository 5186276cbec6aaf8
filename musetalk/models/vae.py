"""The frozen VAE (sd-vae-ft-mse): 256x256 RGB in [-1, 1] <-> 4x32x32 latents, scaled by 0.18215."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from musetalk.errors import MissingWeightsError
from musetalk.files import looks_local, require_files

SCALING_FACTOR = 0.18215
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"

#: A tiny AutoencoderKL with the same interface (8x downsampling, 4 latent channels).
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [16, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
}


def check_vae_dir(path: Path) -> None:
    """A diffusers AutoencoderKL directory: config.json + weights."""
    weights = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    require_files(path, [("config.json",), weights], "VAE")


def load_vae(
    source: str | Path = DEFAULT_VAE, subfolder: str | None = None, revision: str | None = None
) -> AutoencoderKL:
    """An AutoencoderKL from a local diffusers dir (config.json + weights) or an HF id (at
    `revision`, a commit, branch or tag; None: the default branch).

    Local paths always work offline; HF ids download on machines with network. Weights load
    through diffusers (safetensors, or torch.load with weights_only for .bin).
    """
    if looks_local(source):
        check_vae_dir(Path(source).expanduser() / (subfolder or ""))
    try:
        vae = AutoencoderKL.from_pretrained(str(source), subfolder=subfolder, revision=revision)
    except OSError as exc:
        raise MissingWeightsError(
            f"could not load the VAE {source!r}: {exc}. Offline, pass a local directory "
            "(e.g. MuseTalk's models/sd-vae) instead of an HF id"
        ) from exc
    return vae.eval().requires_grad_(False)


def encode(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) scaled latents (distribution mode)."""
    return vae.encode(images.to(vae.dtype)).latent_dist.mode() * SCALING_FACTOR


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, 8h, 8w) images in about [-1, 1] (not clamped)."""
    return vae.decode(latents.to(vae.dtype) / SCALING_FACTOR).sample
