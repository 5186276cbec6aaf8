"""The web app's settings (`python app.py key=value`), validated before the server starts."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field

from musetalk.config import Device, settings
from musetalk.inference.run import BlendOptions, ModelSource
from musetalk.inference.weights import normalize_version

__all__ = ["AppConfig"]


@settings
class AppConfig:
    """Everything `python app.py` needs.

    Model (as `infer.py`): infer_model, models_dir, version, face, blend, batch_size, fp16,
    auto_stats (stats.json for bbox_shift=auto), extra_margin (None: the weights' default).
    device: the device selected in the page (every CUDA device found is offered too).
    Server: server_name (127.0.0.1: this machine only), server_port, share (a public gradio
    link: only when asked), max_file_size (largest upload), workdir (uploads' avatars and
    generated videos; None = a temporary directory removed at exit), keep_outputs (generated
    videos kept; older ones are deleted), keep_avatars (prepared videos kept in the avatar
    cache), cache_seconds (gradio's uploaded files are deleted after this long),
    audio_seconds (use at most this many seconds of an uploaded audio; None = all).
    """

    EXAMPLE: ClassVar[str] = "python app.py infer_model=tiny"

    infer_model: ModelSource = field(default_factory=ModelSource)
    models_dir: str | None = "models"
    version: Annotated[str, AfterValidator(normalize_version)] = "v15"
    face: dict[str, Any] = field(default_factory=lambda: {"backend": "dlib"})
    blend: BlendOptions = field(default_factory=BlendOptions)
    extra_margin: Annotated[float, Field(ge=0)] | None = None
    auto_stats: str | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    fp16: bool = False
    device: Device = "cpu"
    server_name: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    server_port: Annotated[int, Field(ge=1, le=65535)] = 7860
    share: bool = False
    max_file_size: Annotated[str, Field(pattern=r"^\d+\s*(b|kb|mb|gb)$")] = "500mb"
    workdir: str | None = None
    keep_outputs: Annotated[int, Field(ge=1)] = 20
    keep_avatars: Annotated[int, Field(ge=1)] = 8
    cache_seconds: Annotated[int, Field(ge=60)] = 3600
    audio_seconds: Annotated[float, Field(gt=0)] | None = None

    def __post_init__(self) -> None:
        if self.infer_model.layout != "tiny" and not self.models_dir:
            raise ValueError(f"infer_model={self.infer_model.layout} needs models_dir=<dir>")
        if self.fp16 and self.infer_model.layout == "tiny":
            raise ValueError("fp16 is for real weights on a GPU, not the tiny random model")
