"""Input listing and the deterministic assignment of sources to shards.

An input is a video file, a directory (searched recursively for video files), or a list file:
`.txt` with one video per line, or `.csv` with a `video` column and an optional `audio` column
(a separate audio track for a video without sound). Relative paths in a list file are relative
to the list file. Paths are made absolute and sorted, so the same input always gives the same
shards wherever the command is started from.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musetalk.errors import InputError, InputNotFoundError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".wmv"}
)


@dataclass(frozen=True)
class Source:
    """One input video. `audio` is a separate audio file, or None to use the video's track."""

    video: str
    audio: str | None = None

    @property
    def source_id(self) -> str:
        """A stable id without dots: the file stem (sanitised) + 8 hex of the path's hash."""
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.video).stem)[:40].strip("_") or "video"
        digest = hashlib.sha1(f"{self.video}|{self.audio or ''}".encode()).hexdigest()[:8]
        return f"{stem}-{digest}"

    def record(self) -> dict[str, Any]:
        """Path, size and mtime of the video (and audio) file: what a rerun compares to tell
        whether a source changed since it was processed (None where a file is missing)."""
        out: dict[str, Any] = {"video": self.video, "audio": self.audio}
        for role, path in (("video", self.video), ("audio", self.audio)):
            if path is None:
                continue
            try:
                stat = os.stat(path)
            except OSError:
                out[f"{role}_size"] = out[f"{role}_mtime_ns"] = None
                continue
            out[f"{role}_size"], out[f"{role}_mtime_ns"] = stat.st_size, stat.st_mtime_ns
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Source:
        return cls(record["video"], record.get("audio"))


def list_sources(input_path: str | Path) -> list[Source]:
    """The sources of an input (file, directory, .txt or .csv list), sorted and de-duplicated."""
    path = Path(os.path.abspath(Path(input_path).expanduser()))
    if not path.exists():
        raise InputNotFoundError(f"input {str(input_path)!r} does not exist")
    if path.is_dir():
        found = [
            Source(str(p))
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
        ]
    elif path.suffix.lower() == ".csv":
        found = _read_csv(path)
    elif path.suffix.lower() == ".txt":
        found = [
            Source(_resolve(line.strip(), path))
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    else:
        found = [Source(str(path))]
    return sorted(set(found), key=lambda s: (s.video, s.audio or ""))


def _resolve(entry: str, list_file: Path) -> str:
    if "://" in entry:
        return entry
    return os.path.abspath(list_file.parent / Path(entry).expanduser())


def _read_csv(path: Path) -> list[Source]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "video" not in reader.fieldnames:
            raise InputError(f"{path}: a csv input needs a 'video' column (and optionally 'audio')")
        return [
            Source(
                _resolve(row["video"].strip(), path),
                _resolve(row["audio"].strip(), path) if (row.get("audio") or "").strip() else None,
            )
            for row in reader
            if (row.get("video") or "").strip()
        ]


#: sources_per_shard=None: at most this many sources per shard ...
MAX_AUTO_SOURCES_PER_SHARD = 4
#: ... and at least this many shards while there are sources for them (keeps 16 workers busy).
MIN_AUTO_SHARDS = 16


def auto_sources_per_shard(num_sources: int) -> int:
    """Sources per shard when none is set: one per shard for small jobs (3 inputs run on 3
    workers), growing to 4 from 49 sources on. Depends on the number of sources only, so that
    the shard layout is the same on every machine."""
    return min(MAX_AUTO_SOURCES_PER_SHARD, max(1, math.ceil(num_sources / MIN_AUTO_SHARDS)))


def assign_shards(sources: list[Source], sources_per_shard: int | None) -> list[list[Source]]:
    """Consecutive groups of `sources_per_shard` sorted sources (None: auto); group i is
    shard i."""
    if sources_per_shard is None:
        sources_per_shard = auto_sources_per_shard(len(sources))
    if sources_per_shard < 1:
        raise ValueError(f"sources_per_shard must be >= 1, got {sources_per_shard}")
    return [sources[i : i + sources_per_shard] for i in range(0, len(sources), sources_per_shard)]
