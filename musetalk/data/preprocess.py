"""Talking-face videos -> WebDataset shards, in parallel, resumable, incremental, never touching
files it did not write.

A run checks everything first (settings, face backend options, input, output ownership, the
record of earlier runs), then writes `config.json`, the output's record: the resolved settings,
their fingerprint, and which sources went into which shard. Sources are grouped into shards
deterministically (`sources_per_shard` each, sorted); one task per shard writes
`NNNNN-PPP.tar` parts (a new part every `samples_per_shard` samples) and `NNNNN.json`, the
shard's stats and done-marker (`musetalk.data.shard_task`). A rerun keeps the recorded
assignment: finished shards are skipped, unfinished ones are cleaned (only files provably ours,
see `musetalk.data.output`) and redone, and sources added to the input since go into new shards
after the last one, so no sample is ever written twice. At the end the shard jsons are merged
into `stats.json` and `manifest.jsonl` (`musetalk.data.summary`).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from musetalk.data.output import CONFIG, MANIFEST, RECORD_FORMAT, STATS, TOOL, Output, claim
from musetalk.data.settings import RUNTIME_ONLY, PreprocessConfig
from musetalk.data.shard_task import limit_threads, run_shard
from musetalk.data.sources import VIDEO_EXTENSIONS, Source, assign_shards, list_sources
from musetalk.data.summary import format_summary, write_summary
from musetalk.errors import ConfigError, InputError, OutputRefusedError
from musetalk.face.analyzer import check_face
from musetalk.video import probe

__all__ = ["PreprocessConfig", "preprocess"]


# ---------------------------------------------------------------------------------------------
# The job


def preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """Run (or resume, or extend) a preprocessing job; returns the dataset summary
    (also `stats.json`). Everything is checked before the first file is written."""
    started = time.time()
    check_face(config.face)
    if config.audio.features == "whisper":  # a local dir must hold the model (hub ids load later)
        from musetalk.audio.whisper import local_model_dir  # torch only when it is used

        local_model_dir(config.audio.model)
    if config.executor.name == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("executor.name=ray needs Ray: pip install -e '.[ray]'")
    sources = list_sources(config.input)
    if not sources:
        raise InputError(
            f"no video files found in {config.input!r} "
            f"(looked for {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    check_separate(config, sources)
    out, record = claim(config.output, config.overwrite)
    if record is not None:
        check_same_settings(record, config)
    shards, notes = plan_shards(sources, record, config.sources_per_shard, out)
    try:
        out.fs.makedirs(out.root, exist_ok=True)
    except OSError as exc:
        raise OutputRefusedError(f"output={config.output!r} cannot be created: {exc}") from None
    with out.lock():
        todo = [i for i in range(len(shards)) if not out.shard_done(i)]
        out.reset_shards(todo)  # first: our shard-json temps prove which tars are ours
        out.remove_temps()
        for name in (STATS, MANIFEST):
            if out.exists(name) and not out.owns(name):
                raise OutputRefusedError(
                    f"{out.path(name)} exists and was not written by this preprocessing output; "
                    "it is left as it is. Move it away or choose another output."
                )
        out.write_json(CONFIG, _record(config, shards, todo, record, len(sources)))
        workers = min(config.workers or os.cpu_count() or 1, max(1, len(todo)))
        if config.progress:
            for note in notes:
                print(note)
            print(
                f"musetalk preprocess: {sum(map(len, shards))} sources in {len(shards)} shards "
                f"({len(shards) - len(todo)} already done), {workers} {config.executor.name} "
                f"workers -> {config.output}"
            )
        failures = _run(todo, shards, config, out.output_id, workers)
        out.remove_temps()  # of attempts that died (a lost node, a killed worker): none is running
        summary = write_summary(
            out, len(shards), time.time() - started, face_backend=config.face["backend"]
        )
    summary["failed_shards"] = failures
    if config.progress:
        print(format_summary(summary))
    if failures:
        raise RuntimeError(
            f"{len(failures)} shard task(s) failed and were not written: {failures}; "
            "the other shards are complete. Re-run the same command to retry them."
        )
    return summary


def check_separate(config: PreprocessConfig, sources: list[Source]) -> None:
    """Refuse an output inside the input directory, or inputs inside the output."""
    if "://" in config.output:
        return
    output = Path(os.path.abspath(Path(config.output).expanduser()))
    given = Path(os.path.abspath(Path(config.input).expanduser()))
    if given.is_dir() and (output == given or given in output.parents):
        raise ConfigError(
            f"output={config.output!r} is inside input={config.input!r}: choose an output outside "
            "the input directory"
        )
    files = [given] + [Path(p) for s in sources for p in (s.video, s.audio) if p and "://" not in p]
    inside = next((f for f in files if output == f or output in f.parents), None)
    if inside is not None:
        raise ConfigError(
            f"input {str(inside)!r} is inside output={config.output!r}: preprocessing never "
            "reads from or writes over its inputs; choose another output"
        )


def check_same_settings(record: dict[str, Any], config: PreprocessConfig) -> None:
    """Refuse to mix two different configurations in one output directory."""
    if record.get("fingerprint") == config.fingerprint():
        return
    before = _flat(record.get("config", {}))
    after = _flat(config.to_json())
    changed = [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if k.split(".")[0] not in RUNTIME_ONLY and before.get(k) != after.get(k)
    ]
    raise OutputRefusedError(
        f"{config.output} was made with a different configuration ({'; '.join(changed)}); rerun "
        "with the same settings, or preprocess into a new output"
    )


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "face":
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def plan_shards(
    sources: list[Source], record: dict[str, Any] | None, per_shard: int | None, out: Output
) -> tuple[list[list[Source]], list[str]]:
    """The shard assignment: the recorded one, then the sources new since, in new shards.

    A recorded source of a finished shard whose file changed (size or mtime) is refused: its
    samples would be stale, and redoing them elsewhere would duplicate their keys. Returns the
    shards and notes for the user (sources added, sources no longer in the input).
    """
    if record is None:
        return assign_shards(sources, per_shard), []
    recorded = [[Source.from_record(r) for r in shard] for shard in record["shards"]]
    stats = {
        (s.video, s.audio): (i, r)
        for i, shard in enumerate(record["shards"])
        for s, r in zip(recorded[i], shard, strict=True)
    }
    for source in sources:
        if (source.video, source.audio) not in stats:
            continue
        index, then = stats[(source.video, source.audio)]
        now = source.record()
        if now != then and out.shard_done(index):
            raise OutputRefusedError(
                f"source {source.video} changed since it was preprocessed into shard "
                f"{index:05d} ({_describe_change(then, now)}); its samples there would be stale. "
                "Restore the file, or preprocess into a new output."
            )
    new = [s for s in sources if (s.video, s.audio) not in stats]
    current = {(s.video, s.audio) for s in sources}
    gone = [k for k in stats if k not in current]
    notes = []
    if new:
        notes.append(f"{len(new)} new source(s) since the last run: added as new shards")
    if gone:
        notes.append(f"{len(gone)} recorded source(s) are no longer in the input: kept as they are")
    return recorded + assign_shards(new, per_shard), notes


def _describe_change(then: dict[str, Any], now: dict[str, Any]) -> str:
    return ", ".join(f"{k} {then.get(k)} -> {now.get(k)}" for k in now if then.get(k) != now.get(k))


def _record(
    config: PreprocessConfig,
    shards: list[list[Source]],
    todo: list[int],
    previous: dict[str, Any] | None,
    num_input: int,
) -> dict[str, Any]:
    """The output's config.json: settings, fingerprint, assignment (with the size and mtime of
    each source as processed) and the runs so far."""
    before = previous["shards"] if previous else []
    entries = [
        list(before[i]) if i < len(before) and i not in todo else [s.record() for s in shard]
        for i, shard in enumerate(shards)
    ]
    run = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "input": config.input,
        "input_sources": num_input,
        "new_shards": len(shards) - len(before),
    }
    return {
        "tool": TOOL,
        "format": RECORD_FORMAT,
        "fingerprint": config.fingerprint(),
        "config": config.to_json(),
        "shards": entries,
        "runs": [*(previous or {}).get("runs", []), run],
    }


def _run(
    todo: list[int],
    shards: list[list[Source]],
    config: PreprocessConfig,
    output_id: str,
    workers: int,
) -> list[int]:
    """Run the shard tasks with the configured executor; returns the indices that failed."""
    if not todo:
        return []
    bars = _Bars(sum(len(shards[i]) for i in todo), enabled=config.progress)
    if config.progress:
        bars.count_frames([s for i in todo for s in shards[i]])
    try:
        if config.executor.name == "ray":
            from musetalk.data.ray_executor import run_with_ray

            return run_with_ray(todo, shards, config, output_id, workers, bars)
        if workers == 1:
            failures = []
            for i in todo:
                try:
                    run_shard(i, shards[i], config, output_id, bars.update)
                except Exception as exc:
                    print(f"shard {i} failed: {type(exc).__name__}: {exc}")
                    failures.append(i)
            return failures
        return _run_pool(todo, shards, config, output_id, workers, bars)
    finally:
        bars.close()


def _run_pool(todo, shards, config, output_id, workers, bars) -> list[int]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()  # progress from the workers: handed over at their start, no server process
    pump = threading.Thread(target=_pump, args=(queue, bars), daemon=True)
    pump.start()
    failures = []
    threads = max(1, (os.cpu_count() or 1) // workers)  # per worker: no oversubscription
    try:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_start_worker,
            initargs=(queue, threads),
        ) as pool:
            futures = {
                pool.submit(run_shard, i, shards[i], config, output_id, _QueueProgress()): i
                for i in todo
            }
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as exc:
                    print(f"shard {futures[future]} failed: {type(exc).__name__}: {exc}")
                    failures.append(futures[future])
    finally:
        queue.put(None)
        pump.join()
        queue.close()
    return sorted(failures)


_progress_queue = None  # in a pool worker: the parent's progress queue


def _start_worker(queue, threads: int) -> None:
    """Pool worker start-up: the progress queue, and the thread budget (`limit_threads`)."""
    global _progress_queue
    _progress_queue = queue
    limit_threads(threads)


class _QueueProgress:
    """Picklable progress callback of a pool task: forwards (what, n) to the parent's queue."""

    def __init__(self) -> None:
        self.pending = 0

    def __call__(self, what: str, n: int) -> None:
        if what == "frames":
            self.pending += n
            if self.pending >= 25:
                _progress_queue.put(("frames", self.pending))
                self.pending = 0
        else:
            if self.pending:
                _progress_queue.put(("frames", self.pending))
                self.pending = 0
            _progress_queue.put((what, n))


def _pump(queue, bars: _Bars) -> None:
    while (item := queue.get()) is not None:
        bars.update(*item)


class _Bars:
    """Two progress bars: sources and frames (rate in frames/s), both with a total and an ETA.
    The frame total is the sources' length at 25 fps from their containers, summed by a
    background thread (`count_frames`) while the work runs."""

    def __init__(self, total_sources: int, enabled: bool) -> None:
        self.sources = tqdm(total=total_sources, desc="sources", unit="src", disable=not enabled)
        self.frames = tqdm(total=0, desc="frames ", unit="fr", disable=not enabled)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counter: threading.Thread | None = None

    def count_frames(self, sources: list[Source]) -> None:
        self.counter = threading.Thread(target=self._count, args=(sources,), daemon=True)
        self.counter.start()

    def _count(self, sources: list[Source]) -> None:
        for source in sources:
            if self.stop.is_set():
                return
            try:
                frames = probe(source.video).num_frames
            except Exception:  # the shard task reports unusable files with their reason
                frames = 0
            with self.lock:
                self.frames.total += frames
                self.frames.refresh()

    def update(self, what: str, n: int) -> None:
        with self.lock:
            (self.sources if what == "sources" else self.frames).update(n)

    def close(self) -> None:
        self.stop.set()
        if self.counter is not None:
            self.counter.join()
        if self.sources.n == self.sources.total and self.frames.n < self.frames.total:
            # every source is done: the rest of the estimate were frames of skipped sources
            self.frames.total = self.frames.n
            self.frames.refresh()
        self.frames.close()
        self.sources.close()
