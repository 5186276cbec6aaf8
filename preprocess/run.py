"""Talking-face videos -> WebDataset shards: `python preprocess/run.py input=... output=...`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from musetalk.data.preprocess import PreprocessConfig, preprocess


@hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    try:
        preprocess(PreprocessConfig.from_dict(values))
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        sys.exit(f"preprocess: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
