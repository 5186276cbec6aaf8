"""Training data: a LightningDataModule streaming clips from preprocess shards.

Each decoded shard sample (one face track, up to 250 frames) yields `clips_per_sample` clips of
F consecutive frames (F = 1 in stage 1, 16 in stage 2). Only the JPEG crops a clip needs
(targets and references) are decoded. Crops are re-derived from the stored context crops with
the region module (`musetalk.face.region`): the stored landmarks and detector box are mapped
into the context crop, the training box (or, with bbox_shift augmentation, the inference box) is
computed there and cropped with `region.crop`, the same code inference uses. The inpainting mask
is not applied here: the LightningModule applies `musetalk.models.masking.mask_lower_half`.

The batch contract (keys, shapes, meanings) is in `musetalk.training.clips`.

Loading: plain `webdataset` stages with `musetalk.data.reader.decode_sample` (no pickles; unknown
schema/region versions refused). Training draws shards with replacement (`ResampledShards`),
per (seed, rank, worker, epoch), through a clip shuffle buffer, and stops after exactly
`batches_per_epoch` batches per rank (split over the loader's workers), so every DDP rank runs
the same number of steps however uneven the shards are. The stream is resumable: the DataModule's
`state_dict` (saved by Lightning in checkpoints) holds the epoch and the batches already trained
on in it, and a restored DataModule rebuilds that epoch's stream and skips those batches.
Validation is one deterministic pass over `val_shards` (or the last `val_fraction` of the
shards) in the main process.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

import cv2
import lightning as L
import numpy as np
import torch
import webdataset as wds
from pydantic import ConfigDict, Field, validate_call
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from musetalk.data.reader import decode_sample, raw_samples, resolve_shards
from musetalk.errors import ConfigError, ShardError
from musetalk.training.bad_data import BadDataLog
from musetalk.training.clips import ClipOptions, collate, train_clips, val_clips
from musetalk.training.crops import MOUTH_PADDING

__all__ = ["AUDIO_MODES", "ShardClips", "TalkingFaceDataModule"]

AUDIO_MODES = ("auto", "cached", "wav")


class ShardClips(IterableDataset):
    """Batches (already collated) of clips streamed from shard URLs.

    num_batches: batches per epoch per rank (resampled shards, split over the loader's
    workers: worker w of W yields num_batches // W (+1 for w < num_batches % W)), or None for
    one deterministic pass over the shards (validation; partial last batch kept).
    rank: the DDP rank, mixed into the seeds so that ranks draw different shards and clips.
    epoch: the epoch of this copy's next pass; each pass draws from (seed, rank, worker, epoch)
    and advances it (DataLoader workers advance their own copies). skip: batches of the rank's
    epoch stream to leave out of the next pass (resume); the workers' round robin is rotated so
    the remaining batches come in the uninterrupted order.
    """

    def __init__(
        self,
        urls: Sequence[str],
        options: ClipOptions,
        batch_size: int,
        num_batches: int | None = None,
        shuffle_buffer: int = 0,
        rank: int = 0,
        seed: int = 0,
        bad: BadDataLog | None = None,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.bad = bad if bad is not None else BadDataLog(num_shards=len(self.urls), rank=rank)
        self.options = options
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a validation pass has no fixed length")
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            cv2.setNumThreads(1)
        if self.num_batches is None:
            return iter(self._validation_pass())
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        # Batch i of the epoch comes from stream i % W (the loader's round robin); after `skip`
        # batches, loader worker w plays stream (w + skip) % W, which has given `done` of them.
        rotation = skip % workers
        stream = (worker + rotation) % workers
        count = self.num_batches // workers + int(stream < self.num_batches % workers)
        done = min(count, skip // workers + int(stream < rotation))
        if count == done:
            return iter(())
        entropy = [self.seed, self.rank, stream, epoch]
        shard_seed, clip_seed, shuffle_seed = np.random.SeedSequence(entropy).generate_state(3)
        shards = wds.ResampledShards(
            self.urls, seed=int(shard_seed), worker_seed=_no_worker_seed, deterministic=True
        )
        stages = [
            *raw_samples(shards, handler=self.bad.shard_error),
            functools.partial(
                train_clips,
                options=self.options,
                rng=np.random.default_rng(clip_seed),
                bad=self.bad,
            ),
        ]
        if self.shuffle_buffer > 1:
            rng = random.Random(int(shuffle_seed))
            stages.append(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng))
        stages.append(wds.batched(self.batch_size, collation_fn=collate, partial=False))
        batches = iter(wds.DataPipeline(*stages).with_epoch(nbatches=count))
        return itertools.islice(batches, done, None)  # skipped batches are decoded (resume only)

    def _validation_pass(self) -> wds.DataPipeline:
        return wds.DataPipeline(
            *raw_samples(wds.SimpleShardList(self.urls), handler=self.bad.shard_error),
            functools.partial(val_clips, options=self.options, seed=self.seed, bad=self.bad),
            wds.batched(self.batch_size, collation_fn=collate, partial=True),
        )


def _no_worker_seed() -> int:
    return 0  # rank and worker are already in ShardClips' seed


class _EpochLoader(DataLoader):
    """A DataLoader over a ShardClips that knows its position: `epoch` of the current pass and
    `batches` of it yielded so far (skipped ones included). Each pass is the next epoch; the
    dataset's epoch and skip reach the workers when they start (persistent workers then advance
    their own copies; non-persistent ones get the main copy, advanced here)."""

    def __init__(self, dataset: ShardClips, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.epoch, self.batches = dataset.epoch, dataset.skip
        self._next = (dataset.epoch, dataset.skip)

    def __iter__(self) -> Any:
        self.epoch, self.batches = self._next
        self._next = (self.epoch + 1, 0)
        if self.num_workers > 0:
            # OpenCV's thread pool must not be running when the workers fork: a forked worker
            # that reconfigures it (cv2.setNumThreads in ShardClips) waits forever for threads
            # that exist only in this process (e.g. after a validation pass cropped here). One
            # OpenCV thread in the main process from now on; its OpenCV work is small.
            cv2.setNumThreads(1)
        iterator = super().__iter__()
        if self.num_workers > 0 and not self.persistent_workers:
            self.dataset.epoch, self.dataset.skip = self._next
        return self._counted(iterator)

    def _counted(self, iterator: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in iterator:
            self.batches += 1
            yield batch


class TalkingFaceDataModule(L.LightningDataModule):
    """Lightning DataModule over preprocess shards (batch contract in the module docstring).

    shards: a preprocess output dir, a brace pattern, a URL (fsspec dir URLs and ``pipe:``
        too) or a list of those.
    batch_size: clips per batch and rank; frames_per_sample: F (1 stage 1, 16 stage 2);
        crop_size: S.
    num_workers: DataLoader worker processes for training (validation runs in-process).
    shuffle_buffer: clips held for shuffling per worker (0/1 = off). Memory: a clip holds
        2 F S^2 3 bytes of images (0.4 MB at F 1, 6.3 MB at F 16 and S 256).
    batches_per_epoch: exactly this many batches per epoch on every rank (shards resampled).
    clips_per_sample: clips cut from each decoded sample (random t0 each).
    reference: "v15" or "random" (`musetalk.training.reference`); min_reference_gap: frames;
        reference_fraction: the v15 rule's 51%.
    bottom_margin: None, or {"mean", "std", "max"} in original-frame pixels: per clip margin
        ~ N(mean, std) clipped to [0, max] added below the box (stage 2: 10, 10, 20).
    shift_augment: probability (bool: 0/1) of cropping a clip with the inference box at a
        bbox_shift drawn from the sample's own per-frame equivalent_shift_norm values, times
        each frame's nose length, instead of the training box. Off by default.
    mouth_padding: px (at a 256 px crop) added left and right of the lips for the mouth
        discriminator's box (MuseTalk: 10). min_face_size: samples whose first frame's face
        (detector box joined with the landmark extent) is narrower than this many original
        pixels are left out (MuseTalk: 150 in stage 1, 200 in stage 2; 0 = off).
    sync_mel: add ``mel`` (stage 2 sync loss).
    audio_features: "cached" (shards' Whisper features -> ``audio``), "wav" (``audio_wav`` +
        ``audio_context``: the module encodes the audio context) or "auto" (cached when the
        first sample has them).
    val_shards: validation shards (same forms as `shards`); else val_fraction > 0 holds out the
        last ceil(val_fraction * n) training shards; else no validation.
    val_batch_size: defaults to batch_size. seed: base seed of all draws.
    on_bad_shard: "skip" (default: damaged shards and samples are skipped, recorded in
        `errors_dir` and counted at the end) or "raise" (the first one stops training, named);
        see `musetalk.training.bad_data`.

    Resume: `state_dict()` is {"epoch", "batches"}: the training epoch in progress and the
    batches of it already trained on (the Trainer's count while fitting, else the ones the last
    train loader yielded); Lightning stores it in checkpoints and calls `load_state_dict` before
    building the loaders, and `train_loader` then continues with the next unseen batch.
    """

    @validate_call(config=ConfigDict(arbitrary_types_allowed=True))
    def __init__(
        self,
        shards: str | Sequence[str],
        batch_size: Annotated[int, Field(ge=1)] = 32,
        frames_per_sample: Annotated[int, Field(ge=1)] = 1,
        crop_size: Annotated[int, Field(ge=8)] = 256,
        num_workers: Annotated[int, Field(ge=0)] = 4,
        shuffle_buffer: Annotated[int, Field(ge=0)] = 64,
        batches_per_epoch: Annotated[int, Field(ge=1)] = 1000,
        clips_per_sample: Annotated[int, Field(ge=1)] = 8,
        reference: Literal["v15", "random"] = "v15",
        min_reference_gap: Annotated[int, Field(ge=1)] = 5,
        reference_fraction: Annotated[float, Field(gt=0, le=1)] = 0.51,
        bottom_margin: Mapping[str, Annotated[float, Field(ge=0)]] | None = None,
        shift_augment: bool | Annotated[float, Field(ge=0, le=1)] = False,
        mouth_padding: Annotated[float, Field(ge=0)] = MOUTH_PADDING,
        min_face_size: Annotated[float, Field(ge=0)] = 0.0,
        sync_mel: bool = False,
        audio_features: Literal["auto", "cached", "wav"] = "auto",
        val_shards: str | Sequence[str] | None = None,
        val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        val_batch_size: Annotated[int, Field(ge=1)] | None = None,
        seed: int = 0,
        on_bad_shard: Literal["skip", "raise"] = "skip",
        errors_dir: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(shards, str) and not shards.strip() or not shards:
            raise ConfigError("data.shards: empty; give a preprocess output dir, pattern or list")
        self.shards = shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.batches_per_epoch = batches_per_epoch
        self.audio_features = audio_features
        self.val_shards = val_shards
        self.val_fraction = val_fraction
        self.val_batch_size = val_batch_size or batch_size
        self.seed = seed
        self.on_bad_shard = on_bad_shard
        self.errors_dir = errors_dir
        self.options = ClipOptions(
            frames=frames_per_sample,
            crop_size=crop_size,
            clips_per_sample=clips_per_sample,
            reference=reference,
            min_reference_gap=min_reference_gap,
            reference_fraction=reference_fraction,
            bottom_margin=_margin_tuple(bottom_margin),
            shift_augment=float(shift_augment),
            mouth_padding=mouth_padding,
            min_face_size=min_face_size,
            sync_mel=sync_mel,
        )
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] = []
        self._start = (0, 0)  # (epoch, batches done) where a new train loader starts
        self._loader: _EpochLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard lists and the audio mode (reads the first training sample)."""
        if self.train_urls is not None:
            return
        urls = resolve_shards(self.shards)
        if self.val_shards is not None:
            self.val_urls = resolve_shards(self.val_shards)
        elif self.val_fraction > 0:
            held = math.ceil(self.val_fraction * len(urls))
            if held >= len(urls):
                raise ValueError(
                    f"val_fraction {self.val_fraction} of {len(urls)} shards leaves none to train"
                )
            urls, self.val_urls = urls[:-held], urls[-held:]
        first = self._first_sample(urls)
        audio = self.audio_features
        if audio == "auto":
            audio = "cached" if "whisper.npy" in first else "wav"
        self.options = replace(self.options, audio=audio)
        self.train_urls = urls

    def bad_data_log(self, num_shards: int, rank: int = 0) -> BadDataLog:
        """How the streams treat damaged shards and samples (`on_bad_shard`, `errors_dir`)."""
        return BadDataLog(self.on_bad_shard, self.errors_dir, num_shards, rank)

    def _first_sample(self, urls: list[str]) -> dict[str, Any]:
        """The first readable raw sample of the shards (checked with decode_sample); damaged
        shards before it are skipped (recorded) or raised, as `on_bad_shard` says."""
        bad = self.bad_data_log(len(urls))
        for raw in wds.DataPipeline(*raw_samples(wds.SimpleShardList(urls), bad.shard_error)):
            try:
                decode_sample(raw, images=False)
            except ShardError as exc:
                bad.sample_error(exc, raw.get("__url__", "?"), raw["__key__"])
                continue
            return raw
        raise ShardError(
            f"none of the {len(urls)} shard(s) of data.shards holds a readable sample "
            f"(last problem: {bad.last})"
        )

    def teardown(self, stage: str) -> None:
        """Merge the records of skipped shards/samples and say how many there were."""
        summary = self.bad_data_log(0).summarise()
        trainer = self.trainer
        if summary is not None and (trainer is None or trainer.is_global_zero):
            print(
                f"training data: skipped {len(summary['shards_skipped'])} damaged shard(s) and "
                f"{summary['samples_skipped']} damaged sample(s); details in {self.errors_dir}"
            )

    def train_dataset(self, rank: int = 0) -> ShardClips:
        """The training stream of DDP rank `rank` (`batches_per_epoch` batches per epoch)."""
        self.setup()
        dataset = ShardClips(
            self.train_urls,
            self.options,
            self.batch_size,
            num_batches=self.batches_per_epoch,
            shuffle_buffer=self.shuffle_buffer,
            rank=rank,
            seed=self.seed,
            bad=self.bad_data_log(len(self.train_urls), rank),
        )
        dataset.epoch, dataset.skip = self._start
        return dataset

    def train_loader(self, rank: int = 0) -> DataLoader:
        """DataLoader of `train_dataset(rank)` with `num_workers` processes; len = batches."""
        workers = self.num_workers
        self._loader = _EpochLoader(
            self.train_dataset(rank),
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=2 if workers > 0 else None,
        )
        return self._loader

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return self.train_loader(rank)

    def state_dict(self) -> dict[str, int]:
        """{"epoch", "batches"}: where the training stream stands (see the class docstring)."""
        if self._loader is None:
            epoch, batches = self._start
        else:
            epoch, batches = self._loader.epoch, self._loader.batches
            trainer = self.trainer
            if trainer is not None and trainer.state.fn == "fit":
                # Lightning fetches ahead: count the batches it trained on, not the fetched ones.
                batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return _position(epoch, batches, self.batches_per_epoch)

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Continue the training stream from `state_dict` in the next `train_loader`."""
        state = _position(state_dict["epoch"], state_dict["batches"], self.batches_per_epoch)
        self._start = (state["epoch"], state["batches"])
        self._loader = None

    def val_dataloader(self) -> DataLoader | list:
        """One deterministic pass over the validation shards ([] when there are none)."""
        self.setup()
        if not self.val_urls:
            return []
        dataset = ShardClips(
            self.val_urls,
            self.options,
            self.val_batch_size,
            seed=self.seed,
            bad=self.bad_data_log(len(self.val_urls)),
        )
        return DataLoader(dataset, batch_size=None, num_workers=0)


def _position(epoch: int, batches: int, per_epoch: int) -> dict[str, int]:
    """{"epoch", "batches"} with a finished epoch rolled over to the next one."""
    epoch, batches = int(epoch), int(batches)
    if batches < 0 or epoch < 0:
        raise ValueError(f"bad training stream position: epoch {epoch}, batches {batches}")
    return {"epoch": epoch + batches // per_epoch, "batches": batches % per_epoch}


def _margin_tuple(margin: Mapping[str, float] | None) -> tuple[float, float, float] | None:
    if margin is None:
        return None
    keys = {"mean", "std", "max"}
    if not isinstance(margin, Mapping) or set(margin) != keys:
        raise ValueError(f"bottom_margin must be null or a mapping with keys {sorted(keys)}")
    return float(margin["mean"]), float(margin["std"]), float(margin["max"])
