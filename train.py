"""Train the MuseTalk UNet on preprocess shards.

    python train.py +experiment=stage1 data.shards=<preprocess output>
    python train.py +experiment=stage2 data.shards=<dir> model.init_unet=<stage-1 export file>
    python train.py +experiment=tiny data.shards=<dir>          # CPU smoke run

`train(cfg)` builds the objects the config names (seeded first) and runs
`musetalk.training.train.fit`; tests call it with a config from Hydra's compose API.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from musetalk.training.train import TrainResult, fit, prepare_run


def train(cfg: DictConfig) -> TrainResult:
    """Seed, write the resolved config into the run dir, build module, data, callbacks, loggers
    and Trainer from `cfg`, and fit (resuming from `cfg.ckpt_path` when set)."""
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    run_dir = prepare_run(config, cfg.paths.output_dir, cfg.seed)
    module = instantiate(cfg.module)
    datamodule = instantiate(cfg.data)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir)
    )
    return fit(trainer, module, datamodule, ckpt_path=cfg.ckpt_path)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    result = train(cfg)
    if rank_zero_only.rank == 0:
        print(f"train: {result.global_step} steps in {result.run_dir}; export: {result.export_dir}")


if __name__ == "__main__":
    main()
