"""Preprocessing on a real multi-node Ray cluster on localhost (a head without CPUs and two
worker nodes of one CPU each), under faults: a worker process killed inside a task, the driver
killed and rerun, a node removed while its task runs, retries exhausted. Every finished output
must equal the local pool's byte for byte, with no partial file left.

Everything stays on 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from replacing it
with the machine's network address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import synth

from musetalk.config import parse
from musetalk.data.preprocess import PreprocessConfig, preprocess

REPO = Path(__file__).resolve().parents[1]
CLUSTER_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only
    "RAY_health_check_period_ms": "1000",  # notice a lost node in seconds, not tens of them
    "RAY_health_check_failure_threshold": "3",
    "RAY_DEDUP_LOGS": "0",
}
# Ray reads these when it is imported: set them first, for the whole test session (every Ray
# instance of the suite then stays on loopback).
os.environ.update(CLUSTER_ENV)
pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


def attempts(output: Path) -> dict[int, int]:
    lines = (output / "manifest.jsonl").read_text().splitlines()
    return {json.loads(x)["shard"]: json.loads(x)["attempts"] for x in lines}


def leftovers(output: Path) -> list[str]:
    """Temp files and other hidden files (the output's lock file stays, by design)."""
    return [
        p.name
        for p in output.iterdir()
        if (".tmp" in p.name or p.name.startswith(".")) and p.name != ".musetalk.lock"
    ]


def running_shard_tasks() -> list[int]:
    """PIDs of Ray worker processes executing `run_shard` (Ray titles them `ray::run_shard`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::run_shard"):
                pids.append(int(proc.name))
    return pids


def wait_for(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def listing(small_talking, tmp_path_factory) -> Path:
    """Four 3 s talking clips (the real video, mirrored and darkened), one shard each."""
    frames, speech = small_talking
    d = tmp_path_factory.mktemp("clips")
    variants = {
        "a": frames,
        "b": [f[:, ::-1] for f in frames],
        "c": [cv2.convertScaleAbs(f, alpha=0.8) for f in frames],
        "d": [cv2.convertScaleAbs(f[:, ::-1], alpha=0.7) for f in frames],
    }
    for name, clip in variants.items():
        synth.write_frames(d / f"{name}.mp4", clip, 25, audio=speech)
    path = d / "list.txt"
    path.write_text("".join(f"{d / n}.mp4\n" for n in variants))
    return path


@pytest.fixture(scope="module")
def local_output(listing, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    values = {"input": str(listing), "output": str(out), "workers": 1, "sources_per_shard": 1}
    preprocess(parse(PreprocessConfig, {**values, "progress": False}))
    return out


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        yield cluster, nodes
    finally:
        cluster.shutdown()


def start(
    listing: Path, out: Path, address: str, *extra: str, progress: bool = False
) -> subprocess.Popen:
    args = [
        sys.executable,
        str(REPO / "preprocess" / "run.py"),
        f"input={listing}",
        f"output={out}",
        "executor=ray",
        f"executor.address={address}",
        "sources_per_shard=1",
        f"progress={str(progress).lower()}",
        *extra,
    ]
    env = {**os.environ, **CLUSTER_ENV}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out.decode() + err.decode()


def test_worker_killed_inside_a_task_is_retried(cluster, listing, local_output, tmp_path):
    c, _ = cluster
    out = tmp_path / "out"
    proc = start(listing, out, c.address, progress=True)
    victim = wait_for(running_shard_tasks, what="a running shard task")[0]
    os.kill(victim, signal.SIGKILL)
    code, log = finish(proc)
    assert code == 0, log
    assert "attempt 1 failed" in log and "retrying" in log
    # the tasks' progress reached the driver's bars; the killed attempt's share was taken back
    frames = 4 * 75
    assert f"{frames}/{frames}" in log.split("frames")[-1], log[-2000:]
    assert "4/4" in log.split("sources")[-1]
    assert synth.tar_digest(out) == synth.tar_digest(local_output)
    assert sorted(attempts(out).values())[-1] == 2 and min(attempts(out).values()) == 1
    assert not leftovers(out)


def test_retries_are_bounded_and_the_rest_finishes(cluster, listing, local_output, tmp_path):
    """executor.max_retries=0: the shard whose only attempt dies is reported, every other shard
    is finished, the exit code is non-zero; the same command then completes the output."""
    c, _ = cluster
    out = tmp_path / "out"
    proc = start(listing, out, c.address, "executor.max_retries=0")
    os.kill(wait_for(running_shard_tasks, what="a running shard task")[0], signal.SIGKILL)
    code, log = finish(proc)
    assert code != 0 and "failed after 1 attempt(s)" in log, log
    assert len(list(out.glob("0000?.json"))) == 3 and not leftovers(out)
    code, log = finish(start(listing, out, c.address))
    assert code == 0, log
    assert synth.tar_digest(out) == synth.tar_digest(local_output)


def test_driver_killed_then_rerun_resumes(cluster, listing, local_output, tmp_path):
    c, _ = cluster
    out = tmp_path / "out"
    proc = start(listing, out, c.address)
    wait_for(lambda: list(out.glob("0000?.json")), what="a finished shard")
    proc.kill()
    proc.wait()
    code, log = finish(start(listing, out, c.address))
    assert code == 0, log
    assert synth.tar_digest(out) == synth.tar_digest(local_output)
    assert not leftovers(out)


def test_node_lost_while_its_task_runs(cluster, listing, local_output, tmp_path):
    """Both worker nodes run a task; one node is removed (its raylet and workers die, as on a
    preempted machine). The job finishes on the other node, equal to the local pool's output."""
    c, nodes = cluster
    out = tmp_path / "out"
    proc = start(listing, out, c.address)
    wait_for(lambda: len(running_shard_tasks()) >= 2, what="a task on each node")
    c.remove_node(nodes[1], allow_graceful=False)
    code, log = finish(proc)
    assert code == 0, log
    assert synth.tar_digest(out) == synth.tar_digest(local_output)
    assert max(attempts(out).values()) == 2, log
    assert not leftovers(out)
