"""Shard writing: WebDataset tars under temp names (published by the caller), member encoders.

Works on local paths and fsspec URLs through `musetalk.data.output.Output`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import soundfile as sf
import webdataset as wds

from musetalk.data.output import Output
from musetalk.data.schema import check_key
from musetalk.timebase import SAMPLE_RATE


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


class ShardWriter:
    """Writes one tar under a temp name of `output`; `close()` returns that temp name for the
    caller to publish (`Output.publish`) once everything that belongs with it is written.

    As a context manager it publishes on success and removes the temp file on an exception, so
    nothing ever appears under the final name half-written.
    """

    def __init__(self, output: Output, name: str) -> None:
        self.output = output
        self.name = name
        self.tmp_name = output.temp_name(name)
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

    def close(self) -> str:
        """Finish the tar; returns its temp name (not yet under `name`)."""
        self._tar.close()
        self._file.close()
        return self.tmp_name

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        self.output.fs.rm(self.output.path(self.tmp_name))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.output.publish(self.close(), self.name)
        else:
            self.abort()
