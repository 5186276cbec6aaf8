"""The shard schema: versions, member names, and the checks every reader applies.

A sample is one continuous face track of one source video at 25 fps. Its members are
`<key>.json` (the sample's scalar facts), `<key>.<name>.npy` (its per-frame arrays, `FRAME_ARRAYS`;
schema 2 held them in the json as lists), `<key>.wav` (16 kHz mono PCM covering exactly the frames),
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
SCHEMA_VERSION = 3  # 3: per-frame arrays as <name>.npy members (2: json lists)
#: 2: audio_context, context.wav, whisper.npy of the source's windows. Both are read, to the
#: same decoded sample (`decode_frame_arrays`).
KNOWN_SCHEMA_VERSIONS = frozenset({2, SCHEMA_VERSION})
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


#: Per-frame arrays of a sample: name -> (shape after the frame axis, dtype). Schema 3 stores
#: each as the member `<key>.<name>.npy`; schema 2 stored them as json lists (coordinates rounded
#: to 0.01 px). Decoded samples hold them as numpy arrays of these dtypes, whatever the version.
#: float32 keeps frame coordinates below 65536 px to within 0.004 px (finer than schema 2).
FRAME_ARRAYS: dict[str, tuple[tuple[int, ...], type]] = {
    "frame_index": ((), np.int64),  # source frame (25 fps) of each sample frame
    "landmarks": ((68, 2), np.float32),
    "det_box": ((4,), np.float32),
    "det_score": ((), np.float32),
    "detected": ((), np.bool_),  # False: tracked (landmarks carried), not detected
    "training_box": ((4,), np.float32),
    "mask_upper_bound": ((), np.float32),
    "nearest_nose_landmark": ((), np.int8),
    "nose_length": ((), np.float32),
    "equivalent_shift": ((), np.float32),
    "equivalent_shift_norm": ((), np.float32),  # NaN: no value (schema 2: null)
    "crop_rect": ((4,), np.int32),
    "crop_size": ((2,), np.int32),
}
#: Arrays that may be absent (older schema 2 writers) and those that may hold NaN.
OPTIONAL_ARRAYS = frozenset({"det_score", "detected", "nose_length"})
NULLABLE_ARRAYS = frozenset({"equivalent_shift_norm"})


def array_member(name: str) -> str:
    """Member suffix of the per-frame array `name` in schema 3: `landmarks.npy`."""
    return f"{name}.npy"


REQUIRED_FIELDS = (
    "schema_version",
    "region_version",
    "key",
    "source",
    "fps",
    "num_frames",
    "source_size",
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


def frame_arrays_from_json(meta: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """The per-frame arrays of a schema 2 json (lists, null for no value) as `FRAME_ARRAYS`
    arrays; ShardError when one is missing or not numeric."""
    out = {}
    for name in FRAME_ARRAYS:
        if name not in meta:
            if name in OPTIONAL_ARRAYS:
                continue
            raise ShardError(f"{where}: missing fields {[name]}")
        values = meta[name]
        if name in NULLABLE_ARRAYS and isinstance(values, list):
            values = [np.nan if v is None else v for v in values]
        try:
            out[name] = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ShardError(f"{where}: {name} is not a numeric array") from None
    return out


def check_meta(meta: Any, where: str = "sample") -> dict[str, Any]:
    """Refuse samples of unknown schema/region versions, with missing fields, or whose
    per-frame arrays do not have `num_frames` finite entries of the right shape; the arrays
    (numpy, or schema 2 json lists) come back as `FRAME_ARRAYS` arrays of their dtypes."""
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: the json member is not an object")
    check_versions(meta, where)
    missing = [name for name in REQUIRED_FIELDS if name not in meta]
    missing += [a for a in FRAME_ARRAYS if a not in meta and a not in OPTIONAL_ARRAYS]
    if missing:
        raise ShardError(f"{where}: missing fields {missing}")
    n = meta["num_frames"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ShardError(f"{where}: num_frames must be a positive integer, got {n!r}")
    out = dict(meta)
    if any(isinstance(meta[a], list) for a in FRAME_ARRAYS if a in meta):
        out.update(frame_arrays_from_json(meta, where))
    for name, (shape, dtype) in FRAME_ARRAYS.items():
        if name in out:
            out[name] = _checked_array(out[name], name, (n, *shape), dtype, where)
    if (out["crop_size"] < 1).any():
        raise ShardError(f"{where}: crop_size must be positive")
    return out


def _checked_array(
    value: Any, name: str, shape: tuple[int, ...], dtype: type, where: str
) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ShardError(f"{where}: {name} is not a numeric array (dtype {arr.dtype})")
    if arr.shape != shape:
        raise ShardError(
            f"{where}: {name} has shape {arr.shape}, expected {shape} (num_frames {shape[0]})"
        )
    if arr.dtype.kind == "f":
        bad = np.isinf(arr) if name in NULLABLE_ARRAYS else ~np.isfinite(arr)
        if bad.any():
            raise ShardError(f"{where}: {name} holds NaN or infinite values")
    if arr.dtype.kind != "b" and np.nanmax(np.abs(arr), initial=0) > MAX_COORDINATE:
        raise ShardError(f"{where}: {name} holds values beyond {MAX_COORDINATE:g}")
    if arr.dtype == dtype:
        return arr
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        if (arr != np.round(arr)).any() or arr.min() < info.min or arr.max() > info.max:
            raise ShardError(f"{where}: {name} must hold {np.dtype(dtype).name} integers")
    return arr.astype(dtype)
