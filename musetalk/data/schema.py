"""The shard schema: versions, member names, and the checks every reader applies.

A sample is one continuous face track of one source video at 25 fps. Its members are
`<key>.json` (per-frame facts), `<key>.wav` (16 kHz mono PCM covering exactly the frames),
`<key>.NNNNNN.jpg` (context crop of frame NNNNNN of the sample, 0-based), `<key>.context.wav`
(the audio context: the source's 30 s windows, aligned to its time 0, that its frames' Whisper
windows fall in; see `musetalk.audio.context`) and optionally `<key>.whisper.npy` (cached
Whisper encoder states of the steps the frames use). Keys contain no dots.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from musetalk.errors import ShardError, ShardVersionError
from musetalk.face.region import REGION_VERSION

#: Version of the sample layout. Bump on any incompatible change; readers refuse unknown ones.
SCHEMA_VERSION = 2  # 2: audio_context, context.wav, whisper.npy of the source's windows
KNOWN_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})
KNOWN_REGION_VERSIONS = frozenset({REGION_VERSION})

LANDMARK_CONVENTION = "iBUG-300W 68 points, 0-based, (x, y) in original-frame pixels"

_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")
MAX_COORDINATE = 1e6  # pixels: no video frame is larger; anything beyond is a damaged json


def frame_member(index: int) -> str:
    """Member suffix of frame `index` (0-based within the sample): `000017.jpg`."""
    return f"{index:06d}.jpg"


def check_key(key: str) -> str:
    """A sample key: letters, digits, '_' and '-' only (webdataset splits names at dots)."""
    if not _KEY_OK.match(key):
        raise ValueError(f"invalid sample key {key!r}: only [A-Za-z0-9_-] are allowed")
    return key


REQUIRED_FIELDS = (
    "schema_version",
    "region_version",
    "key",
    "source",
    "fps",
    "num_frames",
    "frame_index",
    "source_size",
    "landmarks",
    "det_box",
    "training_box",
    "mask_upper_bound",
    "nearest_nose_landmark",
    "equivalent_shift",
    "equivalent_shift_norm",
    "crop_rect",
    "crop_size",
    "audio_context",
)


def check_versions(obj: dict[str, Any], where: str) -> None:
    """Refuse a sample json or a stats file of a schema/region version this code does not know
    (ShardVersionError naming both)."""
    for field, known in (
        ("schema_version", KNOWN_SCHEMA_VERSIONS),
        ("region_version", KNOWN_REGION_VERSIONS),
    ):
        value = obj.get(field)
        if value not in known:
            raise ShardVersionError(
                f"{where}: {field} {value!r} is not supported by this reader (known: "
                f"{sorted(known)}); re-run preprocessing or upgrade musetalk"
            )


#: Per-frame fields of the sample json: name -> shape after the frame axis.
PER_FRAME_ARRAYS = {
    "landmarks": (68, 2),
    "det_box": (4,),
    "training_box": (4,),
    "crop_rect": (4,),
    "crop_size": (2,),
    "frame_index": (),
    "mask_upper_bound": (),
    "equivalent_shift": (),
}
#: Per-frame lists that may hold null (no value for that frame).
PER_FRAME_LISTS = ("nearest_nose_landmark", "equivalent_shift_norm")


def check_meta(meta: Any, where: str = "sample") -> dict[str, Any]:
    """Refuse sample jsons of unknown schema/region versions, with missing fields, or whose
    per-frame arrays do not have `num_frames` finite entries of the right shape."""
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: the json member is not an object")
    check_versions(meta, where)
    missing = [name for name in REQUIRED_FIELDS if name not in meta]
    if missing:
        raise ShardError(f"{where}: missing fields {missing}")
    n = meta["num_frames"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ShardError(f"{where}: num_frames must be a positive integer, got {n!r}")
    for name, shape in PER_FRAME_ARRAYS.items():
        try:
            arr = np.asarray(meta[name], dtype=np.float64)
        except (TypeError, ValueError):
            raise ShardError(f"{where}: {name} is not a numeric array") from None
        if arr.shape != (n, *shape):
            raise ShardError(
                f"{where}: {name} has shape {arr.shape}, expected {(n, *shape)} (num_frames {n})"
            )
        if not np.isfinite(arr).all():
            raise ShardError(f"{where}: {name} holds NaN or infinite values")
        if np.abs(arr).max(initial=0.0) > MAX_COORDINATE:
            raise ShardError(f"{where}: {name} holds values beyond {MAX_COORDINATE:g}")
    for name in PER_FRAME_LISTS:
        if not isinstance(meta[name], list) or len(meta[name]) != n:
            raise ShardError(f"{where}: {name} must list {n} values (num_frames)")
    if (np.asarray(meta["crop_size"]) < 1).any():
        raise ShardError(f"{where}: crop_size must be positive")
    return meta
