"""The MuseTalk inference pipeline: a video (or image) and an audio track -> lip-synced frames.

Per output frame (25 fps, floor(audio seconds x 25) of them) with a face: the 256x256 crop of
the frame's inference box (`musetalk.face.region`, the preprocessing math), its latent with the
lower half masked and its own latent as reference (`prepare_latents`), the Whisper tokens of the
frame's audio window, one UNet pass at timestep 0 in batches, `decode_latents` back to a crop,
resized into the box and pasted through a feathered lower-face mask (`musetalk.face.blend`).
Frames without a face pass through unchanged; source frames cycle forward then backward when the
audio is longer than the video.

    pipe = MuseTalkPipeline.from_models_dir("models")          # MuseTalk's released layout
    avatar = pipe.prepare_avatar("talk.mp4", bbox_shift=-4, cache_dir="avatars/talk")
    print(avatar.range_line())
    for frame in pipe(avatar, "speech.wav"):                     # (H, W, 3) uint8 RGB
        ...

Everything that does not depend on the audio is prepared once (`prepare_avatar`: face tracking
(`track_faces`), the bbox_shift choice (`choose_shift`) and the regions, latents and masks
(`prepare_regions`), each part cached on disk when asked); `generate(avatar, audio,
start_frame=...)` then runs only Whisper, the UNet, the VAE decoder and the blend, so a server
can call it per audio chunk.

Why not a diffusers `DiffusionPipeline` subclass (as LatentSync's `LipsyncPipeline` is): its
`from_pretrained` / `save_pretrained` read and write the diffusers layout (`model_index.json` and
one folder per registered module), while our users load MuseTalk's released layout and our
training exports unchanged (`musetalk.inference.weights`); half of what this pipeline holds is
not a model (the face analyzer and tracker, the avatar cache, the blend), so `register_modules`
would not cover it; and there is no scheduler or denoising loop (one UNet pass at t = 0). What
we keep from diffusers is its vocabulary (`check_inputs`, `prepare_latents`, `decode_latents`,
`__call__`) and its models; `.to()` is the constructor's `device` / `dtype`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from musetalk.audio import add_positional_encoding, audio_windows, num_frames_for
from musetalk.audio.whisper import WhisperEncoder
from musetalk.errors import NoFaceError
from musetalk.face import region
from musetalk.face.blend import BLEND_MODES, FaceParsing, lower_face_mask, paste
from musetalk.face.tracking import (
    INFERENCE_TRACKING,
    TrackingOptions,
)
from musetalk.inference.avatar import Avatar
from musetalk.inference.preparation import AvatarPreparation
from musetalk.inference.shift import (
    RANDOM_DEFAULT,
    RELEASED_DEFAULT,
    BuiltinShift,
)
from musetalk.inference.weights import ModelFiles, export_files, released_files
from musetalk.models import (
    TINY_UNET,
    TINY_VAE,
    build_unet,
    decode,
    encode,
    load_unet,
    load_vae,
    mask_lower_half,
    unet_input,
)
from musetalk.timebase import FPS, SAMPLE_RATE
from musetalk.timing import StageTimes
from musetalk.video import prefetched

__all__ = ["MuseTalkPipeline"]

log = logging.getLogger(__name__)


def _seeded(seed: int, build):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


class MuseTalkPipeline(AvatarPreparation):
    """UNet + VAE + Whisper encoder + face analysis; see the module docstring.

    unet: MuseTalk's `UNet2DConditionModel` (8 -> 4 channels, cross-attention on Whisper tokens).
    vae: the `AutoencoderKL` (sd-vae-ft-mse). audio_encoder: a `WhisperEncoder`.
    face: face backend name ("dlib", "dwpose", "fan") and face_options its constructor options;
    tracking: `FaceTracker` options (One-Euro smoothing is always on at inference).
    extra_margin: px added below the landmarks; None = `region.EXTRA_MARGIN[version]` (MuseTalk
    v1.5: 10, v1.0: 0), `version` being the weights' ("v15" for exports and random weights).
    audio_positional_encoding: add the sinusoidal encoding to the audio tokens (as MuseTalk's
    inference does; must match how the weights were trained).
    blend: "landmarks" (jaw-polygon mask, no model) or "parsing" (BiSeNet ONNX `parsing_model`);
    feather / grow: fractions of the crop size (`musetalk.face.blend`).
    batch_size: frames per UNet / VAE call. device, dtype: where the models run.
    shift_stats: the training data's stats.json for bbox_shift=auto; builtin_shift: the value
    used without statistics when the weights' training data is known (None: auto needs stats).
    model_info: provenance (layout, files) recorded with outputs.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        audio_encoder: WhisperEncoder,
        *,
        face: str = "dlib",
        face_options: dict[str, Any] | None = None,
        tracking: TrackingOptions | None = None,
        extra_margin: float | None = None,
        version: str = "v15",
        audio_positional_encoding: bool = True,
        blend: str = "landmarks",
        parsing_model: str | os.PathLike[str] | None = None,
        feather: float = 0.05,
        grow: float = 0.04,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        shift_stats: dict[str, Any] | None = None,
        builtin_shift: BuiltinShift | None = None,
        model_info: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if dtype == torch.float16 and self.device.type != "cuda":
            raise ValueError(f"fp16 needs a CUDA device, got device={self.device}")
        if unet.config.in_channels != 8 or unet.config.out_channels != vae.config.latent_channels:
            raise ValueError(
                f"the UNet must take 8 channels (masked + reference latents) and return "
                f"{vae.config.latent_channels} (the VAE's latent channels), got "
                f"{unet.config.in_channels} -> {unet.config.out_channels}"
            )
        if unet.config.cross_attention_dim != audio_encoder.hidden_size:
            raise ValueError(
                f"the UNet's cross_attention_dim {unet.config.cross_attention_dim} differs from "
                f"the Whisper encoder's d_model {audio_encoder.hidden_size}"
            )
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        if blend == "parsing" and parsing_model is None:
            raise ValueError("blend=parsing needs parsing_model=<BiSeNet face-parsing .onnx>")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.unet = _placed(unet, self.device, dtype)
        self.vae = _placed(vae, self.device, dtype)
        self.audio_encoder = audio_encoder
        self.face = face
        self.face_options = dict(face_options or {})
        self.tracking = tracking if tracking is not None else INFERENCE_TRACKING
        self.extra_margin = float(
            region.EXTRA_MARGIN[version] if extra_margin is None else extra_margin
        )
        self.audio_positional_encoding = bool(audio_positional_encoding)
        self.blend = blend
        self.parser = FaceParsing(parsing_model) if blend == "parsing" else None
        self.feather = float(feather)
        self.grow = float(grow)
        self.batch_size = int(batch_size)
        self.shift_stats = shift_stats
        self.builtin_shift = builtin_shift
        self.model_info = dict(model_info or {})
        self.timings = StageTimes(torch.cuda.synchronize if self.device.type == "cuda" else None)
        self._analyzer = None
        self._vae_sha256: str | None = None

    # -------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_files(
        cls, files: ModelFiles, device: str = "cpu", fp16: bool = False, **kwargs: Any
    ) -> MuseTalkPipeline:
        """Load the models of resolved `ModelFiles` (strict UNet load, safetensors or
        torch.load(weights_only=True) only). Defaults from the weights: extra_margin by version,
        audio_positional_encoding and shift_stats from an export's training.json."""
        dtype = torch.float16 if fp16 else torch.float32
        if fp16 and torch.device(device).type != "cuda":
            raise ValueError(f"fp16 needs a CUDA device, got device={device}")
        training = files.training
        kwargs["version"] = files.version
        if kwargs.get("audio_positional_encoding") is None:
            kwargs["audio_positional_encoding"] = bool(
                training.get("audio_positional_encoding", True)
            )
        if kwargs.get("shift_stats") is None and training.get("shift_stats"):
            kwargs["shift_stats"] = training["shift_stats"]
        if files.layout == "released":
            kwargs.setdefault("builtin_shift", RELEASED_DEFAULT)
        unet = load_unet(files.unet_weights, files.unet_config)
        vae = load_vae(files.vae, revision=files.vae_revision)
        whisper = WhisperEncoder(
            files.whisper, device=device, dtype=dtype, revision=files.whisper_revision
        )
        info = {**files.describe(), **kwargs.pop("model_info", {})}
        return cls(unet, vae, whisper, device=device, dtype=dtype, model_info=info, **kwargs)

    @classmethod
    def from_models_dir(
        cls,
        models_dir: str | os.PathLike[str],
        version: str = "v15",
        vae: str | None = None,
        whisper: str | None = None,
        **kwargs: Any,
    ) -> MuseTalkPipeline:
        """MuseTalk's released layout (`musetalkV15/` or `musetalk/`, `sd-vae/`, `whisper/`)."""
        return cls.from_files(released_files(models_dir, version, vae, whisper), **kwargs)

    @classmethod
    def from_export_dir(
        cls,
        export_dir: str | os.PathLike[str],
        vae: str | None = None,
        whisper: str | None = None,
        **kwargs: Any,
    ) -> MuseTalkPipeline:
        """A training export (unet.safetensors/unet.pth + musetalk.json [+ training.json]).

        vae / whisper: local dirs or HF ids; None = what training.json records (see
        `inference.weights.export_files`)."""
        return cls.from_files(export_files(export_dir, vae, whisper), **kwargs)

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        unet_config: dict[str, Any] | None = None,
        vae_config: dict[str, Any] | None = None,
        whisper_config: dict[str, Any] | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ) -> MuseTalkPipeline:
        """Seeded random weights (TINY_UNET, TINY_VAE, WhisperEncoder.random) for smoke runs;
        other configs (e.g. MUSETALK_UNET) give full-size random models for benchmarks."""
        unet = _seeded(seed, lambda: build_unet(unet_config or TINY_UNET))
        vae = _seeded(seed + 1, lambda: AutoencoderKL(**(vae_config or TINY_VAE)))
        whisper = WhisperEncoder.random(whisper_config, seed=seed + 2, device=device)
        kwargs.setdefault("builtin_shift", RANDOM_DEFAULT)
        if kwargs.get("audio_positional_encoding") is None:
            kwargs["audio_positional_encoding"] = True
        info = {"layout": "random", "seed": seed, **kwargs.pop("model_info", {})}
        return cls(unet, vae, whisper, device=device, model_info=info, **kwargs)

    # -------------------------------------------------------------------------------------
    # Building blocks (diffusers vocabulary)

    @property
    def analyzer(self):
        """The face analyzer (built on first use)."""
        if self._analyzer is None:
            from musetalk.face import build_analyzer

            self._analyzer = build_analyzer(self.face, **self.face_options)
        return self._analyzer

    def check_inputs(self, avatar: Avatar, audio: np.ndarray, sr: int = SAMPLE_RATE) -> int:
        """Validate a generation request; returns the number of output frames.

        audio: (N,) float mono at `sr` = 16000 Hz. Output frames: floor(N / sr x avatar.fps).
        """
        if not isinstance(avatar, Avatar):
            raise TypeError(f"expected an Avatar (see prepare_avatar), got {type(avatar).__name__}")
        if sr != SAMPLE_RATE:
            raise ValueError(f"expected audio at {SAMPLE_RATE} Hz, got {sr} Hz")
        audio = np.asarray(audio)
        if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(
                f"expected mono float audio of shape (N,), got {audio.shape} {audio.dtype}"
            )
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        n = num_frames_for(len(audio), sr, avatar.fps)
        if n == 0:
            raise ValueError(
                f"audio of {len(audio) / sr:.3f} s is shorter than one frame "
                f"({1 / avatar.fps:.3f} s at {avatar.fps:g} fps)"
            )
        if avatar.num_faces == 0:
            raise NoFaceError(f"{avatar.source}: no frame has a usable face")
        return n

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        """(T50, L + 1, d) float32 Whisper hidden states of (N,) 16 kHz audio."""
        with self.timings("audio"):
            return self.audio_encoder.encode(np.asarray(audio, np.float32))

    def audio_tokens(
        self, features: np.ndarray, num_frames: int, start_frame: int, fps: float
    ) -> torch.Tensor:
        """(num_frames, 10 (L + 1), d) UNet conditioning of frames [start, start + num_frames)."""
        with self.timings("audio"):
            tokens = torch.from_numpy(audio_windows(features, num_frames, fps, start_frame))
            if self.audio_positional_encoding:
                tokens = add_positional_encoding(tokens)
            return tokens.to(self.device, self.dtype)

    def prepare_latents(self, crops: np.ndarray) -> torch.Tensor:
        """(B, 8, S/8, S/8) UNet inputs of (B, S, S, 3) uint8 RGB crops, on the pipeline's device.

        Channels 0-3: the latent of the crop with its lower half black (`mask_lower_half`),
        4-7: the latent of the whole crop as the reference (MuseTalk's choice at inference).
        """
        with self.timings("latents"), torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
            x = x.permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0  # (B, 3, S, S) in [-1, 1]
            both = encode(self.vae, torch.cat([mask_lower_half(x), x]))  # (2B, 4, S/8, S/8)
            masked, reference = both.chunk(2)
            return unet_input(masked, reference)

    def predict_latents(self, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) target latents from (B, 8, h, w) inputs and (B, T, d) audio tokens.

        One UNet pass at timestep 0: no noise, no scheduler.
        """
        with self.timings("unet"), torch.inference_mode():
            latents = latents.to(self.device, self.dtype)
            timestep = torch.zeros(1, device=self.device, dtype=torch.long)
            return self.unet(latents, timestep, encoder_hidden_states=tokens).sample

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 RGB crops from (B, 4, h, w) scaled latents."""
        with self.timings("vae_decode"), torch.inference_mode():
            images = decode(self.vae, latents)  # (B, 3, S, S) about [-1, 1]
            images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return images.permute(0, 2, 3, 1).cpu().numpy()

    def blend_masks(
        self, crops: np.ndarray, landmarks: np.ndarray, rects: np.ndarray
    ) -> np.ndarray:
        """(B, S, S) uint8 blend masks of (B, S, S, 3) source crops cut from `rects` (B, 4)."""
        with self.timings("masks"):
            size = crops.shape[1]
            if self.parser is not None:
                return np.stack([self.parser.mask(c, self.feather) for c in crops])
            return np.stack(
                [
                    lower_face_mask(lm, rect, size, self.feather, self.grow)
                    for lm, rect in zip(landmarks, rects, strict=True)
                ]
            )

    # -------------------------------------------------------------------------------------
    # Avatar preparation

    # -------------------------------------------------------------------------------------
    # Generation

    def generate(
        self,
        avatar: Avatar,
        audio: np.ndarray | str | os.PathLike[str],
        *,
        start_frame: int = 0,
        sr: int = SAMPLE_RATE,
        prefetch: int = 0,
    ) -> Iterator[np.ndarray]:
        """Output frames (H, W, 3) uint8 RGB for an audio clip, one per 1 / fps s of audio.

        audio: (N,) float mono at 16 kHz, or a path (`musetalk.audio.load_audio`).
        start_frame: position in the avatar's ping-pong cycle of the first output frame (a
        server passing consecutive chunks adds the frames already sent). Each call encodes its
        own audio (Whisper windows do not see neighbouring chunks). Frames without a face are
        the avatar's frames themselves (read-only arrays); the others are new arrays.
        prefetch: generate up to this many frames ahead in a background thread, so the models
        run while the caller consumes frames (e.g. encodes them); 0 = on demand.
        Inputs are checked now; frames are computed as the iterator advances.
        """
        if not isinstance(audio, np.ndarray):
            from musetalk.audio import load_audio

            audio = load_audio(audio, sr)
        num_frames = self.check_inputs(avatar, audio, sr)
        if start_frame < 0 or prefetch < 0:
            raise ValueError(
                f"start_frame and prefetch must be >= 0, got {start_frame}, {prefetch}"
            )
        frames = self._frames(avatar, audio, num_frames, start_frame)
        return prefetched(frames, prefetch) if prefetch else frames

    def _frames(
        self, avatar: Avatar, audio: np.ndarray, num_frames: int, start_frame: int
    ) -> Iterator[np.ndarray]:
        features = self.encode_audio(audio)
        for b in range(0, num_frames, self.batch_size):
            count = min(self.batch_size, num_frames - b)
            sources = [avatar.source_index(start_frame + b + j) for j in range(count)]
            active = [j for j, s in enumerate(sources) if avatar.has_face[s]]
            crops: np.ndarray | None = None
            if active:
                tokens = self.audio_tokens(features, count, b, avatar.fps)[active]
                latents = torch.from_numpy(np.stack([avatar.latents[sources[j]] for j in active]))
                crops = self.decode_latents(self.predict_latents(latents, tokens))
            with self.timings("blend"):
                frames = self.paste_crops(avatar, sources, crops)
            yield from frames

    def paste_crops(
        self, avatar: Avatar, sources: list[int], crops: np.ndarray | None
    ) -> list[np.ndarray]:
        """Output frames of the avatar's source frames `sources`: (K, S, S, 3) uint8 generated
        `crops`, one per source frame with a face in order, pasted through its blend mask; the
        frames without a face are the avatar's own (read-only) arrays."""
        out = []
        row = 0
        for s in sources:
            if not avatar.has_face[s]:
                out.append(avatar.frames[s])
                continue
            out.append(paste(avatar.frames[s], crops[row], avatar.rects[s], avatar.masks[s]))
            row += 1
        return out

    def __call__(
        self,
        video: Avatar | str | os.PathLike[str],
        audio: np.ndarray | str | os.PathLike[str],
        **prepare_kwargs: Any,
    ) -> Iterator[np.ndarray]:
        """Frames for `audio` over a prepared avatar, or over a video/image prepared now
        (prepare_kwargs go to `prepare_avatar`; only the frames the audio needs are read)."""
        if not isinstance(audio, np.ndarray):
            from musetalk.audio import load_audio

            audio = load_audio(audio)
        if not isinstance(video, Avatar):
            fps = prepare_kwargs.get("fps", FPS)
            prepare_kwargs.setdefault(
                "max_frames", max(1, num_frames_for(len(audio), SAMPLE_RATE, fps))
            )
            video = self.prepare_avatar(video, **prepare_kwargs)
        return self.generate(video, audio)


def _placed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Any:
    """The model frozen in eval mode on `device`, cast to `dtype` only when it differs."""
    model = model.to(device)
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)
