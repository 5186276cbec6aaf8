"""Training callbacks: UNet export in the released format, validation image grids, throughput,
and a per-rank log of the samples each batch came from."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from musetalk.data.output import STATS
from musetalk.data.summary import load_stats
from musetalk.models.export import export_unet, write_training_info
from musetalk.models.provenance import frozen_record

__all__ = ["ExportUNet", "ImageGrid", "SampleLog", "Throughput", "image_grid", "progress_bar"]


class ExportUNet(L.Callback):
    """Write the UNet in MuseTalk's released format when training ends (and, with
    `every_checkpoint`, whenever a checkpoint is saved): `unet.pth`, `unet.safetensors`,
    `musetalk.json` (loadable with `UNet2DConditionModel(**json)`) and `training.json`
    (audio_positional_encoding, step, the VAE and Whisper used as `models.provenance` records,
    random-init ones saved beside the UNet, and the training data's
    `shift_stats` for `bbox_shift=auto`). shift_stats: a preprocess output or its stats.json,
    read now with `musetalk.data.summary.load_stats` (an unusable one stops training before it
    starts); a location without a stats.json (e.g. copied tars) gives an export without
    statistics, said in a printed warning and in training.json's `shift_stats_note`.
    """

    def __init__(
        self, dirpath: str, every_checkpoint: bool = False, shift_stats: str | None = None
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_checkpoint = every_checkpoint
        self.shift_stats: dict[str, Any] | None = None
        self._frozen: dict[str, Any] | None = None
        self.shift_stats_note: str | None = None
        path = Path(str(shift_stats)) if shift_stats is not None else None
        if path is not None and (path.is_file() or (path / STATS).is_file()):
            self.shift_stats = load_stats(path)
        elif path is not None:
            self.shift_stats_note = (
                f"{shift_stats} holds no stats.json (not a preprocess output): the export has no "
                "shift_stats, so bbox_shift=auto with it needs auto_stats=<stats.json>"
            )
            rank_zero_warn(self.shift_stats_note)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        out = export_unet(pl_module.unet, self.dirpath)
        info: dict[str, Any] = {
            "audio_positional_encoding": pl_module.audio_positional_encoding,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "init_unet": pl_module.init_unet,
            **self.frozen_records(pl_module, out),
        }
        if self.shift_stats is not None:
            info["shift_stats"] = self.shift_stats
        elif self.shift_stats_note is not None:
            info["shift_stats_note"] = self.shift_stats_note
        write_training_info(out, info)
        return out

    def frozen_records(self, pl_module: L.LightningModule, out: Path) -> dict[str, Any]:
        """training.json's `vae` and `whisper` records (`models.provenance`), made once: the
        frozen networks do not change during training; random-init ones are saved into the
        export so that it is self-sufficient."""
        if self._frozen is None:
            vae, whisper = pl_module.vae, pl_module.whisper
            self._frozen = {
                "vae": frozen_record(
                    vae.config.get("_name_or_path"), out, "vae", vae.save_pretrained
                ),
                "whisper": frozen_record(
                    getattr(whisper, "source", ""), out, "whisper", whisper.save_pretrained
                ),
            }
        return self._frozen

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.export(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.every_checkpoint and trainer.is_global_zero:
            self.export(trainer, pl_module)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 RGB."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(
    columns: list[torch.Tensor], pad: int = 2, labels: list[str] | None = None
) -> np.ndarray:
    """(header + rows * H + pads, cols * W + pads, 3) uint8 RGB grid: column c shows
    `columns[c]` ((N, 3, H, W) in [-1, 1]), one row per image, white padding; with `labels`, a
    header row names the columns."""
    cols = [_to_uint8(c) for c in columns]
    n, h, w, _ = cols[0].shape
    top = 18 if labels else 0
    grid = np.full((top + n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
    for c, images in enumerate(cols):
        x = pad + c * (w + pad)
        if labels:
            scale = min(0.45, 0.9 * w / (9 * max(1, len(labels[c]))))
            cv2.putText(grid, labels[c], (x + 2, 13), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
        for r in range(n):
            y = top + pad + r * (h + pad)
            grid[y : y + h, x : x + w] = images[r]
    return grid


class ImageGrid(L.Callback):
    """After each validation, a PNG grid of the first validation batch: columns masked input,
    reference, prediction, ground truth; written to `dirpath/val_step{N}.png` and sent to loggers
    that take images (W&B `log_image`, TensorBoard `add_image`)."""

    COLUMNS = ("masked", "reference", "pred", "target")
    LABELS = ["masked input", "reference", "prediction", "ground truth"]

    def __init__(self, dirpath: str, max_images: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.max_images = max_images
        self.last_path: Path | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        if not trainer.is_global_zero or not isinstance(outputs, Mapping):
            return
        grid = image_grid([outputs[k][: self.max_images] for k in self.COLUMNS], labels=self.LABELS)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"val_step{trainer.global_step:07d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        self.last_path = path
        caption = " | ".join(self.COLUMNS)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image("val/images", [grid], step=trainer.global_step, caption=[caption])
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image(
                    "val/images", grid, trainer.global_step, dataformats="HWC"
                )


def progress_bar(enabled: bool = True) -> L.Callback:
    """Lightning's progress bar (Rich when installed, else tqdm), with the epoch shown as
    "Epoch N" when the run is bounded by steps: Lightning shows `max_epochs - 1`, which reads
    "Epoch 1/-2" for our step-bounded runs (max_epochs=-1). When not `enabled` (the trainer's
    enable_progress_bar=false), a callback that does nothing: Lightning refuses a progress bar
    beside enable_progress_bar=false."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if not enabled:
        return L.Callback()
    if not _RICH_AVAILABLE:
        return TQDMProgressBar()  # shows "Epoch N" already

    class StepBoundedRichProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            description = super()._get_train_description(current_epoch)
            if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
                description = description.replace(f"/{self.trainer.max_epochs - 1}", "", 1)
            return description

    return StepBoundedRichProgressBar()


class Throughput(L.Callback):
    """Log training throughput over all ranks: `throughput/samples_per_s` (clips) and
    `throughput/frames_per_s` (clips x frames), from the wall time between batch ends (data
    loading included) over the last `window` batches; at x = `global_step`, every
    `trainer.log_every_n_steps` UNet updates, like the module's training metrics."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._times: list[float] = []
        self._sizes: list[tuple[int, int]] = []
        self._step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._times, self._sizes = [time.perf_counter()], []

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        b, f = batch["target"].shape[:2]
        self._times.append(time.perf_counter())
        self._sizes.append((b * trainer.world_size, b * f * trainer.world_size))
        self._times, self._sizes = self._times[-self.window - 1 :], self._sizes[-self.window :]
        seconds = self._times[-1] - self._times[0]
        if trainer.global_step == self._step or seconds <= 0:
            return  # no update in this batch (gradient accumulation)
        self._step = trainer.global_step
        if trainer.global_step % trainer.log_every_n_steps:
            return
        values = {
            "throughput/samples_per_s": sum(s for s, _ in self._sizes) / seconds,
            "throughput/frames_per_s": sum(f for _, f in self._sizes) / seconds,
        }
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)


class SampleLog(L.Callback):
    """Append, per training batch, `global_step <tab> batch_idx <tab> key:first_frame,...` to
    `dirpath/rank{R}.tsv`: which clips each DDP rank trained on (to check data sharding). With
    `weights_checksum`, a fourth column holds the float64 sum of the UNet's parameters after the
    batch (equal on all ranks when gradients are synchronised; costs a pass over the weights)."""

    def __init__(self, dirpath: str, weights_checksum: bool = False) -> None:
        self.dirpath = Path(dirpath)
        self.weights_checksum = weights_checksum

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        first = batch["target_index"][:, 0].tolist()
        fields = [
            str(trainer.global_step),
            str(batch_idx),
            ",".join(f"{k}:{t}" for k, t in zip(batch["key"], first, strict=True)),
        ]
        if self.weights_checksum:
            with torch.no_grad():
                total = sum(p.double().sum() for p in pl_module.unet.parameters())
            fields.append(repr(float(total)))
        with open(self.dirpath / f"rank{trainer.global_rank}.tsv", "a") as f:
            f.write("\t".join(fields) + "\n")
