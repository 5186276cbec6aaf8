"""Clips: one shard sample -> training clips (numpy items), and their collation into batches.

Batch contract (B = batch size, F = frames_per_sample, S = crop_size):

====================  ======================  ===================================================
key                   shape, dtype            meaning
====================  ======================  ===================================================
``key``               list[str] (B)           sample keys
``target``            (B, F, 3, S, S) f32     training crops of frames t0 .. t0 + F - 1, in [-1, 1]
                                              (uint8 0..255 until `finish_batch`, see below)
``reference``         (B, F, 3, S, S) f32     one reference crop per target frame, same sample,
                                              >= min_reference_gap frames away, in [-1, 1]
                                              (uint8 until `finish_batch`)
``target_index``      (B, F) int64            frame indices of the targets within the sample
``reference_index``   (B, F) int64            frame indices of the references within the sample
``mouth_box``         (B, F, 4) f32           MuseTalk's mouth box: lips 48-66 x extent +- 10 px
                                              (at S = 256), height = width / 2 on the lips'
                                              y midpoint; (x1, y1, x2, y2) in S x S crop
                                              pixels (mouth discriminator), clipped to [0, S]
``bottom_margin``     (B,) f32                bottom-margin augmentation of the clip, pixels of
                                              the original frame (0 when off)
``shift_norm``        (B,) f32                bbox_shift augmentation of the clip in nose lengths
                                              (NaN: the training box was used)
``audio``             (B, F, 10 L, d) f32     cached-features mode: Whisper windows of the target
                                              frames from the stored states of the sample's
                                              audio context (L = 5, d = 384 for whisper-tiny)
``audio_wav``         (B, W x 480000) f32     wav mode: the sample's audio context (its source's
                                              30 s windows, aligned to the source's time 0),
                                              zero padded to W windows, W the batch's largest
                                              (until `finish_batch`: padded to the batch's
                                              longest context only)
``audio_context``     (B, 3) int64            wav mode: per sample the first row of its steps in
                                              the W x 1500 encoder states, their number, and the
                                              `audio_windows` start frame of the clip
``mel``               (B, 80, ceil(3.2 F)) f32  sync_mel only: log-mel of the clip's audio in
                                              [-4, 4] (52 frames for F = 16), see `log_mel`
====================  ======================  ===================================================

The loader (`collate`, in the DataLoader's workers) yields the images as uint8 and the context
audio unpadded; `finish_batch`, which `MuseTalkModule.forward` calls on the batch's device,
converts them to the contract above (the same float32 values: tests/test_training_data.py). So
the workers and the pinned-memory copy move a quarter of the image bytes and no padding: a
stage-1 batch (F 1, batch 32, wav mode) carries 33 MB instead of 111 (bench/train_data.py).
Code iterating a loader itself calls `finish_batch(batch)` for the float contract.

Audio: one definition with inference (`musetalk.audio.context`): a frame sees the Whisper
states of its source's audio encoded in 30 s windows aligned to the source's time 0. With cached
features (`audio_features="cached"`, or "auto" on shards preprocessed with
`audio.features=whisper`) the windows are computed here from the stored states. Otherwise
(`"wav"`) the module encodes ``audio_wav`` window by window on its device and calls
`context_audio_windows(states, audio_context, F)`, which takes the same steps and windows them
with the same `audio_windows`, so both paths give inference's tokens.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from musetalk.audio.context import WINDOW_SAMPLES, WINDOW_STEPS_30S, context_features
from musetalk.audio.mel import log_mel, mel_window
from musetalk.audio.windows import audio_windows
from musetalk.data.reader import Sample, decode_image, decode_sample
from musetalk.data.schema import frame_member
from musetalk.errors import ShardError
from musetalk.face import region
from musetalk.training.bad_data import BadDataLog
from musetalk.training.crops import MOUTH_PADDING, context_box, mouth_box
from musetalk.training.reference import REFERENCE_RULES, select_references

__all__ = [
    "ClipOptions",
    "collate",
    "context_audio_windows",
    "finish_batch",
    "make_clips",
    "train_clips",
    "val_clips",
]

IMAGE_FIELDS = ("target", "reference")
MAX_SKIPPED = 1000  # consecutive unusable samples before a training stream gives up


def context_audio_windows(
    states: torch.Tensor, audio_context: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """(B, F, 10 L, d) audio tokens of a wav-mode batch.

    states: (B, W x 1500, L, d) encoder states of ``batch["audio_wav"]`` window by window;
    audio_context: (B, 3) ``batch["audio_context"]`` (first row, number of rows, start frame).
    """
    out = []
    for b in range(states.shape[0]):
        first, count, start = (int(v) for v in audio_context[b])
        out.append(audio_windows(states[b, first : first + count], num_frames, start_frame=start))
    return torch.stack(out)


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
    mouth_padding: float = MOUTH_PADDING
    min_face_size: float = 0.0
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
        if self.mouth_padding < 0 or self.min_face_size < 0:
            raise ValueError(
                f"mouth_padding and min_face_size must be >= 0, got {self.mouth_padding}, "
                f"{self.min_face_size}"
            )
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


def face_width(meta: dict[str, Any]) -> float:
    """Width (original-frame px) of the first frame's union of detector box and landmark
    extent: what MuseTalk's `min_face_size` filter compares (150 px stage 1, 200 stage 2)."""
    lms = np.asarray(meta["landmarks"][0], dtype=np.float64)
    det = np.asarray(meta["det_box"][0], dtype=np.float64)
    return float(max(det[2], lms[:, 0].max()) - min(det[0], lms[:, 0].min()))


class SampleCrops:
    """Training crops of one decoded sample's frames, decoding each JPEG at most once."""

    def __init__(self, raw: dict[str, Any], meta: dict[str, Any], where: str, options: ClipOptions):
        self.raw, self.where, self.options = raw, where, options
        self.lms = np.asarray(meta["landmarks"], dtype=np.float64)
        self.det = np.asarray(meta["det_box"], dtype=np.float64)
        self.rects = np.asarray(meta["crop_rect"], dtype=np.int64)
        self.sizes = np.asarray(meta["crop_size"], dtype=np.int64)
        self.images: dict[int, np.ndarray] = {}

    def image(self, i: int) -> np.ndarray:
        if i not in self.images:
            member = frame_member(i)
            if member not in self.raw:
                raise ShardError(f"{self.where}: missing member {member}")
            img = decode_image(self.raw[member], f"{self.where}.{member}")
            if (img.shape[1], img.shape[0]) != tuple(self.sizes[i]):
                raise ShardError(
                    f"{self.where}: {member} is not crop_size {self.sizes[i].tolist()}"
                )
            self.images[i] = img
        return self.images[i]

    def __call__(
        self, frames: np.ndarray, margin: float, shift: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(F, S, S, 3) uint8 crops and (F, 4) mouth boxes of `frames`."""
        size, out, mouths = self.options.crop_size, [], []
        for i in frames:
            lm, rect, stored = self.lms[i], self.rects[i], self.sizes[i]
            box = context_box(lm, self.det[i], rect, stored, margin, shift)
            out.append(region.crop(self.image(int(i)), box, size))
            mouths.append(mouth_box(lm, rect, stored, box, self.options.mouth_padding, size))
        return np.stack(out), np.stack(mouths)


def _check_audio_mode(sample: Sample, options: ClipOptions, where: str) -> None:
    if options.audio == "cached" and sample.whisper is None:
        raise ShardError(
            f"{where}: no cached Whisper features (<key>.whisper.npy); use audio_features='wav'"
        )


def _audio_fields(sample: Sample, options: ClipOptions, targets: np.ndarray) -> dict[str, Any]:
    """The clip's audio: cached Whisper windows, or the sample's audio context for on-device
    encoding (`musetalk.audio.context`)."""
    context, t0 = sample.context, int(targets[0])
    if options.audio == "cached":
        windows = context_features(sample.whisper, context, len(targets), start=t0)
        return {"audio": windows.astype(np.float32)}
    first = context.first_step - context.first_window * WINDOW_STEPS_30S
    return {
        "audio_wav": sample.context_audio,
        "audio_context": np.array(
            [first, context.num_steps, context.token_start_frame + t0], dtype=np.int64
        ),
    }


def make_clips(
    raw: dict[str, Any], rng: np.random.Generator, options: ClipOptions
) -> list[dict[str, Any]]:
    """The clips of one raw webdataset sample (member suffix -> bytes), as numpy items.

    Refuses unknown schema/region versions (ShardError). Returns [] for samples shorter
    than `options.min_frames` or whose face is narrower than `options.min_face_size`. Item
    fields are those of the batch contract, with images as
    (F, S, S, 3) uint8 and ``audio_wav`` unpadded (`collate` converts and pads).
    """
    sample = decode_sample(raw, images=False, context_audio=options.audio == "wav")
    num = int(sample.meta["num_frames"])
    if num < options.min_frames or face_width(sample.meta) < options.min_face_size:
        return []
    where = f"{sample.url}:{sample.key}"
    _check_audio_mode(sample, options, where)
    crops = SampleCrops(raw, sample.meta, where, options)
    shifts = np.asarray(sample.meta["equivalent_shift_norm"], dtype=np.float64)
    norms = shifts[np.isfinite(shifts)]  # NaN: no value for that frame
    mel = log_mel(sample.audio) if options.sync_mel else None
    clips = []
    for _ in range(options.clips_per_sample):
        t0 = int(rng.integers(0, num - options.frames + 1))
        targets = np.arange(t0, t0 + options.frames, dtype=np.int64)
        refs = select_references(
            crops.lms,
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
            **_audio_fields(sample, options, targets),
        }
        if mel is not None:
            item["mel"] = mel_window(mel, t0, options.frames)
        clips.append(item)
    return clips


def _images(items: Sequence[dict[str, Any]], name: str) -> torch.Tensor:
    """(B, F, 3, S, S) uint8 of the items' (F, S, S, 3) uint8 images."""
    first = items[0][name]
    planar = np.empty((len(items), first.shape[0], 3, *first.shape[1:3]), np.uint8)
    for b, item in enumerate(items):
        planar[b] = item[name].transpose(0, 3, 1, 2)
    return torch.from_numpy(planar)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack numpy clip items into a batch: the batch contract with uint8 images and the
    context audio padded to the batch's longest only (`finish_batch` completes it)."""
    batch: dict[str, Any] = {"key": [item["key"] for item in items]}
    for name in items[0]:
        if name == "key":
            continue
        if name == "audio_wav":
            longest = max(len(item[name]) for item in items)
            wav = np.zeros((len(items), longest), dtype=np.float32)
            for b, item in enumerate(items):
                wav[b, : len(item[name])] = item[name]
            batch[name] = torch.from_numpy(wav)
            continue
        if name in IMAGE_FIELDS:
            batch[name] = _images(items, name)
            continue
        batch[name] = torch.from_numpy(np.stack([item[name] for item in items]))
    return batch


def finish_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch contract of a `collate`d batch, on whatever device it is: uint8 images ->
    float32 `x / 127.5 - 1` in [-1, 1], `audio_wav` zero padded to whole 30 s windows. A
    finished batch comes back unchanged (float images, whole windows), so calling it twice is
    harmless."""
    out = dict(batch)
    for name in IMAGE_FIELDS:
        images = out.get(name)
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            out[name] = images.to(torch.float32).div_(127.5).sub_(1.0)
    wav = out.get("audio_wav")
    if isinstance(wav, torch.Tensor) and wav.shape[-1] % WINDOW_SAMPLES:
        out["audio_wav"] = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % WINDOW_SAMPLES))
    return out


def train_clips(
    src: Iterable[dict[str, Any]], options: ClipOptions, rng: np.random.Generator, bad: BadDataLog
) -> Iterator[dict[str, Any]]:
    skipped = 0
    for raw in src:
        clips = _checked_clips(raw, rng, options, bad)
        skipped = 0 if clips else skipped + 1
        if skipped >= MAX_SKIPPED:
            raise ValueError(
                f"{MAX_SKIPPED} samples in a row are shorter than {options.min_frames} frames "
                "(frames_per_sample, 2 * min_reference_gap + 1) or have a face narrower than "
                f"min_face_size {options.min_face_size:g} px: nothing to train on"
            )
        yield from clips


def val_clips(
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
