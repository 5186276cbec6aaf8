"""The shard schema: versions, member names, and the checks every reader applies.

A sample is one continuous face track of one source video at 25 fps. Its members are
`<key>.json` (per-frame facts), `<key>.wav` (16 kHz mono PCM covering exactly the frames),
`<key>.NNNNNN.jpg` (context crop of frame NNNNNN of the sample, 0-based) and optionally
`<key>.whisper.npy` (cached Whisper encoder features). Keys contain no dots.
"""

from __future__ import annotations

import re
from typing import Any

from musetalk.face.region import REGION_VERSION

#: Version of the sample layout. Bump on any incompatible change; readers refuse unknown ones.
SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})
KNOWN_REGION_VERSIONS = frozenset({REGION_VERSION})

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 audio samples per video frame
LANDMARK_CONVENTION = "iBUG-300W 68 points, 0-based, (x, y) in original-frame pixels"

_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


class UnsupportedShard(ValueError):
    """A shard sample this reader cannot use (unknown version, missing fields)."""


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
)


def check_meta(meta: dict[str, Any], where: str = "sample") -> dict[str, Any]:
    """Refuse samples of unknown schema/region versions or with missing fields."""
    schema = meta.get("schema_version")
    if schema not in KNOWN_SCHEMA_VERSIONS:
        raise UnsupportedShard(
            f"{where}: schema_version {schema!r} is not supported by this reader "
            f"(known: {sorted(KNOWN_SCHEMA_VERSIONS)}); re-run preprocessing or upgrade musetalk"
        )
    region = meta.get("region_version")
    if region not in KNOWN_REGION_VERSIONS:
        raise UnsupportedShard(
            f"{where}: region_version {region!r} is not supported by this reader "
            f"(known: {sorted(KNOWN_REGION_VERSIONS)}); re-run preprocessing or upgrade musetalk"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in meta]
    if missing:
        raise UnsupportedShard(f"{where}: missing fields {missing}")
    return meta
