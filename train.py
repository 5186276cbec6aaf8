"""Train the MuseTalk UNet on preprocess shards.

    python train.py +experiment=stage1 data.shards=<preprocess output>
    python train.py +experiment=stage2 data.shards=<dir> model.init_unet=<stage-1 export file>
    python train.py +experiment=tiny data.shards=<dir>          # CPU smoke run

`train(cfg)` checks the whole config, the shards and the checkpoint to resume from before it
builds anything heavy, then builds the objects the config names (seeded first) and runs
`musetalk.training.train.fit`; tests call it with a config from Hydra's compose API.
"""

from __future__ import annotations

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from musetalk.config import check_targets
from musetalk.errors import ConfigError, MuseTalkError, user_errors
from musetalk.training.train import TrainResult, check_checkpoint, fit, seed_run, write_config


def build(node: DictConfig, **kwargs):
    """`instantiate`, with the project's own errors raised as they are (not wrapped)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, MuseTalkError):
            raise exc.__cause__ from None
        raise


def train(cfg: DictConfig) -> TrainResult:
    """Check, seed, build module, data, callbacks, loggers and Trainer from `cfg`, write the
    resolved config into the run dir, and fit (resuming from `cfg.ckpt_path` when set)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(
            f"{exc.full_key}: required, not given (e.g. python train.py +experiment=stage1 "
            f"{exc.full_key}=...)"
        ) from None
    check_targets(config)
    check_checkpoint(cfg.ckpt_path)
    seed_run(cfg.seed)
    datamodule = build(cfg.data)
    datamodule.setup("fit")  # lists and opens the shards now, before any model is loaded
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [build(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = build(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=cfg.paths.output_dir,
    )
    module = build(cfg.module)
    write_config(config, cfg.paths.output_dir)
    return fit(trainer, module, datamodule, ckpt_path=cfg.ckpt_path)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns `cfg.optimized_metric`'s last value (what Hydra sweepers optimise)."""
    with user_errors("train"):
        result = train(cfg)
        if rank_zero_only.rank == 0:
            steps, where = result.global_step, result.run_dir
            print(f"train: {steps} steps in {where}; export: {result.export_dir}")
        return result.metric(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
