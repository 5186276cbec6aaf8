"""Lip-sync metrics of a generated video: `python eval.py generated= reference= output=`."""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from musetalk.config import defaults, parse
from musetalk.errors import user_errors
from musetalk.eval.evaluate import EvalConfig, evaluate

# Every setting with its default comes from the library's dataclass; the YAML holds overrides.
ConfigStore.instance().store(name="eval_defaults", node=defaults(EvalConfig))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with user_errors("eval"):
        evaluate(parse(EvalConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
