"""Talking-face videos -> WebDataset shards: `python preprocess/run.py input=... output=...`."""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from musetalk.config import defaults, parse
from musetalk.data.preprocess import PreprocessConfig, preprocess
from musetalk.errors import user_errors

# Every setting with its default comes from the library's dataclass; the YAML holds overrides.
ConfigStore.instance().store(name="preprocess_defaults", node=defaults(PreprocessConfig))


@hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    with user_errors("preprocess"):
        preprocess(parse(PreprocessConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
