"""Running the per-shard tasks on Ray: a local instance by default, or a cluster by address."""

from __future__ import annotations

from typing import Any

from musetalk.data.settings import PreprocessConfig
from musetalk.data.shard_task import run_shard
from musetalk.data.sources import Source


def run_with_ray(
    todo: list[int],
    shards: list[list[Source]],
    config: PreprocessConfig,
    output_id: str,
    workers: int,
    bars: Any,
) -> list[int]:
    """Run `run_shard` for each index in `todo` as Ray tasks (1 CPU each); returns failures.

    With `config.executor.address` None a local Ray instance with `workers` CPUs is started and
    shut down at the end; otherwise the existing cluster at that address is used. The output
    must then be reachable from every node (a shared filesystem or an fsspec URL).
    """
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
        task = ray.remote(num_cpus=1, max_retries=1)(run_shard)
        pending = {task.remote(i, shards[i], config, output_id, None): i for i in todo}
        failures = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                stats = ray.get(done[0])
            except Exception as exc:
                print(f"shard {index} failed: {type(exc).__name__}: {exc}")
                failures.append(index)
                continue
            bars.update("frames", sum(s["frames_decoded"] for s in stats["sources"]))
            bars.update("sources", len(shards[index]))
        return sorted(failures)
    finally:
        if started_here:
            ray.shutdown()
