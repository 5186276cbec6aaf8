"""Tiny random-weight models built with the real classes (seeded) and saved like real weights,
so that tests load them through the same code paths as released checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from musetalk.audio.whisper import TINY_WHISPER
from musetalk.models import TINY_UNET, TINY_VAE, build_unet


def tiny_whisper_config(layers: int = 2, dim: int = 64) -> WhisperConfig:
    """whisper-tiny's input geometry (80 mels, 1500 steps per 30 s) with a small encoder."""
    return WhisperConfig(
        vocab_size=128,
        num_mel_bins=80,
        d_model=dim,
        encoder_layers=layers,
        encoder_attention_heads=2,
        encoder_ffn_dim=2 * dim,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=2 * dim,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )


def save_tiny_whisper(path: Path, layers: int = 2, dim: int = 64, seed: int = 0) -> Path:
    """A seeded random WhisperModel + the default feature extractor, in the HF layout."""
    torch.manual_seed(seed)
    WhisperModel(tiny_whisper_config(layers, dim)).eval().save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)
    return path


def save_released_layout(root: Path, version: str = "v15", seed: int = 0) -> dict:
    """MuseTalk's released layout with tiny random weights; returns the UNet state dict."""
    sub, name = {"v15": ("musetalkV15", "unet.pth"), "v1": ("musetalk", "pytorch_model.bin")}[
        version
    ]
    torch.manual_seed(seed)
    unet = build_unet(TINY_UNET)
    (root / sub).mkdir(parents=True)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    torch.save(state, root / sub / name)
    (root / sub / "musetalk.json").write_text(json.dumps(TINY_UNET))
    AutoencoderKL(**TINY_VAE).save_pretrained(root / "sd-vae")
    WhisperModel(WhisperConfig(**TINY_WHISPER)).save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")
    return state
