"""Whisper features, per-frame audio windows and the positional encoding (tiny random encoder)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_whisper
from transformers import WhisperFeatureExtractor, WhisperModel

from musetalk.audio.whisper import WhisperEncoder
from musetalk.audio.windows import (
    add_positional_encoding,
    audio_windows,
    num_frames_for,
    num_steps_for,
    sinusoidal_encoding,
    window_steps,
)

SR = 16000
LAYERS = 2
DIM = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random tiny WhisperModel + the default feature extractor, saved in the HF layout."""
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper_tiny_random"), layers=LAYERS, dim=DIM)


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> WhisperEncoder:
    return WhisperEncoder(model=str(model_dir))


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """(N,) float32 at 16 kHz: noise under a wandering tone, amplitude changing over time."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    t = np.arange(n) / SR
    tone = np.sin(2 * np.pi * (200 + 100 * np.sin(2 * np.pi * 0.3 * t)) * t)
    envelope = 0.5 + 0.4 * np.sin(2 * np.pi * 1.7 * t)
    return (0.3 * envelope * tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_encode_matches_direct_transformers_call(encoder: WhisperEncoder, model_dir: Path) -> None:
    audio = speech_like(7.3)
    feats = encoder.encode(audio)
    steps = len(audio) // 320
    assert feats.shape == (steps, LAYERS + 1, DIM) and feats.dtype == np.float32

    mel = WhisperFeatureExtractor.from_pretrained(model_dir)(
        audio, sampling_rate=SR, return_tensors="pt"
    ).input_features
    assert mel.shape == (1, 80, 3000)
    reference = WhisperModel.from_pretrained(model_dir).encoder.eval()
    with torch.no_grad():
        out = reference(mel, output_hidden_states=True)
        # Embedding output (convolutions + positions) and layer 1, computed from the modules.
        x = torch.nn.functional.gelu(reference.conv1(mel))
        x = torch.nn.functional.gelu(reference.conv2(x)).permute(0, 2, 1)
        embedded = x + reference.embed_positions.weight
        layer1 = reference.layers[0](embedded, None)
    assert len(out.hidden_states) == LAYERS + 1
    for k, state in enumerate(out.hidden_states):
        np.testing.assert_allclose(feats[:, k], state[0, :steps].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats[:, 0], embedded[0, :steps].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats[:, 1], layer1[0, :steps].numpy(), rtol=1e-5, atol=1e-5)
    last = out.last_hidden_state[0, :steps].numpy()  # after the final LayerNorm
    np.testing.assert_allclose(feats[:, -1], last, rtol=1e-5, atol=1e-5)


def test_long_audio_has_no_seams(encoder: WhisperEncoder) -> None:
    audio = speech_like(45.0, seed=1)
    feats = encoder.encode(audio)
    assert feats.shape == (2250, LAYERS + 1, DIM)
    first = encoder.encode(audio[: 30 * SR])
    second = encoder.encode(audio[30 * SR :])
    assert first.shape[0] == 1500 and second.shape[0] == 750
    np.testing.assert_allclose(feats[:1500], first, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats[1500:], second, rtol=1e-5, atol=1e-5)
    one_at_a_time = encoder.encode(audio, batch_size=1)
    np.testing.assert_allclose(feats, one_at_a_time, rtol=1e-5, atol=1e-5)


def test_step_count_drops_partial_steps(encoder: WhisperEncoder) -> None:
    for n in (0, 319, 320, 30 * SR - 1, 30 * SR + 319, 30 * SR + 320):
        feats = encoder.encode(np.zeros(n, np.float32))
        assert feats.shape == (n // 320, LAYERS + 1, DIM), n
        assert num_steps_for(n) == n // 320


def test_pytorch_bin_only_dir_loads_with_weights_only(
    encoder: WhisperEncoder, model_dir: Path, tmp_path: Path
) -> None:
    """MuseTalk's whisper/ dir has only pytorch_model.bin: it loads; pickled code does not run."""
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    state = WhisperModel.from_pretrained(model_dir).state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    audio = speech_like(2.0, seed=2)
    loaded = WhisperEncoder(str(tmp_path)).encode(audio)
    np.testing.assert_allclose(loaded, encoder.encode(audio), rtol=1e-6, atol=1e-6)

    marker = tmp_path / "pwned"
    torch.save({"encoder.conv1.weight": _CreatesFile(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed"):
        WhisperEncoder(str(tmp_path))
    assert not marker.exists()
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)  # control: unpickling runs it
    assert marker.exists()


class _CreatesFile:
    """Pickles to a call of open(path, "w"): code a plain unpickler would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def test_bad_inputs_raise(encoder: WhisperEncoder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        WhisperEncoder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        WhisperEncoder(str(tmp_path))
    with pytest.raises(ValueError, match="16000 Hz"):
        encoder.encode(np.zeros(44100, np.float32), sr=44100)
    with pytest.raises(ValueError, match=r"mono float audio of shape \(N,\)"):
        encoder.encode(np.zeros((16000, 2), np.float32))
    with pytest.raises(ValueError, match="mono float"):
        encoder.encode(np.zeros(16000, np.int16))
    with pytest.raises(ValueError, match="NaN"):
        encoder.encode(np.full(16000, np.nan, np.float32))


def test_uncached_hub_id_offline_says_to_pass_a_local_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="pass a local directory"):
        WhisperEncoder("musetalk-tests/no-such-whisper-model")


def coded_features(steps: int, layers: int = 5, dim: int = 3) -> np.ndarray:
    """(steps, layers, dim) float32 whose entries are 1000 + 10 * step + layer (never 0)."""
    s = np.arange(steps)[:, None, None]
    k = np.arange(layers)[None, :, None]
    return np.broadcast_to(1000.0 + 10 * s + k, (steps, layers, dim)).astype(np.float32)


def test_windows_index_steps_and_layers() -> None:
    num_frames = 9
    feats = coded_features(2 * num_frames)
    win = audio_windows(feats, num_frames)
    assert win.shape == (num_frames, 50, 3) and win.dtype == np.float32
    for i in range(num_frames):
        for t in range(50):
            step, layer = 2 * i - 4 + t // 5, t % 5
            expected = 1000.0 + 10 * step + layer if 0 <= step < 2 * num_frames else 0.0
            assert np.all(win[i, t] == expected), (i, t)
    assert np.all(win[0, :20] == 0) and np.all(win[0, 20:] != 0)  # steps -4..-1 padded
    assert np.all(win[1, :10] == 0) and np.all(win[1, 10:] != 0)
    assert np.all(win[-1, :30] != 0) and np.all(win[-1, 30:] == 0)  # steps 18..21 padded


def test_windows_torch_and_start_frame_agree_with_numpy() -> None:
    feats = coded_features(40, layers=3, dim=4)
    full = audio_windows(feats, 20)
    assert full.shape == (20, 30, 4)
    np.testing.assert_array_equal(audio_windows(feats, 5, start_frame=15), full[15:])
    as_torch = audio_windows(torch.from_numpy(feats).half(), 20)
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float16
    np.testing.assert_array_equal(as_torch.float().numpy(), full)
    assert audio_windows(feats, 0).shape == (0, 30, 4)


def test_windows_reject_features_too_short_for_the_frames() -> None:
    audio_windows(coded_features(19), 10)  # frame 9 starts at step 18 < 19
    with pytest.raises(ValueError, match="only 18 steps"):
        audio_windows(coded_features(18), 10)
    with pytest.raises(ValueError, match=r"\(T50, L, d\)"):
        audio_windows(np.zeros((10, 50)), 2)


def test_frame_and_step_counts() -> None:
    assert num_frames_for(16000) == 25
    assert num_frames_for(16000 + 639) == 25 and num_frames_for(16000 + 640) == 26
    assert num_frames_for(60 * 16000) == 1500
    assert num_frames_for(48000, sr=48000, fps=30) == 30
    assert num_steps_for(16000) == 50 and num_steps_for(639) == 1
    # Every frame of num_frames_for(N) finds its own steps in num_steps_for(N) features.
    for n in range(0, 4000, 37):
        frames, steps = num_frames_for(n), num_steps_for(n)
        assert frames == 0 or window_steps(frames)[-1, 5] < steps


def test_windows_at_other_fps() -> None:
    np.testing.assert_array_equal(window_steps(3, fps=50)[:, 4], [0, 1, 2])
    np.testing.assert_array_equal(window_steps(4, fps=30)[:, 4], [0, 1, 3, 5])


def test_positional_encoding_matches_formula() -> None:
    d = 384
    pe = sinusoidal_encoding(50, d)
    assert pe.shape == (50, d) and pe.dtype == torch.float32
    for pos in (0, 1, 7, 49):
        for k in (0, 1, 50, 191):
            angle = pos / 10000 ** (2 * k / d)
            assert pe[pos, 2 * k].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * k + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    x = torch.randn(2, 3, 50, d)
    torch.testing.assert_close(add_positional_encoding(x) - x, pe.expand_as(x))
    half = add_positional_encoding(x.half())
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_encoding(50, 7)


@pytest.mark.parametrize(
    ("first", "count"),
    [(0, 25), (100, 100), (740, 20), (748, 4), (1490, 250), (1740, 10)],
    ids=["start", "inside", "straddles_30s", "at_30s", "straddles_60s", "at_the_end"],
)
def test_sample_context_tokens_equal_inference_tokens(
    encoder: WhisperEncoder, tmp_path: Path, first: int, count: int
) -> None:
    """ContextReader's stored steps (what preprocessing caches) and its audio encoded window
    by window (the training wav path) give inference's tokens of source frames first.. on a
    70 s source: across the 30 s window boundaries and at the source's end."""
    from musetalk.audio import load_audio, write_wav
    from musetalk.audio.context import context_features
    from musetalk.data.audio_context import ContextReader

    rng = np.random.default_rng(3)
    audio = (0.3 * rng.standard_normal(16000 * 70)).astype(np.float32)
    path = tmp_path / "long.wav"
    write_wav(path, audio)
    source = encoder.encode(load_audio(path))  # inference: the whole file, windows from 0
    with ContextReader(str(path), encoder) as reader:
        context, context_audio, states = reader.read(first, count)
    want = audio_windows(source, count, start_frame=first)
    np.testing.assert_allclose(context_features(states, context, count), want, atol=1e-5)
    windows = np.zeros(context.num_windows * 480000, np.float32)
    windows[: len(context_audio)] = context_audio
    from_audio = context_features(encoder.encode_windows(windows), context, count)
    np.testing.assert_allclose(from_audio, want, atol=1e-5)
