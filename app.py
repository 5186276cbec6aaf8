"""The web app: preview the mask for a bbox_shift, then generate: `python app.py`."""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from musetalk.app.settings import AppConfig
from musetalk.config import defaults, parse
from musetalk.errors import user_errors

# Every setting with its default comes from the library's dataclass; the YAML holds overrides.
ConfigStore.instance().store(name="app_defaults", node=defaults(AppConfig))


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    with user_errors("app"):
        from musetalk.app.ui import serve

        serve(parse(AppConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
