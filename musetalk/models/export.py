"""The export format: MuseTalk's released UNet format plus the record of the training run.

    <dir>/unet.pth          plain diffusers UNet state dict (torch.save of tensors)
    <dir>/unet.safetensors  the same tensors
    <dir>/musetalk.json     the constructor arguments (`UNet2DConditionModel(**json)`)
    <dir>/training.json     what inference must repeat: audio_positional_encoding, the VAE and
                            Whisper used (`models.provenance` records), the training data's
                            shift statistics (bbox_shift=auto)
    <dir>/vae/, whisper/    random-init VAE / Whisper (tiny experiment) saved with the UNet

Released weights and our exports are interchangeable: `musetalk.models.load_unet` reads both.
`training.json` is written and read here only (`write_training_info`, `read_training_info`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from musetalk.errors import CheckpointError
from musetalk.files import read_json_object
from musetalk.models.unet import CONFIG_NAME, unet_kwargs

__all__ = [
    "TRAINING_INFO",
    "WEIGHTS_PTH",
    "WEIGHTS_SAFETENSORS",
    "export_unet",
    "read_training_info",
    "write_training_info",
]

WEIGHTS_PTH = "unet.pth"
WEIGHTS_SAFETENSORS = "unet.safetensors"
TRAINING_INFO = "training.json"
#: Layout version of training.json; exports without the key were written as version 1.
#: Version 2 records the VAE and Whisper as `musetalk.models.provenance` records.
TRAINING_INFO_FORMAT = 2
KNOWN_TRAINING_INFO_FORMATS = (1, 2)


def export_unet(unet: UNet2DConditionModel, out_dir: str | Path) -> Path:
    """Write `unet.pth`, `unet.safetensors` and `musetalk.json` (the released MuseTalk format)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    torch.save(state, out / WEIGHTS_PTH)
    save_file(state, str(out / WEIGHTS_SAFETENSORS))
    config = unet_kwargs(dict(unet.config))  # every constructor argument, explicit
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def write_training_info(out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write `training.json` into an export dir atomically (stamped with its format)."""
    out = Path(out_dir)
    tmp = out / f".{TRAINING_INFO}.tmp"
    record = {**info, "format": TRAINING_INFO_FORMAT}
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(out / TRAINING_INFO)
    return out / TRAINING_INFO


def read_training_info(export_dir: str | Path) -> dict[str, Any] | None:
    """An export's `training.json`, or None when it has none; CheckpointError when it is not
    valid JSON, not an object, or of an unknown format."""
    path = Path(export_dir) / TRAINING_INFO
    if not path.is_file():
        return None
    info = read_json_object(path, CheckpointError)
    if info.get("format", 1) not in KNOWN_TRAINING_INFO_FORMATS:
        raise CheckpointError(
            f"{path}: format {info.get('format')!r} is not known to this version "
            f"(known: {', '.join(map(str, KNOWN_TRAINING_INFO_FORMATS))}); upgrade musetalk"
        )
    return info
