"""The user-facing notebooks run top to bottom on real shards and are stored without outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from musetalk import stats

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SHIFT_NOTEBOOK = NOTEBOOKS / "shift_statistics.ipynb"
KERNEL = "musetalk-test"
# The inline backend renders with Agg and sends the figures as image/png outputs.
INLINE = "module://matplotlib_inline.backend_inline"


@pytest.fixture(scope="module")
def shards(both_videos_shards: Path) -> Path:
    return both_videos_shards


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernelspec that runs this interpreter, whatever kernels the machine has installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    return root


def execute(path: Path, kernel_dir: Path, monkeypatch, **env: str) -> nbformat.NotebookNode:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    kernel_env = {k: v for k, v in os.environ.items() if k != stats.SHARDS_ENV}
    kernel_env.update(MPLBACKEND=INLINE, **env)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name=KERNEL)
    return client.execute(cwd=str(path.parent), env=kernel_env)


def stream_text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )


def count_images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


@pytest.mark.slow
def test_shift_statistics_notebook_runs_on_real_shards(shards, kernel_dir, monkeypatch):
    nb = execute(SHIFT_NOTEBOOK, kernel_dir, monkeypatch, **{stats.SHARDS_ENV: str(shards)})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert count_images(nb) == 4  # landmark shares, shift distributions, ranges, crops
    text = stream_text(nb)
    frames = stats.load_frames(shards)
    assert f"{len(frames)} frames in" in text
    assert frames["source_id"].nunique() == 2
    for source_id, group in frames.groupby("source_id"):
        expected = stats.recommend_bbox_shift(frames, group["landmarks"])
        assert f"Recommended bbox_shift for {source_id}: {expected.shift:+d} px" in text
        assert expected.reason in text
    for source_id, row in stats.per_source_ranges(frames).iterrows():
        assert f"{source_id}: {row['range_text']}" in text


@pytest.mark.slow
def test_shift_statistics_notebook_says_what_to_set(kernel_dir, monkeypatch):
    with pytest.raises(CellExecutionError) as info:
        execute(SHIFT_NOTEBOOK, kernel_dir, monkeypatch)
    assert f"{stats.SHARDS_ENV} is not set" in str(info.value)
    assert "preprocess output directory" in str(info.value)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] for cell in code)
    assert all(cell.execution_count is None for cell in code)
