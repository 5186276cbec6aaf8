"""Seconds spent per named stage, for the per-stage timings of preprocessing and inference."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator


class StageTimes:
    """Seconds and calls per named stage: `with times("unet"): ...`.

    sync: called at the end of each stage before the clock is read (e.g.
    `torch.cuda.synchronize`, so that GPU stages are timed when they finish, not when queued).
    """

    def __init__(self, sync: Callable[[], object] | None = None) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def as_dict(self, digits: int | None = None) -> dict[str, float]:
        """Stage -> seconds, sorted by stage (rounded to `digits` when given)."""
        return {
            k: v if digits is None else round(v, digits) for k, v in sorted(self.seconds.items())
        }
