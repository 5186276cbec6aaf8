"""Lip-synced mp4 from a video (or image) and audio: `python infer.py video= audio= output=`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from musetalk.errors import MediaError
from musetalk.inference.run import InferenceConfig, infer


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    try:
        infer(InferenceConfig.from_dict(values))
    except (ValueError, TypeError, OSError, RuntimeError, ImportError, MediaError) as exc:
        sys.exit(f"infer: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
