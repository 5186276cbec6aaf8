"""Running a training job from built objects (the entry point `train.py` builds them from Hydra).

`prepare_run` seeds everything and writes the resolved config into the run dir (call it before
building the networks, so that random initialisations are seeded); `fit` runs the Lightning
Trainer and reports where the results are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from musetalk.training.callbacks import ExportUNet

__all__ = ["CONFIG_FILE", "TrainResult", "fit", "prepare_run"]

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run left its results.

    run_dir: the run directory; global_step: UNet optimizer steps done; last_checkpoint: the
    last Lightning checkpoint (None without a ModelCheckpoint); export_dir: the released-format
    UNet export (None without an ExportUNet callback); metrics: the last logged values.
    """

    run_dir: Path
    global_step: int
    last_checkpoint: Path | None
    export_dir: Path | None
    metrics: dict[str, float]


def prepare_run(config: Mapping[str, Any], run_dir: str | Path, seed: int) -> Path:
    """Seed python, numpy and torch (and dataloader workers) with `seed`, create `run_dir` and
    write the resolved `config` to `run_dir/config.json` (on global rank 0)."""
    L.seed_everything(seed, workers=True, verbose=False)
    run_dir = Path(run_dir)
    _write_config(config, run_dir)
    return run_dir


@rank_zero_only
def _write_config(config: Mapping[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(run_dir / CONFIG_FILE)


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None = None,
) -> TrainResult:
    """`trainer.fit`, resuming exactly from `ckpt_path` (a Lightning checkpoint: weights,
    optimizer and scheduler states, step and epoch) when given."""
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: checkpoint not found: {ckpt_path}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    last = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    export = next((c for c in trainer.callbacks if isinstance(c, ExportUNet)), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return TrainResult(
        run_dir=Path(trainer.default_root_dir),
        global_step=trainer.global_step,
        last_checkpoint=Path(last.last_model_path) if last and last.last_model_path else None,
        export_dir=export.dirpath if export is not None else None,
        metrics=metrics,
    )
