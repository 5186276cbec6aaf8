"""The audio-conditioned UNet: MuseTalk's diffusers `UNet2DConditionModel`, loading and export.

Released weights are a plain diffusers state dict plus `musetalk.json` (the constructor
arguments): v1.0 `musetalk/pytorch_model.bin`, v1.5 `musetalkV15/unet.pth`. Our trainer exports
the same format (plus `unet.safetensors`), so released and self-trained weights are
interchangeable. Weights are read with safetensors or `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from musetalk.errors import CheckpointError, MissingWeightsError, UnsafeFileError
from musetalk.files import read_json_object

#: MuseTalk's UNet (about 850 M parameters): 8 input channels = masked latent + reference latent,
#: 4 output channels = the target latent, cross-attention on 384-d Whisper-tiny tokens.
MUSETALK_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

#: A tiny UNet with the same interface (tests, smoke runs): seconds on a CPU.
TINY_UNET = {
    **MUSETALK_UNET,
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}

CONFIG_NAME = "musetalk.json"  # the constructor arguments, next to the weights


def unet_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a musetalk.json-style dict (diffusers' "_" keys dropped)."""
    kwargs = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key in kwargs:
            kwargs[key] = list(kwargs[key])
    return kwargs


def build_unet(config: dict[str, Any] | None = None, **overrides: Any) -> UNet2DConditionModel:
    """A randomly initialised UNet (default: MuseTalk's full configuration)."""
    return UNet2DConditionModel(**unet_kwargs({**(config or MUSETALK_UNET), **overrides}))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint, never unpickling code.

    Lightning checkpoints (a dict with "state_dict") are unwrapped; "unet." prefixes from our
    LightningModule are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"UNet weights not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), expected UNet weights")
    state = read_weights(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if any(k.startswith("unet.") for k in state):
        state = {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
    return state


def read_weights(path: str | Path) -> Any:
    """The content of a .safetensors file or a torch checkpoint, loaded without running code.

    A torch file whose content needs more than tensors and plain containers (a pickled model or
    object) is refused with UnsafeFileError; an unreadable one is a CheckpointError.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" (it holds {found.group(1)})" if found else ""
        raise UnsafeFileError(
            f"{path}: refused: reading it would need unpickling arbitrary Python objects{what}; "
            "only safetensors files and weights-only torch checkpoints "
            "(tensors in plain containers) are read. Re-save the weights as a state dict."
        ) from None
    except (EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or another format: {exc})"
        ) from None


def read_unet_config(path: str | Path) -> dict[str, Any]:
    """A `musetalk.json` (the UNet's constructor arguments), checked to be one."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"UNet config not found: {path} (expected musetalk.json next to the weights)"
        )
    config = read_json_object(path, CheckpointError)
    needed = ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim")
    if any(k not in config for k in needed):
        raise CheckpointError(f"{path}: not a MuseTalk UNet config (needs {', '.join(needed)})")
    return config


def load_unet(
    weights: str | Path, config: str | Path | dict[str, Any] | None = None
) -> UNet2DConditionModel:
    """Build the UNet from `config` (a musetalk.json path or dict; default: the json next to the
    weights) and load `weights` strictly. Shape or key mismatches raise a ValueError naming
    the first offending keys."""
    weights = Path(weights)
    if config is None:
        config = weights.parent / CONFIG_NAME
    if not isinstance(config, dict):
        config = read_unet_config(config)
    unet = build_unet(config)
    state = read_state_dict(weights)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} with wrong shapes (e.g. {k}: file {tuple(state[k].shape)} "
                f"vs model {tuple(expected[k].shape)})"
            )
        raise CheckpointError(f"{weights} does not match the UNet config: " + "; ".join(details))
    unet.load_state_dict(state, strict=True)
    return unet
