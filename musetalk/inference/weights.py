"""Where inference finds its weights: MuseTalk's released layout, a training export, or none.

Released layout (what MuseTalk's download script writes, used unchanged):

    <models_dir>/musetalkV15/unet.pth + musetalk.json        version v15 (MuseTalk 1.5)
    <models_dir>/musetalk/pytorch_model.bin + musetalk.json  version v1 (MuseTalk 1.0)
    <models_dir>/sd-vae/      config.json + diffusion_pytorch_model.safetensors|.bin
    <models_dir>/whisper/     config.json, preprocessor_config.json,
                              model.safetensors|pytorch_model.bin

Export layout (our trainer's `export/` dir): `unet.safetensors` or `unet.pth` + `musetalk.json`,
optionally `training.json` with settings of the training run that inference must repeat
(`audio_positional_encoding`, and `shift_stats`, the training data's region statistics for
`bbox_shift=auto`) and the VAE and Whisper it was trained with (a hub id at its commit, a local
directory, or `vae/` and `whisper/` saved in the export: `models.provenance`).

Missing files raise `MissingWeightsError` naming the file and the layout that was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musetalk.audio.whisper import DEFAULT_WHISPER, check_whisper_dir
from musetalk.errors import MissingWeightsError
from musetalk.files import looks_local
from musetalk.models.export import (
    TRAINING_INFO,
    WEIGHTS_PTH,
    WEIGHTS_SAFETENSORS,
    read_training_info,
)
from musetalk.models.provenance import resolve_frozen
from musetalk.models.unet import CONFIG_NAME
from musetalk.models.vae import DEFAULT_VAE, check_vae_dir

__all__ = [
    "MissingWeightsError",
    "ModelFiles",
    "export_files",
    "normalize_version",
    "released_files",
]


#: (subdirectory, weights file) of the released UNet per version.
RELEASED_UNET = {"v15": ("musetalkV15", "unet.pth"), "v1": ("musetalk", "pytorch_model.bin")}
_VERSION_NAMES = {"v15": "v15", "v1.5": "v15", "1.5": "v15", "v1": "v1", "v1.0": "v1", "1.0": "v1"}


def normalize_version(version: str | float) -> str:
    """ "v15" or "v1" from any common spelling (v15, v1.5, 1.5, v1, v1.0, 1.0)."""
    key = str(version).strip().lower()
    if key not in _VERSION_NAMES:
        raise ValueError(f"unknown MuseTalk version {version!r}; expected v15 (1.5) or v1 (1.0)")
    return _VERSION_NAMES[key]


def released_layout(models_dir: str | os.PathLike[str], version: str = "v15") -> str:
    """Human-readable description of the released layout for `version`."""
    sub, weights = RELEASED_UNET[normalize_version(version)]
    root = Path(models_dir)
    return (
        f"MuseTalk's released layout (version={normalize_version(version)}):\n"
        f"  {root / sub / weights}\n"
        f"  {root / sub / 'musetalk.json'}\n"
        f"  {root / 'sd-vae'}/config.json + diffusion_pytorch_model.safetensors|.bin\n"
        f"  {root / 'whisper'}/config.json, preprocessor_config.json, "
        "model.safetensors|pytorch_model.bin"
    )


@dataclass(frozen=True)
class ModelFiles:
    """Resolved model sources. vae / whisper: a local directory or an HF id.

    layout: "released" or "export"; version: "v15" or "v1" (exports follow the v1.5 recipe).
    training: the export's `training.json` (empty when absent or for released weights).
    vae_revision / whisper_revision: the hub commit to load (an export's record), else None.
    """

    unet_weights: Path
    unet_config: Path
    vae: str
    whisper: str
    layout: str
    version: str
    training: dict[str, Any] = field(default_factory=dict)
    vae_revision: str | None = None
    whisper_revision: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for logs and the output's sidecar json)."""
        return {
            "layout": self.layout,
            "version": self.version,
            "unet_weights": str(self.unet_weights),
            "unet_config": str(self.unet_config),
            "vae": self.vae,
            "vae_revision": self.vae_revision,
            "whisper": self.whisper,
            "whisper_revision": self.whisper_revision,
            "training": self.training,
        }


def _require(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(f"missing weight file {path}\nexpected {layout}")
    return path


def _check_dir(check: Callable[[Path], None], source: str, layout: str) -> None:
    """A VAE / Whisper directory check, with the layout that was expected in the message."""
    try:
        check(Path(source).expanduser())
    except MissingWeightsError as exc:
        raise MissingWeightsError(f"{exc}\nexpected {layout}") from None


def released_files(
    models_dir: str | os.PathLike[str],
    version: str = "v15",
    vae: str | None = None,
    whisper: str | None = None,
) -> ModelFiles:
    """The files of MuseTalk's released layout under `models_dir`, checked to exist.

    vae / whisper: override `<models_dir>/sd-vae` / `<models_dir>/whisper` (dir or HF id).
    """
    version = normalize_version(version)
    root = Path(models_dir).expanduser()
    layout = released_layout(root, version)
    if not root.is_dir():
        raise MissingWeightsError(f"models directory not found: {root}\nexpected {layout}")
    sub, weights = RELEASED_UNET[version]
    unet_weights = _require(root / sub / weights, layout)
    unet_config = _require(root / sub / CONFIG_NAME, layout)
    vae_source = str(root / "sd-vae") if vae is None else str(vae)
    whisper_source = str(root / "whisper") if whisper is None else str(whisper)
    if vae is None or looks_local(vae_source):
        _check_dir(check_vae_dir, vae_source, layout)
    if whisper is None or looks_local(whisper_source):
        _check_dir(check_whisper_dir, whisper_source, layout)
    return ModelFiles(
        unet_weights, unet_config, vae_source, whisper_source, "released", version, {}
    )


def export_files(
    export_dir: str | os.PathLike[str],
    vae: str | None = None,
    whisper: str | None = None,
) -> ModelFiles:
    """The files of a training export (`unet.safetensors` preferred over `unet.pth`).

    vae / whisper: local dirs or HF ids overriding the ones training.json records
    (`models.provenance`: a hub id at its commit, a local directory, or networks saved in the
    export); exports that record none get sd-vae-ft-mse / whisper-tiny from the hub.
    """
    root = Path(export_dir).expanduser()
    layout = (
        "a training export:\n"
        f"  {root}/{WEIGHTS_SAFETENSORS} (or {WEIGHTS_PTH})\n"
        f"  {root}/{CONFIG_NAME}\n"
        f"  {root}/{TRAINING_INFO} (optional: audio_positional_encoding, shift_stats)"
    )
    if not root.is_dir():
        raise MissingWeightsError(f"export directory not found: {root}\nexpected {layout}")
    safetensors = root / WEIGHTS_SAFETENSORS
    unet_weights = _require(safetensors if safetensors.is_file() else root / WEIGHTS_PTH, layout)
    unet_config = _require(root / CONFIG_NAME, layout)
    training = read_training_info(root) or {}
    vae, vae_revision = (
        (str(vae), None)
        if vae is not None
        else resolve_frozen(training.get("vae"), root, "VAE", "infer_model.vae", DEFAULT_VAE)
    )
    whisper, whisper_revision = (
        (str(whisper), None)
        if whisper is not None
        else resolve_frozen(
            training.get("whisper"), root, "Whisper", "infer_model.whisper", DEFAULT_WHISPER
        )
    )
    for source, check in ((vae, check_vae_dir), (whisper, check_whisper_dir)):
        if looks_local(source):
            _check_dir(check, source, f"a local directory for {source}")
    return ModelFiles(
        unet_weights,
        unet_config,
        vae,
        whisper,
        "export",
        "v15",
        training,
        vae_revision=vae_revision,
        whisper_revision=whisper_revision,
    )
