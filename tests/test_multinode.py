"""Training on two nodes for real: two torchrun node processes on localhost (`--nnodes 2`,
`--master-addr 127.0.0.1`, gloo), one Lightning job with `trainer=multinode` sharing one run dir.
The job trains both ranks on different samples and exports once; a resume of the two-node job
continues at the right step; when one node dies (its torchrun agent and its worker, as when the
machine goes away), the surviving node stops promptly with a message, and the restarted job
resumes from the last checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run: Path, shards: Path, port: int, *overrides: str) -> list[subprocess.Popen]:
    """Both node processes of one two-node job (each in its own session, like two machines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    nodes = []
    for rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
            "--master-port", str(port), str(REPO / "train.py"), "+experiment=tiny",
            "trainer=multinode", "trainer.num_nodes=2", "trainer.devices=1",
            "trainer.accelerator=cpu", "trainer.precision=32-true",
            "trainer.strategy.timeout.seconds=30", f"data.shards={shards}",
            f"hydra.run.dir={run}", "data.batches_per_epoch=2", "trainer.val_check_interval=2",
            "callbacks.checkpoint.every_n_train_steps=2",
            "+callbacks.samples._target_=musetalk.training.callbacks.SampleLog",
            f"+callbacks.samples.dirpath={run / 'samples'}",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            *overrides,
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(
                command,
                cwd=run.parent,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    return nodes


def finish(nodes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    logs = [n.communicate(timeout=timeout)[0] for n in nodes]
    return [(n.returncode, log) for n, log in zip(nodes, logs, strict=True)]


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the process ended meanwhile
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def step_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def sample_rows(run: Path, rank: int) -> list[list[str]]:
    lines = (run / "samples" / f"rank{rank}.tsv").read_text().splitlines()
    return [line.split("\t") for line in lines]


def test_two_nodes_train_resume_and_survive_a_lost_node(demo_shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # 1. a two-node job: both ranks train, on different samples; one export
    results = finish(launch(run, demo_shards, free_port(), "trainer.max_steps=4"))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    rows = {rank: sample_rows(run, rank) for rank in (0, 1)}
    assert [int(r[0]) for r in rows[0]] == [int(r[0]) for r in rows[1]] == [1, 2, 3, 4]
    assert {r[2] for r in rows[0]} != {r[2] for r in rows[1]}  # different clips per rank
    assert [p.name for p in run.glob("**/musetalk.json")] == ["musetalk.json"]
    assert step_of(run / "checkpoints" / "last.ckpt") == 4

    # 2. the same job resumed from last.ckpt continues at step 4; one node dies mid-run
    last = run / "checkpoints" / "last.ckpt"
    nodes = launch(run, demo_shards, free_port(), f"ckpt_path={last}", "trainer.max_steps=400")
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step0000008.ckpt").exists():
        assert time.monotonic() < deadline, "the resumed job made no progress"
        assert all(n.poll() is None for n in nodes), finish(nodes)[0][1][-3000:]
        time.sleep(0.2)
    for pid in descendants(nodes[1].pid):  # the whole machine: agent and worker
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code, log = finish([nodes[0]], timeout=120)[0]
    nodes[1].wait()
    assert code != 0 and time.monotonic() - killed_at < 90
    assert "another rank of this distributed job is gone" in log, log[-3000:]
    assert f"ckpt_path={last}" in log
    resumed_steps = [int(r[0]) for r in sample_rows(run, 0)[4:]]
    assert resumed_steps[:2] == [5, 6]  # the resumed job went on after step 4, not from 0

    # 3. restarted on both nodes from the last checkpoint: finishes two steps later
    step = step_of(last)
    assert step >= 8
    results = finish(
        launch(run, demo_shards, free_port(), f"ckpt_path={last}", f"trainer.max_steps={step + 2}")
    )
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert step_of(last) == step + 2
