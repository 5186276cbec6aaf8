"""Talking-face videos -> WebDataset shards: `python preprocess/run.py input=... output=...`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    sys.exit(
        "preprocessing is not implemented yet (issue 3); the foundation (region math, face "
        f"analysis, video/audio I/O) is in place. Asked: input={cfg.input} output={cfg.output}"
    )


if __name__ == "__main__":
    main()
