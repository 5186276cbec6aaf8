"""The LightningModule: MuseTalk's single-step latent inpainting, trained in pixel space.

Per clip frame: the target crop with its lower half blacked out and a reference crop of the same
person are VAE-encoded (frozen) and concatenated on channels (masked first), the UNet predicts the
target latent at timestep 0 conditioned on the frame's Whisper tokens, and the frozen VAE decoder
(with gradients) turns the prediction into an image on which the losses are computed: L1 and
VGG19 perceptual (stage 1), plus patch GANs on the face and the mouth, feature matching and the
SyncNet loss (stage 2).

Optimisation is manual in every stage, so that stage 1 and stage 2 step the same way: one
backward per batch of (generator loss + discriminator losses), where the discriminators get no
gradient from the generator terms and the UNet none from the discriminator terms; gradients are
accumulated over `accumulate_grad_batches` batches (DDP gradient sync only on the last one), then
each optimizer (AdamW: the UNet's with linear warmup then `lr_schedule`, one per discriminator
with `discriminator_lr_schedule`) clips and steps.
`trainer.global_step` counts UNet updates only: the discriminators step their torch optimizers
directly, which Lightning does not count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from pydantic import ConfigDict, Field, validate_call
from torch import nn

from musetalk.audio.context import WINDOW_SAMPLES
from musetalk.audio.whisper import WhisperEncoder
from musetalk.audio.windows import add_positional_encoding
from musetalk.errors import ConfigError
from musetalk.losses import AdversarialLoss, SyncLoss
from musetalk.models import decode, encode, load_unet, mask_lower_half, unet_input
from musetalk.models.export import read_training_info
from musetalk.models.unet import read_weights
from musetalk.training.clips import context_audio_windows, finish_batch

__all__ = ["MuseTalkModule"]

Beta = Annotated[float, Field(ge=0, lt=1)]  # an Adam beta


class MuseTalkModule(L.LightningModule):
    """Trainable UNet with frozen VAE and Whisper encoder, and a dict of losses.

    unet: the UNet (random init); init_unet: weights loaded into it strictly before training
        (released v1.0 `pytorch_model.bin`, v1.5 `unet.pth`, our export's `unet.safetensors` /
        `unet.pth`, or a Lightning checkpoint of this module), None = keep the random init.
    vae, whisper: frozen (AutoencoderKL, `WhisperEncoder`).
    losses: name -> loss module (`musetalk.losses`); inactive ones (weight 0) and None are
        dropped. Images go through the losses as (B*F, 3, S, S) in [-1, 1].
    audio_positional_encoding: add the sinusoidal encoding to the audio tokens (inference must
        use the same value; the export records it). None = what `init_unet` was trained with:
        its export's training.json or checkpoint record, else True (MuseTalk's released weights
        are used with it at inference, and its maintainers call its absence in their training
        script a mistake; random init follows the same convention).
    gradient_checkpointing: diffusers' activation checkpointing in the UNet.
    lr, betas, weight_decay, eps, warmup_steps: the UNet's AdamW and its linear warmup (optimizer
        steps); lr_schedule after the warmup: "linear" decay to 0 at `total_steps` (MuseTalk's
        diffusers "linear"), "cosine" to 0, or "constant".
    discriminator_lr: AdamW lr of each discriminator (same betas, weight decay, eps);
        discriminator_lr_schedule: "cosine" annealing to `discriminator_min_lr` over
        `total_steps` (MuseTalk: CosineAnnealingLR to 1e-6) or "constant".
    total_steps: UNet optimizer steps the schedules span; None = the Trainer's max_steps.
    val_face: face backend that fits landmarks on validation crops for `val/lmd` (the mouth
        landmark distance, predicted vs ground truth, in inter-ocular distances); None = off.
        Only crops of at least `val_lmd_min_size` px are measured (landmark fits on smaller
        faces are noise).
    accumulate_grad_batches: batches per optimizer step. max_grad_norm: per-optimizer gradient
        norm clipping (None = off).
    """

    @validate_call(config=ConfigDict(arbitrary_types_allowed=True))
    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        whisper: WhisperEncoder,
        losses: Mapping[str, nn.Module | None],
        init_unet: str | None = None,
        audio_positional_encoding: bool | None = None,
        gradient_checkpointing: bool = False,
        lr: Annotated[float, Field(gt=0)] = 2e-5,
        betas: tuple[Beta, Beta] = (0.5, 0.999),
        weight_decay: Annotated[float, Field(ge=0)] = 1e-2,
        eps: Annotated[float, Field(gt=0)] = 1e-8,
        warmup_steps: Annotated[int, Field(ge=0)] = 1000,
        lr_schedule: Literal["linear", "cosine", "constant"] = "linear",
        discriminator_lr: Annotated[float, Field(gt=0)] = 5e-6,
        discriminator_lr_schedule: Literal["cosine", "constant"] = "cosine",
        discriminator_min_lr: Annotated[float, Field(ge=0)] = 1e-6,
        total_steps: Annotated[int, Field(ge=1)] | None = None,
        accumulate_grad_batches: Annotated[int, Field(ge=1)] = 1,
        max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0,
        val_face: str | None = "dlib",
        val_lmd_min_size: Annotated[int, Field(ge=32)] = 128,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if init_unet:  # the same architecture, with the file's weights (strict)
            unet = load_unet(init_unet, dict(unet.config))
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.unet = unet.train().requires_grad_(True)
        self.vae = vae.eval().requires_grad_(False)
        self.whisper = whisper  # not an nn.Module: its encoder is registered below
        self.audio_encoder = whisper.encoder.eval().requires_grad_(False)
        active = {name: loss for name, loss in losses.items() if loss is not None and loss.active}
        if not active:
            raise ValueError(f"no active loss among {sorted(losses)} (all weights are 0)")
        self.losses = nn.ModuleDict(active)
        if audio_positional_encoding is None:
            audio_positional_encoding = trained_with_positional_encoding(init_unet)
        self.audio_positional_encoding = bool(audio_positional_encoding)
        self.init_unet = init_unet
        self.optim = {
            "lr": float(lr),
            "betas": tuple(float(b) for b in betas),
            "weight_decay": float(weight_decay),
            "eps": float(eps),
        }
        self.warmup_steps = int(warmup_steps)
        self.lr_schedule = lr_schedule
        self.discriminator_lr = float(discriminator_lr)
        self.discriminator_lr_schedule = discriminator_lr_schedule
        self.discriminator_min_lr = float(discriminator_min_lr)
        self.total_steps = total_steps
        self.val_face = val_face
        self.val_lmd_min_size = int(val_lmd_min_size)
        self._val_analyzer: Any = None
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.max_grad_norm = max_grad_norm
        self._running: dict[str, float] = {}
        self._running_batches = 0
        self._batch_size = 1

    # ----------------------------------------------------------------------------- structure

    @property
    def adversarial(self) -> dict[str, AdversarialLoss]:
        return {k: v for k, v in self.losses.items() if isinstance(v, AdversarialLoss)}

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that never train (kept in eval mode, left out of checkpoints)."""
        return [self.vae, self.audio_encoder] + [
            m for m in self.losses.values() if not isinstance(m, AdversarialLoss)
        ]

    def train(self, mode: bool = True) -> MuseTalkModule:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def eval_mode_modules(self) -> list[str]:
        """Names of modules in eval mode that are not part of a frozen network: the ones that
        would silently skip dropout / batch-norm updates (Lightning's own check, which counts the
        frozen networks too, is silenced in `training.train.fit`)."""
        frozen = {id(m) for f in self.frozen_modules() for m in f.modules()}
        return [n for n, m in self.named_modules() if not m.training and id(m) not in frozen]

    def on_train_start(self) -> None:
        stray = self.eval_mode_modules()
        if stray:
            rank_zero_warn(
                f"{len(stray)} trainable module(s) in eval mode at the start of training "
                f"(e.g. {', '.join(stray[:3])}): call .train() on them"
            )

    def schedule_steps(self) -> int:
        """UNet optimizer steps the learning-rate schedules span."""
        total = self.total_steps or self.trainer.max_steps
        needs = self.lr_schedule != "constant" or self.discriminator_lr_schedule != "constant"
        if needs and (total is None or total <= 0):
            raise ConfigError(
                f"module.lr_schedule={self.lr_schedule} needs the length of training: "
                f"trainer.max_steps > 0 (or module.total_steps), got {total}"
            )
        return int(total)

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        total = self.schedule_steps()
        unet_opt = torch.optim.AdamW(self.unet.parameters(), **self.optim)
        factor = functools.partial(
            lr_factor, warmup=self.warmup_steps, total=total, schedule=self.lr_schedule
        )
        schedules: list[Any] = [torch.optim.lr_scheduler.LambdaLR(unet_opt, factor)]
        disc_opts = []
        for loss in self.adversarial.values():
            opt = torch.optim.AdamW(
                loss.discriminator.parameters(), **{**self.optim, "lr": self.discriminator_lr}
            )
            disc_opts.append(opt)
            if self.discriminator_lr_schedule == "cosine":
                schedules.append(
                    torch.optim.lr_scheduler.CosineAnnealingLR(
                        opt, T_max=total, eta_min=self.discriminator_min_lr
                    )
                )
        return [unet_opt, *disc_opts], schedules

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(
                f"precision={precision} needs a gradient scaler per optimizer, which this module "
                "does not use; train with bf16-mixed or 32-true"
            )

    # ----------------------------------------------------------------------------- forward

    def audio_tokens(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B * F, 10 L, d) UNet conditioning of a batch (cached windows, or Whisper on the
        batch's 30 s audio), with the positional encoding when configured."""
        batch = finish_batch(batch)
        if "audio" in batch:
            tokens = batch["audio"]
        elif "audio_wav" in batch:
            wav = batch["audio_wav"]
            rows = wav.reshape(-1, WINDOW_SAMPLES)  # one 30 s window per row
            states = self.whisper.hidden_states(rows)  # (B W, 1500, L, d)
            states = states.reshape(wav.shape[0], -1, *states.shape[2:])
            tokens = context_audio_windows(states, batch["audio_context"], batch["target"].shape[1])
        else:
            raise KeyError("the batch has neither 'audio' (cached windows) nor 'audio_wav'")
        tokens = tokens.flatten(0, 1).to(self.device, torch.float32)
        return add_positional_encoding(tokens) if self.audio_positional_encoding else tokens

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Predict the batch's targets: {"pred", "target", "reference", "masked"}, each
        (B * F, 3, S, S) in about [-1, 1] ("pred" carries gradients to the UNet). The batch is
        the loader's (uint8 images, finished here on its device) or already finished."""
        batch = finish_batch(batch)
        target = batch["target"].flatten(0, 1)
        reference = batch["reference"].flatten(0, 1)
        masked = mask_lower_half(target)
        with torch.no_grad():
            masked_latents = encode(self.vae, masked)  # (N, 4, S/8, S/8)
            reference_latents = encode(self.vae, reference)
        latents = self.unet(
            unet_input(masked_latents, reference_latents),
            0,
            encoder_hidden_states=self.audio_tokens(batch),
        ).sample
        pred = decode(self.vae, latents)
        return {"pred": pred, "target": target, "reference": reference, "masked": masked}

    def losses_of(
        self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted generator loss, discriminator loss, unweighted terms for logging)."""
        pred, target = out["pred"], out["target"]
        b, f = batch["target"].shape[:2]
        boxes = batch.get("mouth_box")
        boxes = boxes.flatten(0, 1) if boxes is not None else None
        terms: dict[str, torch.Tensor] = {}
        generator = pred.new_zeros((), dtype=torch.float32)
        discriminator = pred.new_zeros((), dtype=torch.float32)
        for name, loss in self.losses.items():
            if isinstance(loss, AdversarialLoss):
                on = loss.factor(self.global_step)  # adversarial terms start at start_step;
                gan, fm = loss.generator_terms(pred, target, boxes)  # feature matching at 0
                d_loss = loss.discriminator_loss(pred.detach(), target, boxes)
                generator = generator + on * loss.weight * gan + loss.feature_matching * fm
                discriminator = discriminator + on * d_loss
                terms |= {name: gan, f"{name}_fm": fm, f"{name}_d": d_loss}
            elif isinstance(loss, SyncLoss):
                if "mel" not in batch:
                    raise KeyError("the sync loss needs 'mel' in the batch (data.sync_mel=true)")
                clips = pred.unflatten(0, (b, f))
                terms[name] = loss(clips, batch["mel"].to(pred.device))
                generator = generator + loss.weight * terms[name]
            else:
                terms[name] = loss(pred, target)
                generator = generator + loss.weight * terms[name]
        return generator, discriminator, terms

    # ----------------------------------------------------------------------------- steps

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        step_now = (batch_idx + 1) % self.accumulate_grad_batches == 0 or self.trainer.is_last_batch
        out = self(batch)
        generator, discriminator, terms = self.losses_of(batch, out)
        total = generator + discriminator
        strategy = self.trainer.strategy
        no_sync = not step_now and isinstance(strategy, ParallelStrategy)
        with strategy.block_backward_sync() if no_sync else nullcontext():
            self.manual_backward(total / self.accumulate_grad_batches)
        self._accumulate({"loss": generator, **terms}, batch_size=batch["target"].shape[0])
        if step_now:
            unet_opt, *disc_opts = optimizers
            lr = unet_opt.param_groups[0]["lr"]  # the lr of this update
            for opt in disc_opts:  # torch optimizers directly: not counted in global_step
                self._clip(opt)
                opt.optimizer.step()
                opt.optimizer.zero_grad(set_to_none=True)
            self._clip(unet_opt)
            unet_opt.step()
            unet_opt.zero_grad(set_to_none=True)
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
            self._log_running(lr)
        return total.detach()

    def _clip(self, opt: Any) -> None:
        if self.max_grad_norm is not None:
            self.clip_gradients(
                opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm"
            )

    def _accumulate(self, values: Mapping[str, torch.Tensor], batch_size: int) -> None:
        for key, value in values.items():
            self._running[key] = self._running.get(key, 0.0) + float(value.detach())
        self._running_batches += 1
        self._batch_size = batch_size

    def _log_running(self, lr: float) -> None:
        """Log the means over the batches of this optimizer step at x = `global_step` (UNet
        updates done, as in the checkpoint names), every `trainer.log_every_n_steps` updates.

        Written to the loggers directly: Lightning's `self.log` would re-send these values on
        the batches between updates when gradients are accumulated."""
        n = max(1, self._running_batches)
        metrics = {f"train/{k}": v / n for k, v in self._running.items()}
        metrics["train/lr"] = lr
        self._running, self._running_batches = {}, 0
        self.log_dict(metrics, logger=False, batch_size=self._batch_size)  # callback_metrics
        self.log(
            "loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=self._batch_size
        )
        if self.global_step % self.trainer.log_every_n_steps == 0:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)

    def on_validation_epoch_start(self) -> None:
        self._val_sums: dict[str, float] = {}
        self._val_clips = 0

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Self-reconstruction of the held-out clips (target frames from a reference frame and
        their own audio): the image losses (L1, perceptual), `psnr_mouth` / `ssim_mouth` of the
        lower half, `lmd` (with `val_face`, on large enough crops) and `sync_conf` (the sync
        loss's SyncNet similarity, when that loss is on), summed for the epoch mean. Returns the
        images ({"masked", "reference", "pred", "target"}, the first 16 as (N, 3, S, S) on the
        CPU) for the image grid callback."""
        out = self(batch)
        n = batch["target"].shape[0]
        values: dict[str, float] = {}
        for name, loss in self.losses.items():
            if isinstance(loss, SyncLoss):
                clips = out["pred"].unflatten(0, batch["target"].shape[:2])
                values["sync_conf"] = float(loss.similarity(clips, batch["mel"]).mean())
            elif not isinstance(loss, AdversarialLoss):
                values[name] = float(loss(out["pred"], out["target"]))
        values |= mouth_scores(out["pred"], out["target"])
        if self.val_face is not None and out["pred"].shape[-1] >= self.val_lmd_min_size:
            score = self._lmd(out["pred"], out["target"])
            if score is not None:
                values["lmd"] = score
        for name, value in values.items():
            self._val_sums[name] = self._val_sums.get(name, 0.0) + value * n
        self._val_clips += n
        return {k: v[:16].detach().float().cpu() for k, v in out.items()}

    def _lmd(self, pred: torch.Tensor, target: torch.Tensor) -> float | None:
        """Mean mouth LMD of predicted vs target crops, landmarks fitted on both with the
        validation face backend in the whole crop; None when no crop gives a usable fit."""
        from musetalk.eval.metrics import inter_ocular, lmd
        from musetalk.face import build_analyzer

        if self._val_analyzer is None:
            self._val_analyzer = build_analyzer(self.val_face)
        size = pred.shape[-1]
        box = [np.array([0.0, 0.0, size, size])]
        fits = []
        for images in (pred, target):
            pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            frames = pixels.permute(0, 2, 3, 1).cpu().numpy()
            fits.append(np.stack([self._val_analyzer.landmarks(f, box)[0] for f in frames]))
        scale = inter_ocular(fits[1])
        ok = scale > 0
        return float(lmd(fits[0][ok], fits[1][ok], scale[ok]).mean()) if ok.any() else None

    def on_validation_epoch_end(self) -> None:
        """Clip-weighted means over all ranks, logged at x = `global_step` (directly to the
        loggers, like the training metrics) and into `callback_metrics`."""
        names = sorted(self._val_sums)
        totals = torch.tensor(
            [self._val_sums[k] for k in names] + [self._val_clips],
            dtype=torch.float64,
            device=self.device,
        )
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if not names or totals[-1] <= 0:
            return
        metrics = {f"val/{k}": float(totals[i] / totals[-1]) for i, k in enumerate(names)}
        # already reduced over the ranks above: sync_dist averages equal values (and tells
        # Lightning so, which otherwise warns on every validation under DDP)
        self.log_dict(metrics, logger=False, sync_dist=True)
        if not self.trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)

    # ----------------------------------------------------------------------------- checkpoints

    def _frozen_keys(self) -> set[str]:
        names = {id(p): n for n, p in self.named_parameters()}
        return {
            names[id(p)] for m in self.frozen_modules() for p in m.parameters() if id(p) in names
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen networks' weights out (they come from their own files)."""
        frozen = self._frozen_keys()
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in frozen}
        checkpoint["musetalk"] = {"audio_positional_encoding": self.audio_positional_encoding}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the frozen networks' current weights back, so that the strict load succeeds."""
        state = checkpoint["state_dict"]
        own = self.state_dict()
        for key in self._frozen_keys():
            state.setdefault(key, own[key])
        saved = checkpoint.get("musetalk", {}).get("audio_positional_encoding")
        if saved is not None and bool(saved) != self.audio_positional_encoding:
            raise ValueError(
                f"the checkpoint was trained with audio_positional_encoding={saved}, this run "
                f"has {self.audio_positional_encoding}: resume with the same value"
            )


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The UNet's lr factor at optimizer step `step`: linear warmup over `warmup` steps, then
    `schedule` ("linear" or "cosine" to 0 at `total`, or "constant")."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def trained_with_positional_encoding(init_unet: str | None) -> bool:
    """Whether the weights in `init_unet` were trained with the audio positional encoding: the
    record of our export (training.json next to it) or checkpoint, else True (see
    `MuseTalkModule`)."""
    if init_unet is None:
        return True
    path = Path(init_unet)
    info = read_training_info(path.parent) if path.parent.is_dir() else None
    if info is not None and "audio_positional_encoding" in info:
        return bool(info["audio_positional_encoding"])
    if path.suffix == ".ckpt":
        record = read_weights(path).get("musetalk", {})
        return bool(record.get("audio_positional_encoding", True))
    return True


def mouth_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of the lower halves of (N, 3, S, S) crops in [-1, 1]."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    half = pred.shape[-2] // 2
    p = (pred[..., half:, :].detach().float().clamp(-1, 1) + 1) / 2
    t = (target[..., half:, :].detach().float() + 1) / 2
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return {
        "psnr_mouth": float(psnr.clamp(max=100).mean()),
        "ssim_mouth": float(structural_similarity_index_measure(p, t, data_range=1.0)),
    }
