"""Reading shards: the one place that lists, opens and decodes them, never unpickling anything.

`resolve_shards` lists the tars of a preprocess output (local or fsspec URL), a brace pattern or a
list; `raw_samples` are the webdataset stages from shard URLs to raw samples (member suffix ->
bytes); `decode_sample` checks a raw sample (safe key, known versions, per-frame arrays of
`num_frames` finite values, every frame's JPEG, audio of the right length) and decodes it with
safe decoders only (json, wav, jpg/png, npy without pickle). Every error is a `ShardError` naming
the shard and the key. `iter_samples` puts them together.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import fsspec
import numpy as np
import soundfile as sf
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from musetalk.audio.context import WINDOW_SAMPLES, SampleContext
from musetalk.data.schema import (
    FRAME_ARRAYS,
    OPTIONAL_ARRAYS,
    array_member,
    check_key,
    check_meta,
    check_versions,
    frame_member,
)
from musetalk.errors import InputNotFoundError, ShardError
from musetalk.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

__all__ = [
    "Sample",
    "decode_image",
    "decode_meta",
    "decode_npy",
    "decode_sample",
    "decode_wav",
    "iter_metas",
    "iter_samples",
    "raw_samples",
    "resolve_shards",
]


@dataclass
class Sample:
    """One decoded sample.

    meta: the `<key>.json` facts with the per-frame arrays (schema 3: `<key>.<name>.npy`
        members; schema 2: json lists) as numpy arrays (`schema.FRAME_ARRAYS`; README "Shard
        schema").
    audio: (T * 640,) float32 in [-1, 1] at 16 kHz.
    frames: T context crops, RGB uint8 (h, w, 3) each (sizes in meta["crop_size"]); empty when
        images were not requested.
    whisper: cached encoder states of the steps the frames use (context.num_steps, 5, 384)
        float16, or None.
    context: where the sample's audio context sits in its source (`musetalk.audio.context`);
    context_audio: its 16 kHz audio (from context.first_sample, up to num_windows x 30 s), or
        None when not requested.
    """

    key: str
    meta: dict[str, Any]
    audio: np.ndarray
    frames: list[np.ndarray]
    whisper: np.ndarray | None
    url: str
    context: SampleContext
    context_audio: np.ndarray | None = None


def decode_image(data: bytes, where: str = "image member") -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ShardError(f"{where}: not a decodable JPEG/PNG image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_wav(data: bytes, where: str = "wav member") -> np.ndarray:
    """WAV bytes -> (N,) float32 mono at 16 kHz."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise ShardError(f"{where}: not a readable WAV ({exc})") from None
    if sr != SAMPLE_RATE or audio.ndim != 1:
        raise ShardError(f"{where}: must be 16 kHz mono, got {sr} Hz shape {audio.shape}")
    return audio


def decode_npy(data: bytes) -> np.ndarray:
    """NPY bytes -> array; object arrays (pickles) are refused."""
    return np.load(io.BytesIO(data), allow_pickle=False)


# --------------------------------------------------------------------------- listing, opening


def resolve_shards(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Shard URLs from a directory (its *.tar, sorted), a brace pattern, a URL or a list of those.

    Local directories and fsspec directory URLs (e.g. ``s3://bucket/shards``) are listed;
    ``pipe:`` URLs and patterns are passed to webdataset as they are. A missing path or a
    directory without tars is an InputNotFoundError.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    urls: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(str(item)):
            urls.extend(_list_shard_dir(url))
    if not urls:
        raise InputNotFoundError(f"no shards in {source!r}")
    return urls


def _list_shard_dir(url: str) -> list[str]:
    if url.startswith("pipe:"):
        return [url]
    if "://" not in url:
        path = Path(url).expanduser()
        if path.is_dir():
            tars = sorted(str(p) for p in path.glob("*.tar"))
            if not tars:
                raise InputNotFoundError(f"no .tar shards in {path} (a preprocess output dir?)")
            return tars
        if not path.is_file():
            raise InputNotFoundError(f"shard {url} does not exist")
        return [url]
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.isdir(path):
        return [url]
    tars = sorted(fs.glob(f"{path.rstrip('/')}/*.tar"))
    if not tars:
        raise InputNotFoundError(f"no .tar shards in {url}")
    return [fs.unstrip_protocol(p) for p in tars]


def _open_shards(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset stage: dict(url) -> dict(url, stream); fsspec for URLs, gopen for pipe:."""
    for item in src:
        url = item["url"]
        opened = wds.gopen(url, "rb") if url.startswith("pipe:") else fsspec.open(url, "rb").open()
        with opened as stream:
            yield {**item, "stream": stream}


def _tar_members(
    src: Iterable[dict[str, Any]], handler: Callable[[Exception, str], bool]
) -> Iterator[dict[str, Any]]:
    """webdataset stage: opened shards -> tar members (fname, data, __url__), with an empty dict
    after each shard (`group_by_keys` then never joins members of two shards into one sample);
    an error reading a shard goes to handler(error, url): True skips the rest of that shard,
    False stops."""
    for source in src:
        url = source["url"]
        try:
            for member in tar_file_iterator(source["stream"], handler=wds.reraise_exception):
                yield {**member, "__url__": url}
        except Exception as exc:
            if not handler(exc, url):
                return
        yield {}


def _samples(
    src: Iterable[dict[str, Any]], handler: Callable[[Exception, str], bool]
) -> Iterator[dict[str, Any]]:
    """webdataset stage: members -> raw samples; a malformed one (a member name twice) goes to
    handler(error, url)."""
    url = ["?"]

    def members() -> Iterator[dict[str, Any]]:
        for member in src:
            url[0] = member.get("__url__", url[0])
            yield member

    yield from group_by_keys(members(), handler=lambda exc: handler(exc, url[0]))


def raw_samples(
    shards: Iterable[dict[str, Any]],
    handler: Callable[[Exception, str], bool] | None = None,
) -> list[Any]:
    """webdataset stages: shard list -> raw samples (member suffix -> bytes, __key__, __url__).

    handler(error, url): called when a shard cannot be read (zero bytes, truncated, not a tar);
    True goes on with the next shard, False stops; None raises a ShardError naming the shard.
    """
    on_error = handler if handler is not None else _raise_shard_error
    return [
        shards,
        _open_shards,
        functools.partial(_tar_members, handler=on_error),
        functools.partial(_samples, handler=on_error),
    ]


def _raise_shard_error(exc: Exception, url: str) -> bool:
    raise ShardError(f"{url}: unreadable shard ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- decoding


_ARRAY_MEMBERS = {array_member(name): name for name in FRAME_ARRAYS}
_KNOWN = {"json", "wav", "context.wav", "whisper.npy", *_ARRAY_MEMBERS}


def decode_meta(members: dict[str, Any], where: str) -> dict[str, Any]:
    """The checked facts of a sample from its json and (schema 3) per-frame array members
    (suffix -> bytes); the arrays as `schema.FRAME_ARRAYS` numpy arrays for both schema 2 and 3
    (`check_meta`). ShardError names `where` and what is wrong."""
    if "json" not in members:
        raise ShardError(f"{where}: no json member")
    try:
        meta = json.loads(members["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{where}: the json member is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: the json member is not an object")
    check_versions(meta, where)
    if meta["schema_version"] >= 3:
        for suffix, name in _ARRAY_MEMBERS.items():
            if suffix not in members:
                if name in OPTIONAL_ARRAYS:
                    continue
                raise ShardError(f"{where}: no {suffix} member (schema 3)")
            try:
                meta[name] = decode_npy(members[suffix])
            except (ValueError, EOFError, OSError) as exc:
                raise ShardError(f"{where}.{suffix}: not a plain numeric array ({exc})") from None
    return check_meta(meta, where=where)


def decode_sample(raw: dict[str, Any], images: bool = True, context_audio: bool = False) -> Sample:
    """A raw webdataset sample (member suffix -> bytes) -> a checked `Sample`; ShardError names
    the shard and key of whatever is wrong. images / context_audio: decode the JPEGs / the
    context audio too."""
    key, url = raw["__key__"], raw.get("__url__", "")
    try:
        check_key(key)
    except ValueError:
        raise ShardError(
            f"{url}: unsafe member name {key!r} (sample keys hold only letters, digits, '_' and "
            "'-'; a path or dots in a member name is refused)"
        ) from None
    where = f"{url}:{key}"
    meta = decode_meta(raw, where)
    n = meta["num_frames"]
    jpgs = {k for k in raw if k.endswith(".jpg")}
    unknown = [k for k in raw if not k.startswith("__") and k not in _KNOWN and k not in jpgs]
    if unknown:
        raise ShardError(f"{where}: unknown members {unknown}")
    expected = {frame_member(i) for i in range(n)}
    if jpgs != expected:
        raise ShardError(
            f"{where}: {len(jpgs)} jpg members for num_frames {n} "
            f"(missing {sorted(expected - jpgs)[:3]}, unexpected {sorted(jpgs - expected)[:3]})"
        )
    if "wav" not in raw:
        raise ShardError(f"{where}: no wav member")
    audio = decode_wav(raw["wav"], where=f"{where}.wav")
    if len(audio) != n * SAMPLES_PER_FRAME:
        raise ShardError(
            f"{where}: {len(audio)} audio samples for {n} frames (expected {n * SAMPLES_PER_FRAME})"
        )
    frames = []
    if images:
        frames = [decode_image(raw[m], f"{where}.{m}") for m in sorted(expected)]
    context = _context(meta, where)
    whisper = None
    if "whisper.npy" in raw:
        try:
            whisper = decode_npy(raw["whisper.npy"])
        except ValueError as exc:
            raise ShardError(f"{where}.whisper.npy: not a plain numeric array ({exc})") from None
        if whisper.ndim != 3 or len(whisper) != context.num_steps or not np.isfinite(whisper).all():
            raise ShardError(
                f"{where}.whisper.npy: expected finite ({context.num_steps}, layers, dim) "
                f"encoder states, got shape {whisper.shape}"
            )
    if "context.wav" not in raw:
        raise ShardError(f"{where}: no context.wav member")
    extra = None
    if context_audio:
        extra = decode_wav(raw["context.wav"], where=f"{where}.context.wav")
        if len(extra) > context.num_windows * WINDOW_SAMPLES:
            raise ShardError(f"{where}.context.wav: longer than its {context.num_windows} windows")
    return Sample(key, meta, audio, frames, whisper, url, context, extra)


def _context(meta: dict[str, Any], where: str) -> SampleContext:
    try:
        context = SampleContext.from_json(meta["audio_context"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{where}: audio_context is not valid ({exc!r})") from None
    if context.first_frame != meta["frame_index"][0] or context.num_steps < 1:
        raise ShardError(f"{where}: audio_context does not match frame_index")
    return context


def iter_samples(source: str | Path | Sequence[str], images: bool = True) -> Iterator[Sample]:
    """The checked samples of a shard dir, URL pattern or URL list, in order (errors raise)."""
    for raw in wds.DataPipeline(*raw_samples(wds.SimpleShardList(resolve_shards(source)))):
        yield decode_sample(raw, images=images)


def iter_metas(source: str | Path | Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(shard URL, checked sample facts as `decode_meta` gives them) of every sample, in order,
    reading only the json and per-frame array members: the other members' payloads are
    skipped, not read (for statistics over large datasets). Damaged shards and samples raise
    ShardError naming them."""
    for url in resolve_shards(source):
        try:
            with fsspec.open(url, "rb") as stream, tarfile.open(fileobj=stream) as tar:
                key, members = None, {}
                for member in tar:
                    name, _, suffix = member.name.partition(".")
                    if name != key and members:
                        yield url, decode_meta(members, f"{url}:{key}")
                        members = {}
                    key = name
                    if member.isfile() and (suffix == "json" or suffix in _ARRAY_MEMBERS):
                        members[suffix] = tar.extractfile(member).read()
                if members:
                    yield url, decode_meta(members, f"{url}:{key}")
        except (tarfile.TarError, EOFError) as exc:
            raise ShardError(f"{url}: unreadable shard ({type(exc).__name__}: {exc})") from None
