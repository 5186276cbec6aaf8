"""Whisper encoder features: 16 kHz mono audio -> all encoder hidden states at 50 Hz.

MuseTalk conditions on whisper-tiny's encoder: the log-mel of consecutive 30 s windows (the only
input length the encoder accepts: 3000 mel frames), every hidden state stacked (embedding output
first, then each layer; the last one after the encoder's final LayerNorm, as transformers returns
it), the padding steps of the last window dropped. `musetalk.audio.windows` turns the result into
per-video-frame tokens.

Weights load through transformers' `from_pretrained`: safetensors when the directory has them; a
directory with only `pytorch_model.bin` (MuseTalk's released `whisper/` layout) is read with
`torch.load(weights_only=True)`, which refuses pickled code, so no untrusted pickle is executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from musetalk.audio.windows import STEPS_PER_SECOND, num_steps_for
from musetalk.errors import MissingWeightsError
from musetalk.files import looks_local, require_files
from musetalk.timebase import SAMPLE_RATE

__all__ = ["DEFAULT_WHISPER", "WhisperEncoder", "check_whisper_dir", "local_model_dir"]

from musetalk.audio import DEFAULT_WHISPER  # noqa: E402  (defined there: no torch to name it)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"expected a floating torch dtype such as 'float16', got {dtype!r}")
    return value


def check_whisper_dir(path: Path) -> None:
    """An HF Whisper directory (config.json, preprocessor_config.json, model.safetensors or
    pytorch_model.bin); MuseTalk 1.0's openai-whisper `tiny.pt` gets its own message."""
    if (path / "tiny.pt").is_file() and not (path / "config.json").is_file():
        raise MissingWeightsError(
            f"{path} holds tiny.pt (MuseTalk 1.0's openai-whisper checkpoint); this framework "
            f"reads the Hugging Face layout: put openai/whisper-tiny (config.json, "
            f"preprocessor_config.json, model.safetensors or pytorch_model.bin) in {path}, as "
            f"MuseTalk 1.5's download script does"
        )
    groups = [
        ("config.json",),
        ("preprocessor_config.json",),
        ("model.safetensors", "pytorch_model.bin"),
    ]
    require_files(path, groups, "Whisper model")


def local_model_dir(model: str) -> Path | None:
    """The directory `model` names (checked with `check_whisper_dir`), None for a hub id."""
    if not looks_local(model):
        return None
    path = Path(model).expanduser()
    check_whisper_dir(path)
    return path


#: A small random Whisper-shaped encoder (2 layers, d 384 like whisper-tiny so that it fits
#: MuseTalk's cross_attention_dim): 3 hidden states -> 30 tokens per video frame.
TINY_WHISPER: dict[str, Any] = {
    "vocab_size": 128,
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 512,
    "decoder_layers": 1,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 512,
    "max_source_positions": 1500,
    "max_target_positions": 32,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
    "begin_suppress_tokens": None,
    "suppress_tokens": None,
}


class WhisperEncoder:
    """Whisper encoder (HF `WhisperModel`'s encoder) turning audio into stacked hidden states.

    model: a local directory with the HF layout (config.json, preprocessor_config.json,
    model.safetensors or pytorch_model.bin), or a hub id such as "openai/whisper-tiny", which
    transformers downloads or reads from its cache. device, dtype: where and in which precision
    the encoder runs (the log-mel is computed on `device` in float32); outputs are float32.
    """

    def __init__(
        self,
        model: str = DEFAULT_WHISPER,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        revision: str | None = None,
    ) -> None:
        from transformers import WhisperFeatureExtractor, WhisperModel

        self.device = torch.device(device)
        self.dtype = _as_dtype(dtype)
        local = local_model_dir(str(model))
        source = str(local) if local is not None else str(model)
        try:
            extractor = WhisperFeatureExtractor.from_pretrained(
                source, local_files_only=local is not None, revision=revision
            )
            whisper = WhisperModel.from_pretrained(
                source,
                dtype=self.dtype,
                weights_only=True,
                local_files_only=local is not None,
                revision=revision,
            )
        except OSError as e:
            if local is not None:
                raise MissingWeightsError(f"could not load Whisper from {local}: {e}") from e
            raise MissingWeightsError(
                f"Whisper model {model!r} is not a local directory and could not be loaded from "
                f"the Hugging Face hub or its cache ({e}); without network access pass a local "
                "directory with the HF layout (e.g. MuseTalk's models/whisper)"
            ) from e
        self.source = source
        self._setup(extractor, whisper)

    @classmethod
    def random(
        cls,
        config: dict[str, Any] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> WhisperEncoder:
        """A seeded random-weight encoder (default `TINY_WHISPER`) for smoke runs and tests:
        the real classes, whisper-tiny's input geometry, no files needed."""
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

        self = cls.__new__(cls)
        self.device = torch.device(device)
        self.dtype = torch.float32
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        whisper = WhisperModel(WhisperConfig(**{**TINY_WHISPER, **(config or {})}))
        torch.random.set_rng_state(generator_state)
        self.source = ""  # random init: nothing to load it from
        self._setup(WhisperFeatureExtractor(), whisper)
        return self

    def save_pretrained(self, path: str | Path) -> Path:
        """Save in the HF layout (`WhisperEncoder(path)` loads it back): the encoder's weights,
        the feature extractor, and a decoder of the same config that nothing uses (initialised
        without touching the global random state)."""
        from transformers import WhisperModel
        from transformers.utils import logging as hf_logging

        with torch.random.fork_rng(devices=[]):
            whisper = WhisperModel(self.encoder.config)
        whisper.encoder.load_state_dict(self.encoder.state_dict())
        path = Path(path)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one file of a small model: no "Writing shards" bar
        try:
            whisper.save_pretrained(path)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.extractor.save_pretrained(path)
        return path

    def _setup(self, extractor: Any, whisper: Any) -> None:
        step = (
            extractor.hop_length * whisper.encoder.conv1.stride[0] * whisper.encoder.conv2.stride[0]
        )
        if extractor.sampling_rate != SAMPLE_RATE or step * STEPS_PER_SECOND != SAMPLE_RATE:
            raise ValueError(
                f"expected a {SAMPLE_RATE} Hz feature extractor giving {STEPS_PER_SECOND} encoder "
                f"steps/s, got {extractor.sampling_rate} Hz and {step} samples per step"
            )
        self.extractor = extractor
        self.encoder = whisper.encoder.to(self.device).eval().requires_grad_(False)
        self.window_samples: int = extractor.n_samples  # 480000: 30 s per encoder call
        self.window_steps: int = whisper.config.max_source_positions  # 1500 steps per window
        self.num_hidden_states: int = whisper.config.encoder_layers + 1  # 5 for whisper-tiny
        self.hidden_size: int = whisper.config.d_model  # 384 for whisper-tiny

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 80, 3000) float32 Whisper log-mel of (B, N) float audio at 16 kHz, N <= 480000.

        Torch on `audio`'s device (no round trip through numpy, so the training loop can run it
        on the GPU): each row zero padded to 30 s and normalised on its own, like the feature
        extractor that `encode` uses (equal within float tolerance).
        """
        if audio.ndim != 2 or not audio.is_floating_point():
            raise ValueError(f"expected float audio (B, N), got {tuple(audio.shape)} {audio.dtype}")
        if audio.shape[1] > self.window_samples:
            raise ValueError(
                f"expected at most {self.window_samples} samples (30 s) per row, "
                f"got {audio.shape[1]}"
            )
        ex = self.extractor
        audio = torch.nn.functional.pad(audio.float(), (0, self.window_samples - audio.shape[1]))
        window = torch.hann_window(ex.n_fft, device=audio.device)
        stft = torch.stft(audio, ex.n_fft, ex.hop_length, window=window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()  # (B, 201, 3000)
        filters = torch.as_tensor(ex.mel_filters, dtype=torch.float32, device=audio.device)
        log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0

    def hidden_states(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1500, L + 1, d) float32 hidden states of (B, N <= 480000) audio rows at 16 kHz.

        One 30 s encoder window per row, computed on the encoder's device without gradients;
        step s covers [s / 50, (s + 1) / 50) s. Steps at or past floor(N_true / 320) see the zero
        padding: cut them (as `encode` does) before windowing with the true audio length.
        """
        param = next(self.encoder.parameters())
        mel = self.log_mel(audio.to(param.device))
        with torch.no_grad():
            states = self.encoder(mel.to(param.dtype), output_hidden_states=True).hidden_states
        return torch.stack(states, dim=2).float()

    def encode(self, audio: np.ndarray, sr: int = SAMPLE_RATE, batch_size: int = 8) -> np.ndarray:
        """(T50, L + 1, d) float32 hidden states of (N,) float mono audio at 16 kHz.

        T50 = floor(N / 320) steps of 20 ms; L + 1 = embedding output + each encoder layer
        ((T50, 5, 384) for whisper-tiny). The audio is cut into consecutive 30 s windows from
        its start (`encode_windows`), and the steps before T50 are kept. This is the audio
        context of every frame, in inference and (per sample, `musetalk.audio.context`) in
        training.
        """
        audio = self._checked(audio, sr)
        total = num_steps_for(len(audio), sr)
        num_windows = -(-total // self.window_steps)
        return self.encode_windows(audio[: num_windows * self.window_samples], batch_size)[:total]

    def encode_windows(self, audio: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(W x 1500, L + 1, d) float32 hidden states of W consecutive 30 s windows of (N,)
        16 kHz audio (W = ceil(N / 480000)), each zero padded to 30 s and log-mel normalised on
        its own (as upstream MuseTalk does), `batch_size` windows per encoder call; nothing is
        trimmed."""
        audio = self._checked(audio, SAMPLE_RATE)
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        num_windows = -(-len(audio) // self.window_samples)
        windows = [
            audio[w * self.window_samples : (w + 1) * self.window_samples]
            for w in range(num_windows)
        ]
        out = np.zeros(
            (num_windows * self.window_steps, self.num_hidden_states, self.hidden_size), np.float32
        )
        for b in range(0, num_windows, batch_size):
            mel = self.extractor(
                windows[b : b + batch_size],
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
                device=str(self.device),
            ).input_features  # (B, 80, 3000) log-mel, float32
            with torch.inference_mode():
                states = self.encoder(
                    mel.to(self.device, self.dtype), output_hidden_states=True
                ).hidden_states  # L + 1 tensors (B, 1500, d)
            stacked = torch.stack(states, dim=2).float().cpu().numpy()  # (B, 1500, L + 1, d)
            rows = slice(b * self.window_steps, (b + len(stacked)) * self.window_steps)
            out[rows] = stacked.reshape(-1, self.num_hidden_states, self.hidden_size)
        return out

    @staticmethod
    def _checked(audio: np.ndarray, sr: int) -> np.ndarray:
        audio = np.asarray(audio)
        if sr != SAMPLE_RATE:
            raise ValueError(f"expected audio at {SAMPLE_RATE} Hz, got {sr} Hz (resample first)")
        if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(
                f"expected mono float audio of shape (N,), got {audio.shape} {audio.dtype}"
            )
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        return audio.astype(np.float32, copy=False)
