"""Atomic shard writing: temp names, then rename; the stats json is the done-marker.

Works on local paths and fsspec URLs (object stores write a file atomically on close).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import soundfile as sf
import webdataset as wds

from musetalk.data.schema import SAMPLE_RATE, check_key

TMP_MARK = ".tmp-"


def encode_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """(N,) float32 in [-1, 1] -> 16-bit PCM WAV bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    """Array -> NPY bytes (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


class Output:
    """An output directory given as a local path or an fsspec URL."""

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def makedirs(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def read_json(self, name: str) -> Any:
        with self.fs.open(self.path(name), "r") as f:
            return json.load(f)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole file atomically (temp name in the same dir, then rename)."""
        tmp = self.path(f"{name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, self.path(name))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def remove_matching(self, pattern: str) -> list[str]:
        """Delete the files matching a glob pattern (leftovers of an interrupted run)."""
        removed = []
        for path in self.fs.glob(self.path(pattern)):
            self.fs.rm(path)
            removed.append(Path(path).name)
        return removed


class ShardWriter:
    """Writes one tar shard under a temp name; `close()` renames it into place.

    Use as a context manager; on an exception the temp file is removed and nothing appears
    under the final name.
    """

    def __init__(self, output: Output, name: str) -> None:
        self.output = output
        self.name = name
        self.tmp_name = f"{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        self._file = output.fs.open(output.path(self.tmp_name), "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0)
        self.samples = 0
        self.bytes = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Write one sample: member suffix (e.g. "json", "000017.jpg") -> bytes."""
        record: dict[str, Any] = {"__key__": check_key(key)}
        for suffix, data in members.items():
            if not isinstance(data, bytes):
                raise TypeError(f"member {key}.{suffix} must be bytes, got {type(data).__name__}")
            record[suffix] = data
            self.bytes += len(data)
        self._tar.write(record)
        self.samples += 1

    def close(self) -> None:
        self._tar.close()
        self._file.close()
        self.output.fs.mv(self.output.path(self.tmp_name), self.output.path(self.name))

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        self.output.fs.rm(self.output.path(self.tmp_name))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
