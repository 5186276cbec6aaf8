"""Tiny random-weight models built with the real classes (seeded) and saved like real weights,
so that tests load them through the same code paths as released checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel


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
