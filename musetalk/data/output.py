"""A preprocessing output location, and the proof of which files in it this program wrote.

Preprocessing deletes or replaces only files it can prove it wrote:

- The location is ours when it holds our `config.json` (tool name, record format, a random
  `output_id`), which a run writes only once its settings, input and output have been checked.
- Temp files carry the output id in their names (`<name>.tmp-<output_id>-<random>`).
- Every json we write (`config.json`, `stats.json`, the shard `NNNNN.json`) carries the output
  id; so does every line of `manifest.jsonl`.
- A tar is ours when an owned shard json, or an owned shard-json temp (written before the tars
  are renamed into place), names it.

Anything else is foreign: never deleted or replaced. A non-empty location without our
`config.json` is refused unless `overwrite=true`, and even then a name this program needs that
a foreign file holds stops the run (`OutputRefusedError`). Local paths and fsspec URLs work the
same (object stores write a file atomically on close); on local paths a run also holds an
exclusive lock, so two runs never write into one output at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from musetalk.errors import OutputRefusedError

__all__ = ["CONFIG", "MANIFEST", "STATS", "TOOL", "Output", "claim", "shard_name"]

TOOL = "musetalk.preprocess"
RECORD_FORMAT = 2  # config.json layout; 1 had no tool/output_id (refused: use a new output)
CONFIG = "config.json"
STATS = "stats.json"
MANIFEST = "manifest.jsonl"
LOCK = ".musetalk.lock"
TMP = ".tmp-"

_PART = re.compile(r"^(\d{5})-\d{3}\.tar$")


def shard_name(index: int) -> str:
    """Zero-padded shard id: `00007`; its parts are `00007-000.tar`, ... and its stats json
    `00007.json`."""
    return f"{index:05d}"


class Output:
    """An output directory (local path or fsspec URL) whose files carry `output_id`."""

    def __init__(self, url: str | os.PathLike[str], output_id: str) -> None:
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.output_id = output_id

    # ------------------------------------------------------------------------ plain access

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def names(self) -> list[str]:
        """Names of the entries directly in the directory (none when it does not exist)."""
        if not self.fs.isdir(self.root):
            return []
        return sorted(Path(p.rstrip("/")).name for p in self.fs.ls(self.root, detail=False))

    def read_json(self, name: str) -> Any:
        with self.fs.open(self.path(name), "r") as f:
            return json.load(f)

    # ------------------------------------------------------------------------ ownership

    def temp_name(self, name: str) -> str:
        """A temp name for `name` that proves this output wrote it."""
        return f"{name}{TMP}{self.output_id}-{uuid.uuid4().hex[:8]}"

    def is_our_temp(self, name: str) -> bool:
        return f"{TMP}{self.output_id}-" in name

    def owned_json(self, name: str) -> dict[str, Any] | None:
        """The content of json file `name` when this output wrote it, else None."""
        try:
            obj = self.read_json(name)
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if isinstance(obj, dict) and obj.get("output_id") == self.output_id:
            return obj
        return None

    def owns(self, name: str) -> bool:
        """Whether file `name` (not a tar: see `reset_shard`) is provably ours."""
        if self.is_our_temp(name):
            return True
        if name == MANIFEST:
            with self.fs.open(self.path(name), "r") as f:
                first = f.readline()
            try:
                return json.loads(first).get("output_id") == self.output_id
            except (ValueError, AttributeError):
                return False
        return name.endswith(".json") and self.owned_json(name) is not None

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(name))

    # ------------------------------------------------------------------------ writing

    def write_temp(self, name: str, data: bytes) -> str:
        """Write `data` under a temp name for `name`; returns the temp name."""
        tmp = self.temp_name(name)
        with self.fs.open(self.path(tmp), "wb") as f:
            f.write(data)
        return tmp

    def publish(self, tmp: str, name: str) -> None:
        """Rename temp `tmp` to `name`; a `name` held by a file that is not ours is refused."""
        if self.exists(name) and not self.owns(name):
            self._remove(tmp)
            raise OutputRefusedError(
                f"{self.path(name)} exists and was not written by this preprocessing output "
                f"(output_id {self.output_id}); it is left as it is. Move it away or choose "
                "another output."
            )
        self.fs.mv(self.path(tmp), self.path(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole file atomically (temp name, then rename), refusing foreign names."""
        self.publish(self.write_temp(name, data), name)

    def write_json(self, name: str, obj: dict[str, Any]) -> None:
        """Write a json object stamped with the output id (the proof it is ours)."""
        obj = {**obj, "output_id": self.output_id}
        self.write_bytes(name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------------ shards

    def shard_done(self, index: int) -> bool:
        """A shard is done when its stats json is ours and every tar it names exists."""
        stats = self.owned_json(f"{shard_name(index)}.json")
        return stats is not None and all(self.exists(t) for t in stats.get("tars", []))

    def reset_shards(self, indices: list[int]) -> None:
        """Delete what unfinished (or damaged) shards of ours left: their tars named by our shard
        jsons or shard-json temps, those jsons, and our temps of theirs. Then check that no
        name these shards write is held by a foreign file (OutputRefusedError)."""
        wanted = {shard_name(i) for i in indices}
        names = self.names()
        for name in names:
            shard = name.split(".", 1)[0]
            if shard not in wanted or not name.startswith(f"{shard}.json"):
                continue
            stats = self.owned_json(name)
            if stats is None:
                continue  # foreign: reported below
            for tar in stats.get("tars", []):
                if _part_of(tar) == shard:
                    self._remove(tar)
            self._remove(name)
        for name in names:
            if self.is_our_temp(name) and name.split(".", 1)[0].split("-")[0] in wanted:
                self._remove(name)
        taken = [
            n
            for n in self.names()
            if _part_of(n) in wanted or (n.endswith(".json") and n[:-5] in wanted)
        ]
        if taken:
            shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            raise OutputRefusedError(
                f"{self.url} holds {shown}, which this run must write, but this preprocessing "
                "output did not write it; it is left as it is. Move it away or choose another "
                "output."
            )

    def remove_temps(self) -> None:
        """Delete every temp file of this output (leftovers of interrupted runs)."""
        for name in self.names():
            if self.is_our_temp(name):
                self._remove(name)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on a local output for the length of a run (no-op for URLs)."""
        if not isinstance(self.fs, fsspec.implementations.local.LocalFileSystem):
            yield
            return
        import fcntl

        try:
            handle = open(self.path(LOCK), "a")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise OutputRefusedError(f"output {self.url} is not writable: {exc}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputRefusedError(
                    f"another preprocessing run is writing to {self.url}; wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _part_of(name: str) -> str | None:
    match = _PART.match(name)
    return match.group(1) if match else None


def claim(url: str, overwrite: bool = False) -> tuple[Output, dict[str, Any] | None]:
    """The output at `url` and its previous record (our config.json), or None when new.

    Refuses (OutputRefusedError) a location that holds a config.json this program did not write
    (or an older record format), and a non-empty one without our config.json unless
    `overwrite` (then foreign files stay untouched beside ours).
    """
    probe = Output(url, output_id="")
    names = [n for n in probe.names() if n != LOCK]
    if CONFIG in names:
        try:
            record = probe.read_json(CONFIG)
        except (OSError, ValueError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or record.get("tool") != TOOL:
            raise OutputRefusedError(
                f"{url} holds a {CONFIG} that musetalk preprocessing did not write; choose "
                "another output (nothing was changed)"
            )
        if record.get("format") != RECORD_FORMAT or not record.get("output_id"):
            raise OutputRefusedError(
                f"{url} was made by an older musetalk version (record format "
                f"{record.get('format', 1)}, this one writes {RECORD_FORMAT}); preprocess into a "
                "new output (nothing was changed)"
            )
        return Output(url, record["output_id"]), record
    if names and not overwrite:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OutputRefusedError(
            f"{url} is not empty and was not made by musetalk preprocessing (it holds {shown}); "
            "choose an empty or new directory, or pass overwrite=true to write beside those "
            "files (they are never deleted or replaced)"
        )
    return Output(url, uuid.uuid4().hex[:12]), None
