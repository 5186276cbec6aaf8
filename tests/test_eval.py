"""Evaluation: SyncNet v2 architecture and LSE arithmetic, metrics, and eval.py on a real video."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import synth
import torch

from musetalk.audio import load_audio
from musetalk.config import parse
from musetalk.errors import CheckpointError, UnsafeFileError
from musetalk.eval.evaluate import EvalConfig, NothingToMeasure, evaluate
from musetalk.eval.metrics import image_scores, pearson
from musetalk.eval.syncnet import SyncNetV2, lse_from_embeddings, mfcc_windows
from musetalk.video import iter_frames

REPO = Path(__file__).resolve().parents[1]
SECONDS = 3


# --------------------------------------------------------------------------- SyncNet v2


def test_syncnet_v2_layout_and_shapes() -> None:
    """The state dict keys and shapes of the public syncnet_v2.model, and 1024-d outputs."""
    torch.manual_seed(0)
    net = SyncNetV2().eval()
    state = net.state_dict()
    weights = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(weights) == 88  # 16 conv/linear x (weight, bias) + 14 batch norms x 4
    assert weights["netcnnaud.0.weight"] == (64, 1, 3, 3)
    assert weights["netcnnaud.18.weight"] == (512, 256, 5, 4)
    assert weights["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
    assert weights["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
    assert weights["netfcaud.3.weight"] == weights["netfclip.3.weight"] == (1024, 512)
    assert sum(int(np.prod(s)) for s in weights.values()) == 13_640_256
    with torch.no_grad():
        assert net.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert net.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)


def test_syncnet_v2_loads_a_state_dict_safely(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = SyncNetV2()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "syncnet_v2.model")
    loaded = SyncNetV2.load(tmp_path / "syncnet_v2.model")
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    del state["netfclip.3.weight"]
    torch.save(state, tmp_path / "partial.model")
    with pytest.raises(CheckpointError, match="netfclip.3.weight"):
        SyncNetV2.load(tmp_path / "partial.model")
    torch.save(net, tmp_path / "pickled.model")  # a whole module: never unpickled
    with pytest.raises(UnsafeFileError, match="pickled.model: refused"):
        SyncNetV2.load(tmp_path / "pickled.model")


@pytest.mark.parametrize("lag", [0, 3, -4])
def test_lse_of_constructed_embeddings(lag: int) -> None:
    """Audio embedding j = video embedding j + lag: the video lags the audio by `lag` frames,
    so the distance curve is smallest at offset +lag; LSE-D is that distance, LSE-C the median
    minus it (syncnet_python's statistics, its sign)."""
    rng = np.random.default_rng(2)
    count = 60
    video = torch.from_numpy(rng.standard_normal((count + 40, 16)).astype(np.float32))
    audio = video[20 + lag : 20 + lag + count]
    video = video[20 : 20 + count]
    result = lse_from_embeddings(video, audio, max_offset=15)
    assert sorted(result.curve) == list(range(-15, 16))
    assert result.av_offset == lag
    assert result.lse_d == pytest.approx(result.curve[lag])
    assert result.curve[lag] < 0.05 * np.median(list(result.curve.values()))
    assert result.lse_c == pytest.approx(np.median(list(result.curve.values())) - result.lse_d)


def test_mfcc_windows_are_20_frames_per_5_video_frames() -> None:
    from python_speech_features import mfcc

    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(640 * 30)).astype(np.float32)
    windows = mfcc_windows(audio, 30)
    assert windows.shape == (25, 1, 13, 20) and windows.dtype == np.float32
    full = mfcc(audio.astype(np.float64) * 32768.0, 16000).T
    np.testing.assert_allclose(windows[7, 0], full[:, 28:48], rtol=1e-5)


# --------------------------------------------------------------------------- metrics


def test_image_scores_and_pearson() -> None:
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    same = image_scores(a, a)
    assert np.isinf(same["psnr"]).all() and np.allclose(same["ssim"], 1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    scores = image_scores(noisy, a)
    mse = ((noisy.astype(float) - a) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(scores["psnr"], 10 * np.log10(255**2 / mse), rtol=1e-4)
    assert (scores["ssim"] < 1).all() and (scores["psnr_mouth"] > 20).all()
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


# --------------------------------------------------------------------------- eval.py


@pytest.fixture(scope="module")
def talking(shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(reference clip, the same clip with its video 5 frames late): 3 s of the real video at
    360x640 with its audio."""
    import cv2

    d = tmp_path_factory.mktemp("eval")
    frames = [
        cv2.resize(f, (360, 640), interpolation=cv2.INTER_AREA)
        for _, f in iter_frames(shared_data / "talking_demo1.mp4", end=25 * SECONDS)
    ]
    audio = load_audio(shared_data / "talking_demo1.mp4")[: 16000 * SECONDS]
    reference = synth.write_frames(d / "reference.mp4", frames, 25, audio=audio)
    late = [frames[0]] * 5 + frames[:-5]
    delayed = synth.write_frames(d / "late.mp4", late, 25, audio=audio)
    return reference, delayed


def run_eval(tmp_path: Path, generated: Path, reference: Path | None, **over) -> dict:
    values = {
        "generated": str(generated),
        "reference": None if reference is None else str(reference),
        "output": str(tmp_path / "report.json"),
        "progress": False,
        **over,
    }
    return evaluate(parse(EvalConfig, values))


def test_video_against_itself_and_against_its_delayed_copy(talking, tmp_path: Path) -> None:
    reference, delayed = talking
    same = run_eval(tmp_path / "same", reference, reference)
    assert same["frames"] == same["frames_measured"] == 25 * SECONDS
    assert same["lmd"] == 0.0 and same["psnr"] >= 60 and same["ssim"] == pytest.approx(1.0)
    assert same["av_offset"] == 0 and same["mouth_open_corr"] == pytest.approx(1.0)
    assert same["lse_c"] is None and "syncnet" in same["lse_reason"]
    late = run_eval(tmp_path / "late", delayed, reference)
    assert late["lmd"] > 0.02 and late["psnr"] < 40
    assert late["av_offset"] == 5  # + = the generated mouth lags its audio
    for name in ("report.json", "report.csv", "report.png"):
        assert (tmp_path / "late" / name).stat().st_size > 0
    report = json.loads((tmp_path / "late" / "report.json").read_text())
    assert report["offset_measure"] == "lmd" and len(report["offset_curve"]) == 31
    with open(tmp_path / "late" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 25 * SECONDS and {"lmd", "psnr_mouth", "ssim"} <= set(rows[0])


def test_lse_path_with_seeded_syncnet_weights(talking, tmp_path: Path) -> None:
    """With syncnet= the report has LSE-C/LSE-D (random weights here: the arithmetic and the
    pipeline, not the meaning) and the SyncNet offset curve."""
    reference, _ = talking
    torch.manual_seed(5)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), weights)
    report = run_eval(tmp_path, reference, None, syncnet=str(weights))
    assert report["offset_measure"] == "syncnet" and len(report["offset_curve"]) == 31
    assert np.isfinite(report["lse_d"]) and report["lse_c"] >= 0
    assert report["lse_frames"] == 25 * SECONDS and -15 <= report["av_offset"] <= 15


def test_nothing_to_measure_and_cli(talking, tmp_path: Path) -> None:
    reference, _ = talking
    rng = np.random.default_rng(6)
    noise = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(30)]
    faceless = synth.write_frames(tmp_path / "noise.mp4", noise, 25)
    with pytest.raises(NothingToMeasure, match="no frame has a face in both"):
        run_eval(tmp_path, faceless, faceless)
    with pytest.raises(NothingToMeasure, match="syncnet"):
        run_eval(tmp_path, reference, None)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "eval.py"),
            f"generated={reference}",
            f"output={tmp_path}/r.json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "eval: without reference= only sync can be measured, which needs syncnet=<syncnet_v2.model>"
    ]
