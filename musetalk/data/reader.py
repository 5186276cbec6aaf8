"""Reading shards with plain `webdataset`, never unpickling anything.

Members are decoded by extension with safe decoders only (json, wav, jpg/png, npy without
pickle); any other extension is refused.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import soundfile as sf
import webdataset as wds

from musetalk.data.schema import SAMPLE_RATE, UnsupportedShard, check_meta, frame_member


@dataclass
class Sample:
    """One decoded sample.

    meta: the `<key>.json` facts (landmarks etc., see README "Shard schema").
    audio: (T * 640,) float32 in [-1, 1] at 16 kHz.
    frames: T context crops, RGB uint8 (h, w, 3) each (sizes in meta["crop_size"]); empty when
        images were not requested.
    whisper: cached encoder features (T50, 5, 384) float16, or None.
    """

    key: str
    meta: dict[str, Any]
    audio: np.ndarray
    frames: list[np.ndarray]
    whisper: np.ndarray | None
    url: str


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise UnsupportedShard("an image member could not be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_wav(data: bytes) -> np.ndarray:
    """WAV bytes -> (N,) float32 mono at 16 kHz."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE or audio.ndim != 1:
        raise UnsupportedShard(f"audio member must be 16 kHz mono, got {sr} Hz shape {audio.shape}")
    return audio


def decode_npy(data: bytes) -> np.ndarray:
    """NPY bytes -> array; object arrays (pickles) are refused."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def shard_urls(source: str | Path | Sequence[str]) -> list[str]:
    """Shard URLs from a preprocess output dir (its *.tar, sorted), a brace pattern or a list."""
    if isinstance(source, (list, tuple)):
        return [str(u) for u in source]
    path = Path(source)
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise FileNotFoundError(f"no .tar shards in {path}")
        return urls
    return [str(source)]


def decode_sample(raw: dict[str, Any], images: bool = True) -> Sample:
    """A raw webdataset sample (member suffix -> bytes) -> `Sample`, checking versions."""
    key, url = raw["__key__"], raw.get("__url__", "")
    if "json" not in raw:
        raise UnsupportedShard(f"{url}:{key}: no json member")
    meta = check_meta(json.loads(raw["json"]), where=f"{url}:{key}")
    known = {"json", "wav", "whisper.npy"}
    unknown = [
        k for k in raw if not k.startswith("__") and k not in known and not k.endswith(".jpg")
    ]
    if unknown:
        raise UnsupportedShard(f"{url}:{key}: unknown members {unknown}")
    frames = []
    if images:
        frames = [decode_image(raw[frame_member(i)]) for i in range(meta["num_frames"])]
    whisper = decode_npy(raw["whisper.npy"]) if "whisper.npy" in raw else None
    return Sample(key, meta, decode_wav(raw["wav"]), frames, whisper, url)


def iter_samples(
    source: str | Path | Sequence[str], images: bool = True, **webdataset_kwargs: Any
) -> Iterator[Sample]:
    """Iterate the samples of a shard dir, URL pattern or URL list, in order.

    Extra keyword arguments go to `webdataset.WebDataset` (e.g. `shardshuffle`).
    """
    webdataset_kwargs.setdefault("shardshuffle", False)
    dataset = wds.WebDataset(shard_urls(source), **webdataset_kwargs)
    for raw in dataset:
        yield decode_sample(raw, images=images)
