"""The job behind `python infer.py`: plain values in, a lip-synced mp4 out.

`infer(InferenceConfig(...))` loads the models (released layout, a training export, or seeded
random weights), prepares the avatar (or loads it from `avatar_cache`), prints the adjustable
range line and the bbox_shift it uses, streams the generated frames to the H.264 + AAC writer
and writes `<output>.json` with the resolved settings and timings next to the video.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import AfterValidator, Field

from musetalk.audio import load_audio, num_frames_for
from musetalk.config import Device, settings
from musetalk.errors import ConfigError, InputError, InputNotFoundError, OutputRefusedError
from musetalk.face.analyzer import check_face
from musetalk.face.tracking import INFERENCE_TRACKING, TrackingOptions
from musetalk.inference.avatar import Avatar
from musetalk.inference.pipeline import MuseTalkPipeline
from musetalk.inference.shift import parse_bbox_shift
from musetalk.inference.weights import normalize_version
from musetalk.timebase import FPS, SAMPLE_RATE
from musetalk.video import is_image
from musetalk.video.writer import select_encoder

__all__ = [
    "BlendOptions",
    "InferenceConfig",
    "InferenceResult",
    "ModelSource",
    "build_pipeline",
    "infer",
]


@settings
class ModelSource:
    """Where the weights come from (the `infer_model` group).

    layout: "released" (MuseTalk's download layout under models_dir), "export" (a training
    run's export dir as models_dir) or "tiny" (seeded random weights, smoke runs).
    vae / whisper: local dirs or HF ids overriding the layout's; seed: of the tiny weights.
    """

    layout: Literal["released", "export", "tiny"] = "released"
    vae: str | None = None
    whisper: str | None = None
    seed: int = 0


@settings
class BlendOptions:
    """How generated crops are pasted back (`musetalk.face.blend`).

    mode: "landmarks" (lower-face mask from the jaw landmarks, no model) or "parsing" (a
    BiSeNet face-parsing ONNX `parsing_model`). feather / grow: fractions of the 256 px crop.
    """

    mode: Literal["landmarks", "parsing"] = "landmarks"
    parsing_model: str | None = None
    feather: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    grow: Annotated[float, Field(ge=0, le=0.5)] = 0.04

    def __post_init__(self) -> None:
        if self.mode == "parsing" and not self.parsing_model:
            raise ValueError("mode=parsing needs parsing_model=<BiSeNet face-parsing .onnx>")


@settings
class InferenceConfig:
    """Everything that defines one inference run (plain values; Hydra lives in infer.py).

    video: a video or an image. audio: any file FFmpeg reads. output: the mp4 to write.
    bbox_shift: px or "auto"; auto_stats: a preprocess output's stats.json for auto.
    infer_model: `ModelSource`; models_dir: the released layout's root or the export dir;
    version: v15 | v1 (released). extra_margin: px below the landmarks (None: 10 for v1.5 and
    exports, 0 for v1). face: {"backend": name, **options}; tracking: `TrackingOptions`;
    blend: `BlendOptions`. fps: frame rate for image inputs (videos are always resampled to 25
    fps). audio_positional_encoding: None = what the weights say (on for released weights).
    audio_seconds: use only the first this many seconds of the audio. avatar_cache: directory
    to cache (and reuse) the prepared video in. encoder: H.264 encoder, "auto" (NVENC when a
    CUDA device is present and PyAV's FFmpeg opens h264_nvenc, else libx264), "libx264" or
    "h264_nvenc" (refused before any work when not usable). encode_queue: frames waiting for
    the encoder, which runs in its own thread overlapped with generation; 0 = encode in the
    generating thread. prefetch: frames generated ahead in a background thread; None = 0 when
    the encoder has its own thread, else 2 x batch_size.
    """

    EXAMPLE: ClassVar[str] = "python infer.py video=face.mp4 audio=speech.wav output=out.mp4"

    video: Annotated[str, Field(min_length=1)]
    audio: Annotated[str, Field(min_length=1)]
    output: Annotated[str, Field(min_length=1)]
    bbox_shift: Annotated[float | str, AfterValidator(parse_bbox_shift)] = 0
    auto_stats: str | None = None
    infer_model: ModelSource = field(default_factory=ModelSource)
    models_dir: str | None = "models"
    version: Annotated[str, AfterValidator(normalize_version)] = "v15"
    extra_margin: Annotated[float, Field(ge=0)] | None = None
    face: dict[str, Any] = field(default_factory=lambda: {"backend": "dlib"})
    tracking: TrackingOptions = field(default_factory=lambda: INFERENCE_TRACKING)
    blend: BlendOptions = field(default_factory=BlendOptions)
    batch_size: Annotated[int, Field(ge=1)] = 8
    fp16: bool = False
    device: Device = "cpu"
    fps: Annotated[float, Field(gt=0, le=240)] = FPS
    audio_positional_encoding: bool | None = None
    audio_seconds: Annotated[float, Field(gt=0)] | None = None
    avatar_cache: str | None = None
    encoder: Literal["auto", "libx264", "h264_nvenc"] = "auto"
    encode_queue: Annotated[int, Field(ge=0)] = 8
    prefetch: Annotated[int, Field(ge=0)] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.infer_model.layout != "tiny" and not self.models_dir:
            raise ValueError(f"infer_model={self.infer_model.layout} needs models_dir=<dir>")
        if self.fp16 and self.infer_model.layout == "tiny":
            raise ValueError("fp16 is for real weights on a GPU, not the tiny random model")
        if self.fp16 and not self.device.startswith("cuda"):
            raise ValueError(f"fp16 needs a CUDA device, got device={self.device}")


@dataclass
class InferenceResult:
    """What a run produced: output path, frame counts, the shift used and stage seconds.

    frames_with_face: output frames that were generated (the others passed through).
    source_frames: frames of the prepared video. seconds: wall time of the whole run.
    encoder: the H.264 encoder used (libx264 or h264_nvenc).
    """

    output: str
    num_frames: int
    frames_with_face: int
    source_frames: int
    bbox_shift: float
    bbox_shift_reason: str
    range_line: str
    seconds: float
    timings: dict[str, float]
    encoder: str = "libx264"


def build_pipeline(config: InferenceConfig) -> MuseTalkPipeline:
    """The pipeline a config names (model source, face backend, blend, device)."""
    check_face(config.face)
    face = dict(config.face)
    blend = config.blend
    kwargs: dict[str, Any] = {
        "face": face.pop("backend"),
        "face_options": face,
        "tracking": config.tracking,
        "extra_margin": config.extra_margin,
        "audio_positional_encoding": config.audio_positional_encoding,
        "blend": blend.mode,
        "parsing_model": blend.parsing_model,
        "feather": blend.feather,
        "grow": blend.grow,
        "batch_size": config.batch_size,
    }
    source = config.infer_model
    if source.layout == "tiny":
        return MuseTalkPipeline.tiny(seed=source.seed, device=config.device, **kwargs)
    kwargs.update(device=config.device, fp16=config.fp16)
    if source.layout == "released":
        return MuseTalkPipeline.from_models_dir(
            config.models_dir, config.version, source.vae, source.whisper, **kwargs
        )
    return MuseTalkPipeline.from_export_dir(config.models_dir, source.vae, source.whisper, **kwargs)


def infer(config: InferenceConfig, pipeline: MuseTalkPipeline | None = None) -> InferenceResult:
    """Run one inference; prints the range line and the bbox_shift choice before generating.

    pipeline: reuse already loaded models (else built from the config).
    """
    start = time.perf_counter()
    video, output = _check_paths(config)
    audio = load_audio(config.audio, SAMPLE_RATE)
    if config.audio_seconds is not None:
        audio = audio[: round(config.audio_seconds * SAMPLE_RATE)]
    fps = float(config.fps) if is_image(video) else FPS
    needed = num_frames_for(len(audio), SAMPLE_RATE, fps)
    if needed == 0:
        raise InputError(f"{config.audio}: audio shorter than one frame ({1 / fps:.3f} s)")
    try:
        encoder = select_encoder(config.encoder)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pipe = pipeline if pipeline is not None else build_pipeline(config)
    pipe.timings.reset()
    avatar = pipe.prepare_avatar(
        video,
        config.bbox_shift,
        extra_margin=config.extra_margin,
        cache_dir=config.avatar_cache,
        # a cached avatar is the whole video, reusable with any audio length
        max_frames=None if config.avatar_cache else needed,
        fps=fps,
        auto_stats=config.auto_stats,
        progress=config.progress,
    )
    print(avatar.range_line(), flush=True)
    print(avatar.bbox_shift_reason, flush=True)
    if avatar.cache_status != "none":
        print(f"avatar cache {config.avatar_cache}: {avatar.cache_status}", flush=True)
    prefetch = config.prefetch
    if prefetch is None:
        prefetch = 0 if config.encode_queue else 2 * pipe.batch_size
    writer = {"encoder": encoder, "queue_size": config.encode_queue}
    written = _write_video(pipe, avatar, audio, output, fps, prefetch, writer, config.progress)
    shown = [avatar.source_index(k) for k in range(written)]
    result = InferenceResult(
        output=str(output),
        num_frames=written,
        frames_with_face=int(sum(avatar.has_face[s] for s in shown)),
        source_frames=len(avatar),
        bbox_shift=avatar.bbox_shift,
        bbox_shift_reason=avatar.bbox_shift_reason,
        range_line=avatar.range_line(),
        seconds=time.perf_counter() - start,
        timings=pipe.timings.as_dict(),
        encoder=encoder,
    )
    _write_sidecar(config, pipe, avatar, result)
    stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
    print(
        f"wrote {output}: {written} frames ({written / fps:.2f} s at {fps:g} fps), "
        f"{result.frames_with_face} with a face, from {len(set(shown))} source frames, "
        f"in {result.seconds:.1f} s ({written / result.seconds:.1f} frames/s); "
        f"stage seconds: {stages}",
        flush=True,
    )
    return result


def _check_paths(config: InferenceConfig) -> tuple[Path, Path]:
    """The video (it exists) and the output (.mp4, its directory created)."""
    video, output = Path(config.video), Path(config.output)
    if not video.is_file():
        raise InputNotFoundError(f"video not found: {video}")
    if output.suffix.lower() != ".mp4":
        raise ConfigError(f"output={str(output)!r}: must be an .mp4 file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputRefusedError(
            f"output={config.output!r}: cannot create its directory ({exc})"
        ) from None
    return video, output


def _write_video(
    pipe: MuseTalkPipeline,
    avatar: Avatar,
    audio: np.ndarray,
    output: Path,
    fps: float,
    prefetch: int,
    writer_options: dict[str, Any],
    progress: bool,
) -> int:
    """Generate and encode the frames with the audio into `output`; returns the frame count.

    The "encode" stage time is what the generating thread spends handing frames to the writer
    (all of the encoding when encode_queue=0, waiting for queue room otherwise)."""
    from tqdm import tqdm

    from musetalk.video import VideoWriter

    total = num_frames_for(len(audio), SAMPLE_RATE, fps)
    written = 0
    with (
        tqdm(total=total, desc="frames", unit="frame", disable=not progress) as bar,
        VideoWriter(output, fps=fps, audio=audio, sr=SAMPLE_RATE, **writer_options) as writer,
    ):
        for frame in pipe.generate(avatar, audio, prefetch=prefetch):
            with pipe.timings("encode"):
                writer.write(frame)
            written += 1
            bar.update(1)
    return written


def _write_sidecar(
    config: InferenceConfig, pipe: MuseTalkPipeline, avatar: Avatar, result: InferenceResult
) -> None:
    """`<output>.json`: the settings, the model, the shift as requested and as used, timings."""
    output = Path(result.output)
    sidecar = {
        "config": asdict(config),
        "model": pipe.model_info,
        "extra_margin": avatar.extra_margin,
        "audio_positional_encoding": pipe.audio_positional_encoding,
        "bbox_shift_requested": avatar.shift.requested,
        "result": asdict(result),
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n"
    tmp = output.with_name(f".{output.name}.json.tmp")
    tmp.write_text(text)
    os.replace(tmp, output.with_name(output.name + ".json"))
