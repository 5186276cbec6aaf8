"""Shard writing: WebDataset tars under temp names (published by the caller), member encoders.

Works on local paths and fsspec URLs through `musetalk.data.output.Output`.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import soundfile as sf

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
        # a plain streamed tar, laid out as webdataset's TarWriter does (members of a sample in
        # sorted order, mode 0444, owner "bigdata", mtime 0): the same bytes, without importing
        # webdataset (and torch with it) into every preprocessing worker
        self._tar = tarfile.open(fileobj=self._file, mode="w|")  # noqa: SIM115 (close/abort)
        self.samples = 0
        self.bytes = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Write one sample: member suffix (e.g. "json", "000017.jpg") -> bytes."""
        check_key(key)
        for suffix, data in members.items():
            if not isinstance(data, bytes):
                raise TypeError(f"member {key}.{suffix} must be bytes, got {type(data).__name__}")
        for suffix in sorted(members):
            data = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))
            self.bytes += len(data)
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
