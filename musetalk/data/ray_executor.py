"""Running the per-shard tasks on Ray: a local instance by default, or a cluster by address.

The driver retries a shard whose attempt failed, whatever the cause (a node lost with its
tasks, a worker process killed, an error), up to `executor.max_retries` more times, on any node
that is left; each attempt is numbered and the successful one is recorded in the shard json and
the manifest (`attempts`). Attempts write only temp files until they publish, so a lost attempt
leaves no partial shard; its temp files are removed at the end of the run. Progress (frames and
sources) flows from the tasks to the driver's bars through a small actor, and what a failed
attempt had reported is taken back.

Ray replaces "127.0.0.1" with the machine's network address unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; the local instance started here sets it, so that a local
run stays on loopback.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from musetalk.data.settings import PreprocessConfig
from musetalk.data.shard_task import run_shard
from musetalk.data.sources import Source

#: Frames reported by a task are sent to the driver in batches of at least this many.
FRAMES_PER_MESSAGE = 25


class TaskProgress:
    """Picklable progress callback of one attempt: sends (shard, attempt, what, n) to the
    driver's progress actor without waiting for it."""

    def __init__(self, actor: Any, shard: int, attempt: int) -> None:
        self.actor, self.shard, self.attempt = actor, shard, attempt
        self.frames = 0

    def __call__(self, what: str, n: int) -> None:
        if what == "frames":
            self.frames += n
            if self.frames < FRAMES_PER_MESSAGE:
                return
            what, n, self.frames = "frames", self.frames, 0
        elif self.frames:
            self.actor.add.remote(self.shard, self.attempt, "frames", self.frames)
            self.frames = 0
        self.actor.add.remote(self.shard, self.attempt, what, n)


def _progress_actor(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self) -> None:
            self.pending: list[tuple[int, int, str, int]] = []

        def add(self, shard: int, attempt: int, what: str, n: int) -> None:
            self.pending.append((shard, attempt, what, n))

        def take(self) -> list[tuple[int, int, str, int]]:
            taken, self.pending = self.pending, []
            return taken

    return Progress.remote()


def run_with_ray(
    todo: list[int],
    shards: list[list[Source]],
    config: PreprocessConfig,
    output_id: str,
    workers: int,
    bars: Any,
) -> list[int]:
    """Run `run_shard` for each index in `todo` as Ray tasks (1 CPU each), retrying failed
    attempts; returns the shards that failed every attempt.

    With `config.executor.address` None a local Ray instance with `workers` CPUs is started and
    shut down at the end; otherwise the existing cluster at that address is used. The output
    must then be reachable from every node (a shared filesystem or an fsspec URL).
    """
    if config.executor.address is None:  # read by Ray when it is imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on loopback
    try:
        import ray
    except ImportError as exc:
        raise ImportError("executor=ray needs Ray: pip install -e '.[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        if config.executor.address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=config.executor.address, log_to_driver=False)
    try:
        return _drive(ray, todo, shards, config, output_id, bars)
    finally:
        if started_here:
            ray.shutdown()


def _drive(ray, todo, shards, config, output_id, bars) -> list[int]:
    task = ray.remote(num_cpus=1, max_retries=0)(run_shard)  # retried here, counted
    actor = _progress_actor(ray)
    attempts: Counter = Counter()
    reported: Counter = Counter()  # (shard, attempt, what) -> n shown on the bars

    def submit(i: int) -> Any:
        attempts[i] += 1
        progress = TaskProgress(actor, i, attempts[i])
        # a task holds one CPU of its node: one thread each for decoding and torch
        return task.remote(i, shards[i], config, output_id, progress, attempts[i], threads=1)

    def drain() -> None:
        for shard, attempt, what, n in ray.get(actor.take.remote()):
            reported[(shard, attempt, what)] += n
            bars.update(what, n)

    pending = {submit(i): i for i in todo}
    failures = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        drain()
        for ref in done:
            i = pending.pop(ref)
            try:
                ray.get(ref)
            except Exception as exc:
                drain()
                for what in ("frames", "sources"):  # take back what the lost attempt showed
                    bars.update(what, -reported.pop((i, attempts[i], what), 0))
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if attempts[i] <= config.executor.max_retries:
                    print(f"shard {i} attempt {attempts[i]} failed ({error}); retrying")
                    pending[submit(i)] = i
                else:
                    print(f"shard {i} failed after {attempts[i]} attempt(s): {error}")
                    failures.append(i)
    drain()
    return sorted(failures)
