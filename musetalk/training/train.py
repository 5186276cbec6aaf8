"""Running a training job from built objects (the entry point `train.py` builds them from Hydra).

`seed_run` seeds everything (call it before building the networks, so that random
initialisations are seeded); `check_checkpoint` refuses a checkpoint that cannot be resumed from
before anything is built; `write_config` records the resolved config of each launch in the run
dir (a resumed run adds `config.1.json`, ... beside the first launch's `config.json`); `fit` runs
the Lightning Trainer and reports where the results are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from musetalk.errors import CheckpointError, ConfigError, UnsafeFileError
from musetalk.training.callbacks import ExportUNet

__all__ = [
    "CONFIG_FILE",
    "TrainResult",
    "check_checkpoint",
    "fit",
    "seed_run",
    "write_config",
]

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

    def metric(self, name: str | None) -> float | None:
        """The last logged value of `name` (e.g. "val/lmd"); None for no name; ConfigError when
        the run never logged it."""
        if name is None:
            return None
        if name not in self.metrics:
            raise ConfigError(
                f"optimized_metric={name!r} was not logged by this run (logged: "
                f"{', '.join(sorted(self.metrics))}); validation metrics need validation shards"
            )
        return self.metrics[name]


def seed_run(seed: int) -> None:
    """Seed python, numpy and torch (and dataloader workers) with `seed`."""
    L.seed_everything(seed, workers=True, verbose=False)


@rank_zero_only
def write_config(config: Mapping[str, Any], run_dir: str | Path) -> Path:
    """Write the resolved `config` into `run_dir` (on global rank 0): `config.json` for the
    first launch, `config.1.json`, `config.2.json`, ... for later ones (resumes); nothing
    earlier is overwritten."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path, n = run_dir / CONFIG_FILE, 0
    while path.exists():
        n += 1
        path = run_dir / f"config.{n}.json"
    tmp = run_dir / f".{path.name}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def check_checkpoint(ckpt_path: str | None) -> None:
    """Refuse, before anything is built, a checkpoint to resume from that is missing, empty,
    truncated or not a torch checkpoint (CheckpointError naming the file)."""
    if ckpt_path is None:
        return
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"ckpt_path={ckpt_path}: empty file (0 bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: not a readable torch checkpoint (truncated or another "
            f"format: {exc}); use <run dir>/checkpoints/last.ckpt of an earlier run"
        ) from None
    if not any(n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"ckpt_path={ckpt_path}: a zip file, but not a torch checkpoint")


#: Lightning notices known to be harmless here, each with the reason (messages are regexes
#: matched at their start, as `warnings.filterwarnings` does).
HARMLESS_WARNINGS = {
    # The frozen VAE, Whisper and loss networks are in eval mode on purpose
    # (MuseTalkModule.train keeps them there); MuseTalkModule.on_train_start checks the rest.
    r"Found \d+ module\(s\) in eval mode at the start of training": "frozen networks",
    # ShardClips.__len__ is exact with any number of loader workers: each worker yields its own
    # share of `batches_per_epoch` (see ShardClips), which is what Lightning cannot know.
    r"Your `IterableDataset` has `__len__` defined": "exact per-worker split",
    # Manual optimization (the GAN stage): a checkpoint at step N holds the weights after
    # update N, which is what resuming from step N needs.
    r"Using ModelCheckpoint with manual optimization": "checkpoint after the update",
    # Lightning looks for state_dict on the DataLoader; ours lives on the DataModule, which
    # restores the epoch's stream and skips the batches already trained on (exact resume).
    r"You're resuming from a checkpoint that ended before the epoch ended": "DataModule state",
    # Raised inside Lightning's own pytree helper by the torch version we pin; not our code.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated": "Lightning internals",
}


class _NoAdverts(logging.Filter):
    """Drop Lightning's "Tip: try installing ..." adverts for other products (printed when a
    Trainer is built, so installed for good when this module is imported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


@contextlib.contextmanager
def known_notices_silenced() -> Iterator[None]:
    """Silence `HARMLESS_WARNINGS` for the duration of a fit."""
    with warnings.catch_warnings():
        for pattern in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


#: What torch.distributed's backends say when another rank's process or machine is gone (gloo:
#: the connection to it reset or closed; any backend: a collective timed out, see the
#: strategy's `timeout` in conf/trainer/ddp.yaml).
LOST_PEER = re.compile(r"Connection (reset|closed) by peer|timed out|timeout|NCCL.*abort", re.I)


def lost_peer(exc: BaseException) -> bool:
    """Whether an error raised by a distributed fit means that another rank is gone."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and bool(LOST_PEER.search(str(exc)))


def lost_peer_notice(trainer: L.Trainer) -> str:
    """The line a surviving rank prints before it stops (its traceback follows)."""
    last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    return (
        f"train: rank {trainer.global_rank} stops at step {trainer.global_step}: another rank of "
        "this distributed job is gone (its process or node died, or it hung past the strategy's "
        f"timeout). Restart the job on every node with ckpt_path={last}"
    )


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None = None,
) -> TrainResult:
    """`trainer.fit`, resuming exactly from `ckpt_path` (a Lightning checkpoint: weights,
    optimizer and scheduler states, step and epoch) when given."""
    check_checkpoint(ckpt_path)
    try:
        with known_notices_silenced():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except RuntimeError as exc:
        if lost_peer(exc):
            print(lost_peer_notice(trainer), file=sys.stderr, flush=True)
        raise
    except pickle.UnpicklingError:
        raise UnsafeFileError(
            f"ckpt_path={ckpt_path}: refused: reading it would need unpickling arbitrary Python "
            "objects; only checkpoints of tensors and plain values are resumed from"
        ) from None
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
