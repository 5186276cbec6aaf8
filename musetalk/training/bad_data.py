"""What the training stream does with damaged data: skip it and say so, or stop and name it.

`BadDataLog` is handed to every data loader worker. With `on_bad_shard="skip"` (the default) a
shard that cannot be read (zero bytes, truncated, not a tar) and a sample that fails the reader's
checks (a json that lies about its frames, NaN landmarks, an undecodable JPEG, an unsafe member
name) are skipped; each is appended once per process, with its shard, key and reason, to
`<directory>/<rank>-<pid>.jsonl`, and `summarise` merges those files into
`<directory>/summary.json` at the end of training. With `"raise"` the first one stops training
with a ShardError naming the shard (and key). When nothing readable is left (every shard
damaged) the stream stops with a ShardError instead of looping.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from musetalk.errors import ShardError, ShardVersionError

__all__ = ["BAD_SHARD_MODES", "BadDataLog"]

BAD_SHARD_MODES = ("skip", "raise")
SUMMARY = "summary.json"


class BadDataLog:
    """Skips (recording) or raises on damaged shards and samples; see the module docstring.

    directory: where the records go (None: nowhere, the skips are only counted per process).
    num_shards: shards in the stream; more consecutive failures than `3 * num_shards + 10`
    without one good sample means nothing is readable.
    """

    def __init__(
        self,
        mode: Literal["skip", "raise"] = "skip",
        directory: str | os.PathLike[str] | None = None,
        num_shards: int = 1,
        rank: int = 0,
    ) -> None:
        if mode not in BAD_SHARD_MODES:
            raise ValueError(f"on_bad_shard must be one of {BAD_SHARD_MODES}, got {mode!r}")
        self.mode = mode
        self.directory = None if directory is None else Path(directory)
        self.limit = 3 * max(1, num_shards) + 10
        self.rank = rank
        self.failures_in_a_row = 0
        self.last = ""
        self.counts: Counter = Counter()
        self._seen: set[tuple[str, str, str]] = set()

    def shard_error(self, exc: Exception, url: str) -> bool:
        """`raw_samples` handler for an unreadable shard: True (go on) when skipping."""
        reason = f"{type(exc).__name__}: {exc}"
        if self.mode == "raise":
            raise ShardError(
                f"{url}: unreadable shard ({reason}); data.on_bad_shard=skip would skip it"
            ) from exc
        self._record("shard", url, "", reason)
        return True

    def sample_error(self, exc: ShardError, url: str, key: str) -> None:
        """A sample that failed the reader's checks: recorded when skipping, else raised (an
        unknown schema/region version always is)."""
        if self.mode == "raise" or isinstance(exc, ShardVersionError):
            raise exc
        self._record("sample", url, key, str(exc))

    def sample_ok(self) -> None:
        self.failures_in_a_row = 0

    def _record(self, kind: str, url: str, key: str, reason: str) -> None:
        self.counts[kind] += 1
        self.last = f"{url} {key} {reason}".replace("  ", " ")
        self.failures_in_a_row += 1
        if self.failures_in_a_row > self.limit:
            raise ShardError(
                f"no readable sample after {self.failures_in_a_row} damaged shards/samples in a "
                f"row (last: {self.last}); check data.shards"
            )
        if (kind, url, key) in self._seen or self.directory is None:
            return
        self._seen.add((kind, url, key))
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"kind": kind, "shard": url, "key": key, "reason": reason})
        with open(self.directory / f"rank{self.rank}-{os.getpid()}.jsonl", "a") as f:
            f.write(line + "\n")

    def summarise(self) -> dict[str, Any] | None:
        """Merge the records of every process into `summary.json`; None when nothing was
        skipped (or there is no directory)."""
        if self.directory is None or not self.directory.is_dir():
            return None
        unique: dict[tuple[str, str, str], dict[str, Any]] = {}
        for path in sorted(self.directory.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                unique.setdefault((record["kind"], record["shard"], record["key"]), record)
        if not unique:
            return None
        records = list(unique.values())
        summary = {
            "shards_skipped": sorted({r["shard"] for r in records if r["kind"] == "shard"}),
            "samples_skipped": sum(r["kind"] == "sample" for r in records),
            "records": records,
        }
        tmp = self.directory / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(self.directory / SUMMARY)
        return summary
