"""Training data: a LightningDataModule streaming clips from preprocess shards.

Each decoded shard sample (one face track, up to 250 frames) yields `clips_per_sample` clips of
F consecutive frames (F = 1 in stage 1, 16 in stage 2). Only the JPEG crops a clip needs
(targets and references) are decoded. Crops are re-derived from the stored context crops with
the region module (`musetalk.face.region`): the stored landmarks and detector box are mapped
into the context crop, the training box (or, with bbox_shift augmentation, the inference box) is
computed there and cropped with `region.crop`, the same code inference uses. The inpainting mask
is not applied here: the LightningModule applies `musetalk.models.masking.mask_lower_half`.

Batch contract (B = batch size, F = frames_per_sample, S = crop_size):

====================  ======================  ===================================================
key                   shape, dtype            meaning
====================  ======================  ===================================================
``key``               list[str] (B)           sample keys
``target``            (B, F, 3, S, S) f32     training crops of frames t0 .. t0 + F - 1, in [-1, 1]
``reference``         (B, F, 3, S, S) f32     one reference crop per target frame, same sample,
                                              >= min_reference_gap frames away, in [-1, 1]
``target_index``      (B, F) int64            frame indices of the targets within the sample
``reference_index``   (B, F) int64            frame indices of the references within the sample
``mouth_box``         (B, F, 4) f32           lips 48-67 extent grown by mouth_margin, (x1, y1,
                                              x2, y2) in S x S crop pixels (for the mouth
                                              discriminator), clipped to [0, S]
``bottom_margin``     (B,) f32                bottom-margin augmentation of the clip, pixels of
                                              the original frame (0 when off)
``shift_norm``        (B,) f32                bbox_shift augmentation of the clip in nose lengths
                                              (NaN: the training box was used)
``audio``             (B, F, 10 L, d) f32     cached-features mode: Whisper windows of the target
                                              frames, `audio_windows(features, F, start_frame=t0)`
                                              (L = 5, d = 384 for whisper-tiny)
``audio_wav``         (B, 480000) f32         wav mode: the sample's 16 kHz audio, zero padded to
                                              30 s (sample frame 0 at sample 0)
``audio_samples``     (B,) int64              wav mode: the sample's own audio length (samples)
``frame_index``       (B, F) int64            wav mode: = target_index, for the windows
``mel``               (B, 80, ceil(3.2 F)) f32  sync_mel only: log-mel of the clip's audio in
                                              [-4, 4] (52 frames for F = 16), see `log_mel`
====================  ======================  ===================================================

Audio: with cached features (`audio_features="cached"`, or "auto" on shards preprocessed with
`audio.features=whisper`) the windows are computed here. Otherwise (`"wav"`) the module encodes
``audio_wav`` on its device and calls `wav_audio_windows(features, audio_samples, frame_index)`,
which cuts the features to the sample's own length and windows them with the same
`audio_windows`, so both paths give the same tokens.

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
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import cv2
import lightning as L
import numpy as np
import torch
import webdataset as wds
from pydantic import ConfigDict, Field, validate_call
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from musetalk.audio.windows import audio_windows, num_steps_for
from musetalk.data.reader import decode_image, decode_sample, raw_samples, resolve_shards
from musetalk.data.schema import FPS, SAMPLE_RATE, frame_member
from musetalk.errors import ConfigError, ShardError
from musetalk.face import region as R
from musetalk.training.bad_data import BadDataLog
from musetalk.training.reference import REFERENCE_RULES, select_references

__all__ = [
    "AUDIO_MODES",
    "WAV_SAMPLES",
    "ClipOptions",
    "ShardClips",
    "TalkingFaceDataModule",
    "collate",
    "context_box",
    "log_mel",
    "make_clips",
    "mel_window",
    "wav_audio_windows",
]

AUDIO_MODES = ("auto", "cached", "wav")
WAV_SAMPLES = 30 * SAMPLE_RATE  # audio_wav length: one 30 s Whisper window
IMAGE_FIELDS = ("target", "reference")
MAX_SKIPPED = 1000  # consecutive unusable samples before a training stream gives up

# Log-mel for the SyncNet loss: Wav2Lip / LatentSync audio hparams (configs/audio.yaml there).
MEL_BINS = 80
MEL_N_FFT = 800
MEL_HOP = 200  # 12.5 ms: 80 mel frames per second, 3.2 per video frame
MEL_WIN = 800
MEL_FMIN = 55.0
MEL_FMAX = 7600.0
MEL_PREEMPHASIS = 0.97
MEL_MIN_LEVEL_DB = -100.0
MEL_REF_LEVEL_DB = 20.0
MEL_MAX_ABS = 4.0
MEL_PER_FRAME = SAMPLE_RATE / MEL_HOP / FPS  # 3.2


# --------------------------------------------------------------------------- audio


@functools.cache
def _mel_basis() -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=MEL_N_FFT // 2 + 1,
        num_mel_filters=MEL_BINS,
        min_frequency=MEL_FMIN,
        max_frequency=MEL_FMAX,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )  # (401, 80), librosa.filters.mel's defaults
    return torch.from_numpy(bank.T.astype(np.float32))


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, N // 200 + 1) float32 log-mel in [-4, 4] of (N,) 16 kHz audio (SyncNet input).

    Wav2Lip/LatentSync `melspectrogram`: pre-emphasis 0.97, |STFT| (n_fft 800, hann window 800,
    hop 200, centred with zero padding), Slaney mel filters 55-7600 Hz, 20 log10(max(1e-5, x))
    - 20 dB, then (db + 100) / 100 mapped to [-4, 4] and clipped. Mel frame k is centred on
    sample 200 k, i.e. 80 frames per second.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected (N,) mono audio, got shape {x.shape}")
    x = np.concatenate([x[:1], x[1:] - MEL_PREEMPHASIS * x[:-1]])
    spec = torch.stft(
        torch.from_numpy(x),
        n_fft=MEL_N_FFT,
        hop_length=MEL_HOP,
        win_length=MEL_WIN,
        window=torch.hann_window(MEL_WIN),
        center=True,
        pad_mode="constant",
        return_complex=True,
    ).abs()
    mel = _mel_basis() @ spec
    min_level = 10.0 ** (MEL_MIN_LEVEL_DB / 20.0)
    db = 20.0 * torch.log10(mel.clamp_min(min_level)) - MEL_REF_LEVEL_DB
    scaled = 2 * MEL_MAX_ABS * (db - MEL_MIN_LEVEL_DB) / -MEL_MIN_LEVEL_DB - MEL_MAX_ABS
    return scaled.clamp(-MEL_MAX_ABS, MEL_MAX_ABS).numpy()


def mel_window(mel: np.ndarray, start_frame: int, num_frames: int) -> np.ndarray:
    """(80, ceil(3.2 num_frames)) mel frames of video frames [start_frame, +num_frames).

    Starts at mel frame int(3.2 start_frame) (LatentSync's `crop_audio_window`); frames past the
    end of `mel` are filled with the floor value -4.
    """
    length = math.ceil(num_frames * MEL_PER_FRAME - 1e-9)
    start = int(start_frame * MEL_PER_FRAME + 1e-9)
    out = np.full((mel.shape[0], length), -MEL_MAX_ABS, dtype=np.float32)
    part = mel[:, start : start + length]
    out[:, : part.shape[1]] = part
    return out


def wav_audio_windows(
    features: torch.Tensor, audio_samples: torch.Tensor, frame_index: torch.Tensor
) -> torch.Tensor:
    """(B, F, 10 L, d) audio tokens from Whisper features of a wav-mode batch.

    features: (B, T50, L, d) encoder states of ``batch["audio_wav"]`` (T50 >= the sample's
    steps, e.g. 1500 for the padded 30 s); audio_samples: (B,) ``batch["audio_samples"]``;
    frame_index: (B, F) consecutive ``batch["frame_index"]``. Each sample's features are cut
    to its own `num_steps_for(audio_samples)` steps (the cached features' length), then windowed
    with `audio_windows`, so frames near the end see the same zero padding as cached features.
    """
    out = []
    for b in range(features.shape[0]):
        steps = num_steps_for(int(audio_samples[b]))
        frames = frame_index[b]
        out.append(audio_windows(features[b, :steps], len(frames), start_frame=int(frames[0])))
    return torch.stack(out)


# --------------------------------------------------------------------------- crops


def context_box(
    landmarks: object,
    det_box: object,
    crop_rect: Sequence[int],
    crop_size: Sequence[int],
    bottom_margin: float = 0.0,
    shift_norm: float | None = None,
) -> np.ndarray:
    """(4,) face box (x1, y1, x2, y2) in pixels of the stored context crop of one frame.

    landmarks (68, 2) and det_box are in original-frame pixels (the sample json); crop_rect /
    crop_size are the frame's stored crop rectangle and (width, height). Both are mapped into
    the crop, then: the training box with `bottom_margin` (original-frame pixels, converted to
    crop pixels) added to y2; or, with `shift_norm` (nose lengths), the inference box with
    bbox_shift = shift_norm * nose length and extra_margin = the bottom margin (falling back
    to the training box when the region module returns no box).
    """
    lms = R.points_to_crop(R.as_landmarks(landmarks), crop_rect, crop_size)
    det = R.box_to_crop(det_box, crop_rect, crop_size)
    margin = float(bottom_margin) * crop_size[1] / (crop_rect[3] - crop_rect[1])
    if shift_norm is not None and np.isfinite(shift_norm):
        box = R.inference_box(
            lms,
            bbox_shift=float(shift_norm) * R.nose_length(lms),
            extra_margin=margin,
            frame_size=(int(crop_size[1]), int(crop_size[0])),
            det_box=det,
        )
        if box is not None:
            return box
    box = R.training_box(det, lms)
    box[3] += margin
    return box


def _mouth_box(
    landmarks: np.ndarray,
    crop_rect: Sequence[int],
    crop_size: Sequence[int],
    box: np.ndarray,
    margin: float,
    size: int,
) -> np.ndarray:
    """(4,) lips box grown by `margin` of its size per side, in S x S crop pixels."""
    lips = R.points_to_crop(landmarks[48:68], crop_rect, crop_size)
    (lx1, ly1), (lx2, ly2) = lips.min(axis=0), lips.max(axis=0)
    grow_x, grow_y = margin * (lx2 - lx1), margin * (ly2 - ly1)
    x1, y1, x2, y2 = R.pixel_rect(box, (int(crop_size[1]), int(crop_size[0])))
    sx, sy = size / (x2 - x1), size / (y2 - y1)
    out = np.array(
        [(lx1 - grow_x - x1) * sx, (ly1 - grow_y - y1) * sy, (lx2 + grow_x - x1) * sx,
         (ly2 + grow_y - y1) * sy],
        dtype=np.float32,
    )  # fmt: skip
    return np.clip(out, 0, size)


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class ClipOptions:
    """How one shard sample becomes training clips (see `TalkingFaceDataModule` for meanings).

    bottom_margin: (mean, std, max) of the per-clip margin in original-frame pixels, drawn from
    N(mean, std) clipped to [0, max]; None = off. audio: "cached" or "wav".
    """

    frames: int = 1
    crop_size: int = 256
    clips_per_sample: int = 8
    reference: str = "v15"
    min_reference_gap: int = 5
    reference_fraction: float = 0.51
    bottom_margin: tuple[float, float, float] | None = None
    shift_augment: float = 0.0
    mouth_margin: float = 0.1
    sync_mel: bool = False
    audio: str = "cached"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.crop_size < 8 or self.clips_per_sample < 1:
            raise ValueError(
                "need frames_per_sample >= 1, crop_size >= 8, clips_per_sample >= 1, got "
                f"{self.frames}, {self.crop_size}, {self.clips_per_sample}"
            )
        if self.reference not in REFERENCE_RULES:
            raise ValueError(f"reference must be one of {REFERENCE_RULES}, got {self.reference!r}")
        if self.min_reference_gap < 1:
            raise ValueError(f"min_reference_gap must be >= 1, got {self.min_reference_gap}")
        if not 0 < self.reference_fraction <= 1:
            raise ValueError(f"reference_fraction must be in (0, 1], got {self.reference_fraction}")
        if self.bottom_margin is not None and min(self.bottom_margin) < 0:
            raise ValueError(f"bottom_margin mean/std/max must be >= 0, got {self.bottom_margin}")
        if not 0 <= self.shift_augment <= 1:
            raise ValueError(f"shift_augment must be in [0, 1], got {self.shift_augment}")
        if self.mouth_margin < 0:
            raise ValueError(f"mouth_margin must be >= 0, got {self.mouth_margin}")
        if self.audio not in ("cached", "wav"):
            raise ValueError(f"audio must be 'cached' or 'wav', got {self.audio!r}")

    @property
    def min_frames(self) -> int:
        """Shortest usable sample: F frames, and a reference >= gap away from every frame."""
        return max(self.frames, 2 * self.min_reference_gap + 1)


def _draw_margin(options: ClipOptions, rng: np.random.Generator) -> float:
    if options.bottom_margin is None:
        return 0.0
    mean, std, top = options.bottom_margin
    return float(np.clip(rng.normal(mean, std), 0.0, top))


def _draw_shift(options: ClipOptions, rng: np.random.Generator, norms: np.ndarray) -> float:
    if options.shift_augment <= 0 or norms.size == 0 or rng.random() >= options.shift_augment:
        return math.nan
    return float(norms[rng.integers(norms.size)])


def make_clips(
    raw: dict[str, Any], rng: np.random.Generator, options: ClipOptions
) -> list[dict[str, Any]]:
    """The clips of one raw webdataset sample (member suffix -> bytes), as numpy items.

    Refuses unknown schema/region versions (ShardError). Returns [] for samples shorter
    than `options.min_frames`. Item fields are those of the batch contract, with images as
    (F, S, S, 3) uint8 and ``audio_wav`` unpadded (`collate` converts and pads).
    """
    sample = decode_sample(raw, images=False)
    meta = sample.meta
    num = int(meta["num_frames"])
    if num < options.min_frames:
        return []
    where = f"{sample.url}:{sample.key}"
    lms = np.asarray(meta["landmarks"], dtype=np.float64)
    det = np.asarray(meta["det_box"], dtype=np.float64)
    rects = np.asarray(meta["crop_rect"], dtype=np.int64)
    sizes = np.asarray(meta["crop_size"], dtype=np.int64)
    norms = np.array([v for v in meta["equivalent_shift_norm"] if v is not None], dtype=np.float64)
    if options.audio == "cached" and sample.whisper is None:
        raise ShardError(
            f"{where}: no cached Whisper features (<key>.whisper.npy); use audio_features='wav'"
        )
    if options.audio == "wav" and len(sample.audio) > WAV_SAMPLES:
        raise ShardError(
            f"{where}: {len(sample.audio) / SAMPLE_RATE:.1f} s of audio does not fit the 30 s "
            "audio_wav; preprocess with audio.features=whisper or shorter samples"
        )
    mel = log_mel(sample.audio) if options.sync_mel else None
    images: dict[int, np.ndarray] = {}

    def image(i: int) -> np.ndarray:
        if i not in images:
            member = frame_member(i)
            if member not in raw:
                raise ShardError(f"{where}: missing member {member}")
            img = decode_image(raw[member], f"{where}.{member}")
            if (img.shape[1], img.shape[0]) != tuple(sizes[i]):
                raise ShardError(f"{where}: {member} is not crop_size {sizes[i].tolist()}")
            images[i] = img
        return images[i]

    def crops(frames: np.ndarray, margin: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
        out, mouths = [], []
        for i in frames:
            box = context_box(lms[i], det[i], rects[i], sizes[i], margin, shift)
            out.append(R.crop(image(int(i)), box, options.crop_size))
            mouths.append(
                _mouth_box(lms[i], rects[i], sizes[i], box, options.mouth_margin, options.crop_size)
            )
        return np.stack(out), np.stack(mouths)

    clips = []
    frames = options.frames
    for _ in range(options.clips_per_sample):
        t0 = int(rng.integers(0, num - frames + 1))
        targets = np.arange(t0, t0 + frames, dtype=np.int64)
        refs = select_references(
            lms,
            targets,
            rng,
            options.reference,
            options.min_reference_gap,
            options.reference_fraction,
        )
        margin = _draw_margin(options, rng)
        shift = _draw_shift(options, rng, norms)
        target, mouth = crops(targets, margin, shift)
        reference, _ = crops(refs, margin, shift)
        item: dict[str, Any] = {
            "key": sample.key,
            "target": target,
            "reference": reference,
            "target_index": targets,
            "reference_index": refs,
            "mouth_box": mouth,
            "bottom_margin": np.float32(margin),
            "shift_norm": np.float32(shift),
        }
        if options.audio == "cached":
            windows = audio_windows(sample.whisper, frames, start_frame=t0)
            item["audio"] = windows.astype(np.float32)
        else:
            item["audio_wav"] = sample.audio
            item["audio_samples"] = np.int64(len(sample.audio))
            item["frame_index"] = targets.copy()
        if mel is not None:
            item["mel"] = mel_window(mel, t0, frames)
        clips.append(item)
    return clips


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack numpy clip items into the batch contract (torch tensors, images in [-1, 1])."""
    batch: dict[str, Any] = {"key": [item["key"] for item in items]}
    for name in items[0]:
        if name == "key":
            continue
        if name == "audio_wav":
            wav = np.zeros((len(items), WAV_SAMPLES), dtype=np.float32)
            for b, item in enumerate(items):
                wav[b, : len(item[name])] = item[name]
            batch[name] = torch.from_numpy(wav)
            continue
        tensor = torch.from_numpy(np.stack([item[name] for item in items]))
        if name in IMAGE_FIELDS:
            chw = tensor.permute(0, 1, 4, 2, 3)  # (B, F, S, S, 3) -> (B, F, 3, S, S)
            tensor = torch.empty(chw.shape, dtype=torch.float32).copy_(chw)
            tensor.div_(127.5).sub_(1.0)
        batch[name] = tensor
    return batch


def _train_clips(
    src: Iterable[dict[str, Any]], options: ClipOptions, rng: np.random.Generator, bad: BadDataLog
) -> Iterator[dict[str, Any]]:
    skipped = 0
    for raw in src:
        clips = _checked_clips(raw, rng, options, bad)
        skipped = 0 if clips else skipped + 1
        if skipped >= MAX_SKIPPED:
            raise ValueError(
                f"{MAX_SKIPPED} samples in a row are shorter than {options.min_frames} frames "
                "(frames_per_sample, 2 * min_reference_gap + 1): nothing to train on"
            )
        yield from clips


def _val_clips(
    src: Iterable[dict[str, Any]], options: ClipOptions, seed: int, bad: BadDataLog
) -> Iterator[dict[str, Any]]:
    for raw in src:
        rng = np.random.default_rng([seed, zlib.crc32(raw["__key__"].encode())])
        yield from _checked_clips(raw, rng, options, bad)


def _checked_clips(
    raw: dict[str, Any], rng: np.random.Generator, options: ClipOptions, bad: BadDataLog
) -> list[dict[str, Any]]:
    """`make_clips`, with a damaged sample skipped (recorded) or raised as `bad` says."""
    try:
        clips = make_clips(raw, rng, options)
    except ShardError as exc:
        bad.sample_error(exc, raw.get("__url__", "?"), raw.get("__key__", "?"))
        return []
    bad.sample_ok()
    return clips


# --------------------------------------------------------------------------- datasets


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
                _train_clips,
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
            functools.partial(_val_clips, options=self.options, seed=self.seed, bad=self.bad),
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
        iterator = super().__iter__()
        if self.num_workers > 0 and not self.persistent_workers:
            self.dataset.epoch, self.dataset.skip = self._next
        return self._counted(iterator)

    def _counted(self, iterator: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in iterator:
            self.batches += 1
            yield batch


# --------------------------------------------------------------------------- datamodule


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
    mouth_margin: mouth_box growth per side as a fraction of the lips' width / height.
    sync_mel: add ``mel`` (stage 2 sync loss).
    audio_features: "cached" (shards' Whisper features -> ``audio``), "wav" (``audio_wav`` +
        ``frame_index`` + ``audio_samples``) or "auto" (cached when the first sample has them).
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
        mouth_margin: Annotated[float, Field(ge=0)] = 0.1,
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
            mouth_margin=mouth_margin,
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
