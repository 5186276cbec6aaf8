"""Lip-synced mp4 from a video (or image) and audio: `python infer.py video= audio= output=`."""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from musetalk.config import defaults, parse
from musetalk.errors import user_errors
from musetalk.inference.run import InferenceConfig, infer

# Every setting with its default comes from the library's dataclass; the YAML holds overrides.
ConfigStore.instance().store(name="infer_defaults", node=defaults(InferenceConfig))


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    with user_errors("infer"):
        infer(parse(InferenceConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
