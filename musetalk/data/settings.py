"""The settings of a preprocessing run: every knob with its default, validated on construction.

`PreprocessConfig` holds plain values (the entry point builds it from Hydra's config with
`musetalk.config.parse`, so YAML keys are these field names); its groups are `TrackingOptions`
(`musetalk.face.tracking`), `SampleOptions` (`musetalk.data.samples`), `ExecutorOptions` and
`AudioFeatureOptions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from musetalk.audio import DEFAULT_WHISPER
from musetalk.config import Device, settings
from musetalk.data.samples import SampleOptions
from musetalk.face.tracking import TrackingOptions

__all__ = ["AudioFeatureOptions", "ExecutorOptions", "PreprocessConfig"]


@settings
class ExecutorOptions:
    """Where shard tasks run: `local` (a process pool) or `ray` (`address` None = a local Ray
    instance; "auto" or ray://host:10001 for a cluster). max_retries: (Ray) how many times a
    shard task whose attempt failed (worker or node lost, any error) is run again."""

    name: Literal["local", "ray"] = "local"
    address: str | None = None
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3


@settings
class AudioFeatureOptions:
    """`features`: none, or whisper (cache Whisper encoder features in the shards, computed by
    `model`, an HF id or a local dir, on the run's `device`)."""

    features: Literal["none", "whisper"] = "none"
    model: str = DEFAULT_WHISPER


@settings
class PreprocessConfig:
    """Everything that defines a preprocessing run (plain values; Hydra lives in the entry point).

    input: video file, directory (recursive) or .txt/.csv list. output: local dir or fsspec URL.
    workers: parallel shard tasks (None = number of cores). sources_per_shard: None = by the
    number of sources (`sources.auto_sources_per_shard`). overwrite: write into a non-empty
    directory that this tool did not make (its files are never touched). face: backend name +
    its options. Other groups: `TrackingOptions`, `SampleOptions`, `ExecutorOptions`,
    `AudioFeatureOptions`.
    """

    EXAMPLE: ClassVar[str] = "python preprocess/run.py input=videos/ output=shards/"

    input: Annotated[str, Field(min_length=1)]
    output: Annotated[str, Field(min_length=1)]
    workers: Annotated[int, Field(ge=1)] | None = None
    sources_per_shard: Annotated[int, Field(ge=1)] | None = None
    samples_per_shard: Annotated[int, Field(ge=1)] = 200
    overwrite: bool = False
    face: dict[str, Any] = field(default_factory=lambda: {"backend": "dlib"})
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    sample: SampleOptions = field(default_factory=SampleOptions)
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    audio: AudioFeatureOptions = field(default_factory=AudioFeatureOptions)
    device: Device = "cpu"
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def output_settings(self) -> dict[str, Any]:
        """The settings that change the shards' content (what the fingerprint covers)."""
        return {k: v for k, v in self.to_json().items() if k not in RUNTIME_ONLY}

    def fingerprint(self) -> str:
        """Hash of `output_settings`: reruns into one output must use the same."""
        text = json.dumps(self.output_settings(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


RUNTIME_ONLY = {"input", "output", "workers", "overwrite", "executor", "progress", "device"}
