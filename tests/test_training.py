"""Training: configs, losses, the LightningModule and the entry point on real shards (CPU).

The shards are made by the real preprocessing from ../shared/data/talking_demo1.mp4 (5 samples
of 50 frames); the networks are the tiny random ones of `+experiment=tiny`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import lightning as L
import pytest
import torch
from diffusers import UNet2DConditionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from musetalk.audio import load_audio
from musetalk.audio.whisper import WhisperEncoder
from musetalk.audio.windows import audio_windows
from musetalk.data.reader import iter_samples
from musetalk.errors import ConfigError
from musetalk.losses import (
    LATENTSYNC_SYNCNET,
    AdversarialLoss,
    PerceptualLoss,
    SyncLoss,
    SyncNet,
    load_syncnet,
)
from musetalk.models import MUSETALK_UNET, TINY_UNET, build_unet, export_unet, load_unet
from musetalk.training.callbacks import image_grid
from musetalk.training.clips import finish_batch
from musetalk.training.train import fit

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
QUIET = ["+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]


def _entry_point():
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_entry = _entry_point()


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def tiny_cfg(shards: Path, out: Path, *overrides: str):
    return compose_train(
        "+experiment=tiny", f"data.shards={shards}", f"paths.output_dir={out}", *QUIET, *overrides
    )


def metrics(run_dir: Path, version: int = 0) -> list[dict[str, float]]:
    """Rows of the CSV logger of launch `version` into the run dir, as floats (empty cells
    dropped)."""
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return rows


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def train_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> training metrics (the module's and the throughput callback's rows merged);
    fails on a step written twice."""
    rows: dict[int, dict[str, float]] = {}
    for r in metrics(run_dir):
        if any(k.startswith(("train/", "throughput/")) for k in r):
            step = int(r.pop("step"))
            assert not set(r) & set(rows.get(step, {})), f"step {step} logged twice"
            rows.setdefault(step, {}).update(r)
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny networks gain little from more, and oversubscribed cores
    (parallel test jobs) slow OpenMP thread pools down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(demo_shards: Path) -> Path:
    """Real preprocessing of the demo video: one shard with 5 samples of 50 frames."""
    return demo_shards


@pytest.fixture(scope="module")
def uneven_shards(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same samples split into two shards of 4 and 1 samples."""
    out = tmp_path_factory.mktemp("uneven")
    (src,) = sorted(shards.glob("*.tar"))
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = sorted({m.name.split(".")[0] for m, _ in members})
    for name, part in (("a.tar", keys[:4]), ("b.tar", keys[4:])):
        with tarfile.open(out / name, "w") as tar:
            for member, data in members:
                if member.name.split(".")[0] in part:
                    tar.addfile(member, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def stage1_run(shards: Path, tmp_path_factory: pytest.TempPathFactory):
    """`+experiment=tiny` for 4 steps (2 epochs of 2 batches), checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("stage1_run")
    cfg = tiny_cfg(
        shards,
        out,
        "trainer.max_steps=4",
        "data.batches_per_epoch=2",
        "trainer.val_check_interval=2",
        "callbacks.checkpoint.every_n_train_steps=2",
    )
    return cfg, train_entry.train(cfg)


# ----------------------------------------------------------------------------- configs


@pytest.mark.slow
def test_experiment_configs_compose_with_the_recipe_values(tmp_path: Path) -> None:
    common = ["data.shards=/data/shards", f"paths.output_dir={tmp_path}"]
    stage1 = compose_train("+experiment=stage1", *common)
    assert OmegaConf.to_container(stage1.model.unet.config) == MUSETALK_UNET
    assert stage1.model.vae.source == "stabilityai/sd-vae-ft-mse"
    assert stage1.model.whisper.model == "openai/whisper-tiny"
    assert (stage1.data.batch_size, stage1.data.frames_per_sample) == (32, 1)
    m = stage1.module
    assert (m.lr, list(m.betas), m.weight_decay, m.warmup_steps) == (2e-5, [0.5, 0.999], 1e-2, 1000)
    assert m.gradient_checkpointing and m.accumulate_grad_batches == 1
    assert {k: v.weight for k, v in stage1.losses.items()} == {"l1": 1.0, "perceptual": 0.01}
    assert stage1.trainer.precision == "bf16-mixed" and stage1.audio_positional_encoding is None

    assert stage1.model.init_unet is None  # stage 1: random init
    for missing in (compose_train("+experiment=stage2", *common), compose_train(*common)):
        with pytest.raises(MissingMandatoryValue, match="init_unet"):
            OmegaConf.to_container(missing, throw_on_missing=True)
    stage2 = compose_train("+experiment=stage2", *common, "model.init_unet=/runs/s1/unet.pth")
    assert (stage2.data.batch_size, stage2.data.frames_per_sample) == (2, 16)
    assert stage2.data.sync_mel and dict(stage2.data.bottom_margin) == {
        "mean": 10.0,
        "std": 10.0,
        "max": 20.0,
    }
    assert (stage2.module.lr, stage2.module.accumulate_grad_batches) == (5e-6, 8)
    weights = {k: v.weight for k, v in stage2.losses.items()}
    assert weights == {"l1": 1.0, "perceptual": 0.01, "gan": 0.01, "mouth_gan": 0.01, "sync": 0.05}
    assert stage2.losses.gan.feature_matching == stage2.losses.mouth_gan.feature_matching == 1.0
    assert stage2.losses.mouth_gan.region == "mouth"

    tiny = compose_train("+experiment=tiny", *common)
    assert OmegaConf.to_container(tiny.model.unet.config) == TINY_UNET
    assert tiny.trainer.accelerator == "cpu" and "csv" in tiny.logger
    learn = compose_train("+experiment=learn", *common, "data.val_shards=/data/held_out")
    assert OmegaConf.to_container(learn.model.unet.config) == TINY_UNET
    assert learn.losses.perceptual is None and learn.data.crop_size == 64
    with pytest.raises(MissingMandatoryValue, match="source"):  # the VAE dir is the user's
        OmegaConf.to_container(learn, throw_on_missing=True)

    # The full UNet as the config builds it (~850 M parameters, a few GB: once).
    unet = instantiate(stage1.model.unet)
    assert 8.0e8 < sum(p.numel() for p in unet.parameters()) < 9.0e8
    assert unet.config.cross_attention_dim == 384 and unet.config.in_channels == 8
    del unet


@pytest.mark.slow
def test_every_experiment_and_trainer_instantiates(shards: Path, tmp_path: Path) -> None:
    """Module, data and Trainer of stage1/stage2/tiny build (tiny networks; stage 2's SyncNet is
    LatentSync's full architecture with random weights); the trainer configs on CPU."""
    stage1_unet = export_unet(build_unet(TINY_UNET), tmp_path / "s1")
    common = [f"data.shards={shards}", f"paths.output_dir={tmp_path}", "model=tiny", "logger=csv"]
    random_nets = ["losses.perceptual.random_init=true", "losses.perceptual.width=0.25"]
    for experiment, extra in (
        ("stage1", []),
        (
            "stage2",
            [
                f"model.init_unet={stage1_unet / 'unet.safetensors'}",
                "losses.sync.random_init=true",
            ],
        ),
        ("tiny", []),
    ):
        cfg = compose_train(f"+experiment={experiment}", *common, *random_nets, *extra)
        module = instantiate(cfg.module)
        assert set(module.losses) == {k for k, v in cfg.losses.items() if v.weight > 0}
        if experiment == "stage2":
            stage1 = load_unet(stage1_unet / "unet.safetensors")
            assert same_weights(module.unet, stage1)
            assert isinstance(module.losses["sync"].syncnet, SyncNet)
        instantiate(cfg.data).setup()
        for node in [*cfg.callbacks.values(), *cfg.logger.values()]:
            assert isinstance(instantiate(node), (L.Callback, L.pytorch.loggers.Logger))
    for trainer in ("cpu", "gpu", "ddp", "multinode"):
        cfg = compose_train(
            f"trainer={trainer}", *common, "trainer.accelerator=cpu", "trainer.precision=32-true"
        )
        built = instantiate(cfg.trainer, devices=2 if trainer != "cpu" else 1)
        assert isinstance(built, L.Trainer)
        if trainer in ("ddp", "multinode"):
            assert type(built.strategy).__name__ == "DDPStrategy"
    assert compose_train("trainer=multinode", *common).trainer.num_nodes == 2


def test_missing_pretrained_weights_fail_clearly_unless_the_loss_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # empty hub cache
    with pytest.raises(FileNotFoundError, match=r"losses\.perceptual\.weight=0"):
        PerceptualLoss(weights=None, download=False)
    with pytest.raises(FileNotFoundError, match=r"losses\.perceptual\.weights"):
        PerceptualLoss(weights=str(tmp_path / "vgg19.pth"))
    with pytest.raises(FileNotFoundError, match=r"losses\.sync\.weight=0"):
        SyncLoss(weights=None, download=False)
    off = PerceptualLoss(weight=0, weights=str(tmp_path / "vgg19.pth"))
    assert not off.active and off.vgg is None
    assert not SyncLoss(weight=0, weights=str(tmp_path / "nope.pt")).active


# ----------------------------------------------------------------------------- losses

#: torchvision's vgg19: convolutions at these `features` indices, widths per conv.
TV_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
TV_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def torchvision_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the key layout and shapes of torchvision's vgg19 file."""
    g = torch.Generator().manual_seed(seed)
    state, ch = {}, 3
    for index, width in zip(TV_CONVS, TV_WIDTHS, strict=True):
        state[f"features.{index}.weight"] = torch.randn(width, ch, 3, 3, generator=g) * 0.05
        state[f"features.{index}.bias"] = torch.randn(width, generator=g) * 0.01
        ch = width
    for index, width in ((0, 4096), (3, 4096), (6, 1000)):  # ignored by the loader
        state[f"classifier.{index}.weight"] = torch.zeros(width, 1)
        state[f"classifier.{index}.bias"] = torch.zeros(width)
    return state


def test_vgg19_loads_torchvision_layout_and_measures_differences(tmp_path: Path) -> None:
    state = torchvision_vgg19_state()
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    loss = PerceptualLoss(weights=str(tmp_path / "vgg19-dcbb9e9d.pth"), resize=64, scales=[1, 0.5])
    expected = {f"features.{i}.{p}" for i in TV_CONVS[:13] for p in ("weight", "bias")}
    assert set(loss.vgg.state_dict()) == expected  # up to conv5_1 (relu5_1 = index 29)
    assert torch.equal(loss.vgg.state_dict()["features.28.weight"], state["features.28.weight"])
    assert not any(p.requires_grad for p in loss.vgg.parameters())

    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    pred = (target + 0.3 * torch.randn(2, 3, 64, 64, generator=g)).requires_grad_(True)
    assert loss(target, target).item() == 0.0
    value = loss(pred, target)
    value.backward()
    assert value.item() > 0 and pred.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="16 px"):
        PerceptualLoss(weights=str(tmp_path / "vgg19-dcbb9e9d.pth"), resize=64)(pred, target)
    state["features.5.weight"] = torch.zeros(128, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features.5.weight"):
        PerceptualLoss(weights=str(tmp_path / "bad.pth"))


TINY_SYNC = {
    "audio_encoder": {
        "in_channels": 1,
        "block_out_channels": [32] * 7,
        "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
        "attn_blocks": [0, 0, 0, 1, 0, 0, 0],
        "dropout": 0.0,
        "norm_num_groups": 8,
    },
    "visual_encoder": {
        "in_channels": 48,
        "block_out_channels": [32] * 6,
        "downsample_factors": [[1, 2], 2, 2, 2, 2, 2],
        "attn_blocks": [0] * 6,
        "dropout": 0.0,
        "norm_num_groups": 8,
    },
}


def test_syncnet_has_latentsync_layout_and_loads_its_checkpoint_format(tmp_path: Path) -> None:
    full = SyncNet()  # LatentSync's syncnet_16_pixel config, random weights
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert shapes["visual_encoder.conv_in.weight"] == (64, 48, 3, 3)
    assert shapes["visual_encoder.down_blocks.0.downsample_conv.weight"] == (64, 64, 3, 3)
    assert shapes["visual_encoder.down_blocks.1.conv_shortcut.weight"] == (128, 64, 1, 1)
    assert shapes["audio_encoder.down_blocks.6.conv2.weight"] == (2048, 2048, 3, 3)
    assert shapes["audio_encoder.norm_out.weight"] == (2048,)
    assert "audio_encoder.down_blocks.3.downsample_conv.weight" not in shapes  # factor 1
    assert "visual_encoder.down_blocks.0.conv_shortcut.weight" not in shapes  # 64 -> 64
    with torch.no_grad():
        assert full.visual_encoder(torch.zeros(1, 48, 128, 256)).shape == (1, 2048, 1, 1)
        assert full.audio_encoder(torch.zeros(1, 1, 80, 52)).shape == (1, 2048, 1, 1)
    attn = SyncNet(TINY_SYNC)  # an attention block after residual block 3 of the audio encoder
    assert "audio_encoder.down_blocks.4.attn.to_q.weight" in attn.state_dict()
    assert "audio_encoder.down_blocks.4.ff.net.0.proj.weight" in attn.state_dict()
    assert "audio_encoder.down_blocks.5.downsample_conv.weight" in attn.state_dict()

    torch.save({"state_dict": attn.state_dict(), "global_step": 7}, tmp_path / "sync.pt")
    loaded = load_syncnet(tmp_path / "sync.pt", TINY_SYNC).eval()
    frames, mel = torch.randn(2, 48, 32, 64), torch.randn(2, 1, 80, 52)
    with torch.no_grad():
        assert torch.equal(loaded(frames, mel), attn.eval()(frames, mel))
    with pytest.raises(ValueError, match="missing"):
        load_syncnet(tmp_path / "sync.pt", LATENTSYNC_SYNCNET)


def test_sync_loss_is_bce_of_clamped_similarity_on_lower_halves(tmp_path: Path) -> None:
    loss = SyncLoss(random_init=True, config=TINY_SYNC)
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(3, 16, 3, 64, 64, generator=g) * 2 - 1
    mel = torch.rand(3, 80, 52, generator=g) * 8 - 4
    lower = clips[:, :, :, 32:, :].reshape(3, 48, 32, 64)  # (b, f*c, h, w), frame-major
    with torch.no_grad():
        similarity = loss.syncnet(lower, mel[:, None]).clamp(0, 1)
        expected = -torch.log(similarity.clamp(min=math.exp(-100))).mean()
        assert torch.allclose(loss(clips, mel), expected, atol=1e-6)
        upper_changed = clips.clone()
        upper_changed[:, :, :, :32] = 0  # the upper half does not matter
        assert torch.equal(loss(upper_changed, mel), loss(clips, mel))
    with pytest.raises(ValueError, match="16 frames"):
        loss(clips[:, :8], mel)


def test_adversarial_terms_send_gradients_only_where_they_belong() -> None:
    torch.manual_seed(0)
    adv = AdversarialLoss(region="mouth", size=32, channels=8, max_channels=32, num_blocks=3)
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    pred = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    boxes = torch.tensor([[16.0, 36.0, 48.0, 56.0], [10.0, 30.0, 50.0, 60.0]])
    gan, fm = adv.generator_terms(pred, target, boxes)
    (gan + fm).backward()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.discriminator.parameters())
    assert all(p.requires_grad for p in adv.discriminator.parameters())  # restored
    pred.grad = None
    adv.discriminator_loss(pred, target, boxes).backward()
    assert pred.grad is None
    assert all(p.grad is not None for p in adv.discriminator.parameters())
    # The mouth crop is the box (x1, y1, x2, y2) in pixels: at the discriminator's size, exact.
    image = torch.rand(1, 3, 64, 64)
    crop = adv.inputs(image, torch.tensor([[16.0, 24.0, 48.0, 56.0]]))
    assert crop.shape == (1, 3, 32, 32)
    torch.testing.assert_close(crop, image[..., 24:56, 16:48])


def test_image_grid_places_columns_and_rows() -> None:
    cols = [torch.full((2, 3, 4, 5), v) for v in (-1.0, 0.0, 1.0)]
    grid = image_grid(cols, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3) and grid.dtype.name == "uint8"
    assert (grid[1:5, 1:6] == 0).all() and (grid[1:5, 7:12] == 128).all()
    assert (grid[6:10, 13:18] == 255).all() and (grid[0] == 255).all()


# ----------------------------------------------------------------------------- module


def test_module_wav_tokens_are_inference_tokens(
    shards: Path, shared_data: Path, tmp_path: Path
) -> None:
    """The module's wav path (Whisper on the batch's audio context, window by window) gives
    inference's tokens of the same source frames (Whisper on the whole file, then
    audio_windows), with the positional encoding as configured."""
    cfg = tiny_cfg(shards, tmp_path)
    dm = instantiate(cfg.data)
    batch = next(iter(dm.train_loader()))
    module = instantiate(cfg.module)
    whisper: WhisperEncoder = module.whisper
    source = torch.from_numpy(whisper.encode(load_audio(shared_data / "talking_demo1.mp4")))
    starts = {s.key: s.meta["frame_index"][0] for s in iter_samples(shards, images=False)}
    frames = batch["target"].shape[1]
    inference = torch.stack(
        [
            audio_windows(
                source, frames, start_frame=starts[key] + int(batch["target_index"][b, 0])
            )
            for b, key in enumerate(batch["key"])
        ]
    )
    tokens_wav = module.audio_tokens(batch)
    tokens_inference = module.audio_tokens({"audio": inference})
    assert tokens_wav.shape == (len(batch["key"]), 30, 384)
    # 16-bit PCM context audio and torch vs numpy log-mel: equal to fp16 tolerance
    assert torch.allclose(tokens_wav, tokens_inference, atol=4e-3)
    module.audio_positional_encoding = False
    assert not torch.allclose(module.audio_tokens(batch), tokens_wav, atol=1e-3)


def test_gradient_checkpointing_gives_the_same_gradients(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(shards, tmp_path)
    batch = next(iter(instantiate(cfg.data).train_loader()))
    grads = []
    for checkpointing in (False, True):
        L.seed_everything(cfg.seed)
        module = instantiate(cfg.module, gradient_checkpointing=checkpointing).train()
        assert module.unet.is_gradient_checkpointing == checkpointing
        generator, _, _ = module.losses_of(batch, module(batch))
        generator.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.unet.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_wandb_offline_and_tensorboard_get_metrics_and_image_grids(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")  # optional: pip install wandb tensorboard
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config's default: offline
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny_cfg(
        shards,
        tmp_path,
        "logger=[wandb,tensorboard]",
        "trainer.max_steps=2",
        "data.batches_per_epoch=2",
        "trainer.val_check_interval=2",
    )
    train_entry.train(cfg)
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list((offline / "files" / "media" / "images" / "val").glob("images_*.png"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("val/images")] == [2]
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "throughput/samples_per_s", "val/l1"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_tiny_run_end_to_end_checkpoints_export_images_and_logs(stage1_run) -> None:
    cfg, result = stage1_run
    run = Path(cfg.paths.output_dir)
    assert result.global_step == 4 and result.run_dir == run
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["shards"] == cfg.data.shards and config["seed"] == 42

    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert not any(
        k.startswith(("vae.", "audio_encoder.", "losses.perceptual.")) for k in ckpt["state_dict"]
    )

    export = result.export_dir
    config_json = json.loads((export / "musetalk.json").read_text())
    plain = UNet2DConditionModel(**config_json)  # what users of released weights do
    plain.load_state_dict(torch.load(export / "unet.pth", weights_only=True), strict=True)
    unet_ckpt = {k[5:]: v for k, v in ckpt["state_dict"].items() if k.startswith("unet.")}
    assert all(torch.equal(v, unet_ckpt[k]) for k, v in plain.state_dict().items())
    assert all(
        torch.equal(v, unet_ckpt[k]) for k, v in load_file(export / "unet.safetensors").items()
    )
    info = json.loads((export / "training.json").read_text())
    assert info["audio_positional_encoding"] is True and info["global_step"] == 4
    assert (
        info["shift_stats"]["equivalent_shift_norm"]["q50"]
        == json.loads((Path(cfg.data.shards) / "stats.json").read_text())["equivalent_shift_norm"][
            "q50"
        ]
    )
    assert torch.equal(
        load_unet(run / "checkpoints" / "last.ckpt", config=TINY_UNET).conv_in.weight,
        plain.conv_in.weight,
    )

    grids = sorted((run / "images").glob("*.png"))
    assert [p.name for p in grids] == ["val_step0000002.png", "val_step0000004.png"]
    grid = cv2.imread(str(grids[-1]))
    assert grid.shape[1] == 4 * (64 + 2) + 2  # masked | reference | prediction | ground truth
    rows = train_rows(run)  # x = UNet updates done, as in the checkpoint names
    assert sorted(rows) == [1, 2, 3, 4]
    for step, row in rows.items():  # linear warmup over 5 updates to lr 1e-4
        assert row["train/lr"] == pytest.approx(1e-4 * min(1.0, step / 5))
        assert row["train/loss"] == pytest.approx(row["train/l1"] + 0.01 * row["train/perceptual"])
        assert row["throughput/samples_per_s"] > 0
    val = [r for r in metrics(run) if "val/l1" in r]
    assert val and all(
        {"val/psnr_mouth", "val/ssim_mouth"} <= set(r) and "val/lmd" not in r for r in val
    )  # 64 px crops: too small for landmarks, so no LMD
    assert result.metric("val/psnr_mouth") == pytest.approx(val[-1]["val/psnr_mouth"])
    assert result.metric(None) is None
    with pytest.raises(ConfigError, match="optimized_metric='val/nothing' was not logged"):
        result.metric("val/nothing")


def test_tiny_export_is_self_sufficient_for_offline_inference(
    stage1_run, shared_data: Path, tmp_path: Path
) -> None:
    """The tiny experiment's random VAE and Whisper travel with the export: `infer.py
    infer_model=export` runs on it with no other argument and no network."""
    from musetalk.files import sha256_file
    from musetalk.inference.pipeline import MuseTalkPipeline
    from musetalk.video import iter_frames

    export = stage1_run[1].export_dir
    info = json.loads((export / "training.json").read_text())
    assert info["format"] == 2
    for name, weights in (
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("whisper", "model.safetensors"),
    ):
        assert info[name]["source"] == name and info[name]["bundled"] is True
        assert info[name]["sha256"] == {weights: sha256_file(export / name / weights)}

    pipe = MuseTalkPipeline.from_export_dir(export)
    assert pipe.model_info["vae"] == str(export / "vae")
    assert pipe.model_info["whisper"] == str(export / "whisper")
    saved = load_file(export / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in pipe.vae.state_dict().items())

    _, frame = next(iter_frames(shared_data / "talking_demo1.mp4", end=1))
    image, audio, out = tmp_path / "face.png", tmp_path / "a.wav", tmp_path / "out.mp4"
    cv2.imwrite(str(image), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    import soundfile as sf

    sf.write(audio, load_audio(shared_data / "speech_en_16k.wav")[:9600], 16000)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [f"video={image}", f"audio={audio}", f"output={out}", "progress=false"]

    def infer_with_the_export() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(REPO / "infer.py"), "infer_model=export", f"models_dir={export}"]
            + args,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )

    proc = infer_with_the_export()
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["model"]["vae"] == str(export / "vae")

    # a VAE recorded as a local directory that is gone: one line naming the override
    moved = {**info, "vae": {"source": str(tmp_path / "gone"), "sha256": {}}}
    (export / "training.json").write_text(json.dumps(moved))
    try:
        proc = infer_with_the_export()
    finally:
        (export / "training.json").write_text(json.dumps(info))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "infer_model.vae=" in proc.stderr and str(tmp_path / "gone") in proc.stderr


def test_validation_lmd_fits_landmarks_on_both_crops(shards: Path, tmp_path: Path) -> None:
    """val/lmd: 0 for a prediction equal to the target, > 0 when the mouth moved (the lower
    half of the crop shifted down by 6 px)."""
    cfg = tiny_cfg(shards, tmp_path, "data.crop_size=128")
    batch = finish_batch(next(iter(instantiate(cfg.data).train_loader())))
    module = instantiate(cfg.module)
    target = batch["target"].flatten(0, 1)
    assert module._lmd(target, target) == 0.0
    moved = target.clone()
    moved[..., 70:, :] = target[..., 64:-6, :]
    assert module._lmd(moved, target) > 0.005


def test_overfitting_a_few_samples_lowers_the_loss(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(shards, tmp_path, "module.lr=1e-3", "module.warmup_steps=0")
    L.seed_everything(0)
    dm = instantiate(cfg.data)
    batches = list(itertools.islice(iter(dm.train_loader()), 2))  # 4 clips, fixed
    module = instantiate(cfg.module)

    def l1() -> float:
        with torch.no_grad():
            outs = [module(b) for b in batches]
        return sum(float((o["pred"] - o["target"]).abs().mean()) for o in outs) / len(outs)

    before = l1()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.global_step == 30
    assert l1() < 0.8 * before


class FixedBatches(L.LightningDataModule):
    """The same real batches every epoch (so that a resumed run sees the batches the
    uninterrupted run saw, whatever the shard stream does across processes)."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


def fit_fixed(cfg, batches: list[dict], ckpt_path: str | None = None):
    """The entry point's steps (seed, build from the config, fit) on fixed batches."""
    L.seed_everything(cfg.seed)
    module = instantiate(cfg.module)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        logger=[instantiate(cfg.logger.csv)],
        default_root_dir=cfg.paths.output_dir,
    )
    return fit(trainer, module, FixedBatches(batches), ckpt_path=ckpt_path)


def test_resume_continues_exactly(shards: Path, tmp_path: Path) -> None:
    """Resuming from the step-2 checkpoint gives the uninterrupted run's updates 3 and 4 (same
    losses and lr), and its final weights, optimizer and scheduler states."""
    overrides = ["trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2"]
    a_dir, b_dir = tmp_path / "uninterrupted", tmp_path / "resumed"
    cfg_a = tiny_cfg(shards, a_dir, *overrides)
    L.seed_everything(0)
    batches = list(itertools.islice(iter(instantiate(cfg_a.data).train_loader()), 2))
    assert fit_fixed(cfg_a, batches).global_step == 4
    first = a_dir / "checkpoints" / "step0000002.ckpt"
    result = fit_fixed(tiny_cfg(shards, b_dir, *overrides), batches, ckpt_path=str(first))
    assert result.global_step == 4
    a, b = train_rows(a_dir), train_rows(b_dir)
    assert sorted(b) == [3, 4]  # continues after the checkpoint's 2 updates
    for step in (3, 4):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-6)
        assert b[step]["train/lr"] == a[step]["train/lr"]
    ca = torch.load(a_dir / "checkpoints" / "step0000004.ckpt", weights_only=False)
    cb = torch.load(b_dir / "checkpoints" / "step0000004.ckpt", weights_only=False)
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        assert float(sa[i]["step"]) == float(sb[i]["step"]) == 4
        torch.testing.assert_close(sa[i]["exp_avg"], sb[i]["exp_avg"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-6, atol=1e-12)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k, v in ca["state_dict"].items():
        torch.testing.assert_close(cb["state_dict"][k], v, rtol=1e-6, atol=1e-9)
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    # A changed setting the weights depend on is refused on resume.
    mismatch = tiny_cfg(shards, tmp_path / "mismatch", "audio_positional_encoding=false")
    with pytest.raises(ValueError, match="audio_positional_encoding"):
        fit_fixed(mismatch, batches, ckpt_path=str(first))


@pytest.mark.parametrize("per_epoch", [3, 2])
def test_resume_continues_the_data_stream(shards: Path, tmp_path: Path, per_epoch: int) -> None:
    """Resuming from a checkpoint of the real DataModule (mid-epoch, or at the end of an epoch)
    trains on the batches the uninterrupted run trained on next (sample keys and frames), with
    the same losses."""
    overrides = [
        "trainer.max_steps=5",
        f"data.batches_per_epoch={per_epoch}",
        "trainer.limit_val_batches=0",
        "callbacks.checkpoint.every_n_train_steps=2",
    ]

    def run(out: Path, ckpt_path: str | None = None):
        cfg = tiny_cfg(
            shards,
            out,
            *overrides,
            "+callbacks.samples._target_=musetalk.training.callbacks.SampleLog",
            f"+callbacks.samples.dirpath={out / 'samples'}",
        )
        L.seed_everything(cfg.seed)
        module = instantiate(cfg.module)
        trainer = instantiate(
            cfg.trainer,
            callbacks=[instantiate(c) for c in cfg.callbacks.values()],
            logger=[instantiate(cfg.logger.csv)],
            default_root_dir=cfg.paths.output_dir,
        )
        result = fit(trainer, module, instantiate(cfg.data), ckpt_path=ckpt_path)
        lines = (out / "samples" / "rank0.tsv").read_text().splitlines()
        return result, {int(step): clips for step, _, clips in (r.split("\t") for r in lines)}

    a_dir, b_dir = tmp_path / "uninterrupted", tmp_path / "resumed"
    result, a = run(a_dir)
    assert result.global_step == 5 and sorted(a) == [1, 2, 3, 4, 5]
    assert len(set(a.values())) == 5  # every step trained on other clips
    first = a_dir / "checkpoints" / "step0000002.ckpt"
    for step in (2, 4):  # epoch and batches trained on in it, a finished epoch rolled over
        ckpt = torch.load(a_dir / "checkpoints" / f"step{step:07d}.ckpt", weights_only=False)
        epoch, batches = divmod(step, per_epoch)
        assert ckpt["TalkingFaceDataModule"] == {"epoch": epoch, "batches": batches}
    result, b = run(b_dir, ckpt_path=str(first))
    assert result.global_step == 5
    assert b == {step: a[step] for step in (3, 4, 5)}  # the unseen batches, in order
    rows_a, rows_b = train_rows(a_dir), train_rows(b_dir)
    for step in (3, 4, 5):
        assert rows_b[step]["train/loss"] == pytest.approx(rows_a[step]["train/loss"], rel=1e-6)


@pytest.mark.slow
def test_stage2_gan_and_sync_paths_with_tiny_networks(
    shards: Path, stage1_run, tmp_path: Path
) -> None:
    """Stage-2 losses on (16-frame clips, mel, face and mouth discriminators, random SyncNet),
    initialised from the stage-1 export, with gradient accumulation 2: the UNet and both
    discriminators are updated, and global_step counts UNet updates only."""
    _, stage1 = stage1_run
    cfg = tiny_cfg(
        shards,
        tmp_path,
        f"model.init_unet={stage1.export_dir / 'unet.safetensors'}",
        "losses.gan.weight=0.01",
        "losses.mouth_gan.weight=0.01",
        "losses.sync.weight=0.05",
        "data.frames_per_sample=16",
        "data.sync_mel=true",
        "data.batch_size=1",
        "data.batches_per_epoch=4",
        "module.accumulate_grad_batches=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=4",
        "callbacks.checkpoint.every_n_train_steps=2",
    )
    L.seed_everything(cfg.seed)
    module = instantiate(cfg.module)
    exported = load_unet(stage1.export_dir / "unet.safetensors")
    assert same_weights(module.unet, exported)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = instantiate(
        cfg.trainer,
        logger=[instantiate(cfg.logger.csv)],
        default_root_dir=str(tmp_path),
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
    )
    result = fit(trainer, module, instantiate(cfg.data))
    assert result.global_step == 2  # 4 batches, accumulation 2; discriminator steps not counted
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    for prefix in ("unet.", "losses.gan.discriminator.", "losses.mouth_gan.discriminator."):
        assert any(k.startswith(prefix) and "weight" in k for k in changed), prefix
    assert not any(k.startswith(("vae.", "losses.sync.", "losses.perceptual.")) for k in changed)
    rows = train_rows(tmp_path)
    assert sorted(rows) == [1, 2]
    for row in rows.values():
        for key in ("gan", "gan_fm", "gan_d", "mouth_gan", "mouth_gan_fm", "mouth_gan_d", "sync"):
            assert math.isfinite(row[f"train/{key}"]) and row[f"train/{key}"] >= 0, key
        expected = (
            row["train/l1"]
            + 0.01 * (row["train/perceptual"] + row["train/gan"] + row["train/mouth_gan"])
            + row["train/gan_fm"]
            + row["train/mouth_gan_fm"]
            + 0.05 * row["train/sync"]
        )
        assert row["train/loss"] == pytest.approx(expected, rel=1e-5)
    ckpt = torch.load(result.last_checkpoint, weights_only=False)
    assert len(ckpt["optimizer_states"]) == 3  # UNet, face and mouth discriminators
    assert any(k.startswith("losses.gan.discriminator.") for k in ckpt["state_dict"])
    assert not any(k.startswith("losses.sync.") for k in ckpt["state_dict"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_uneven_shards_then_resume_on_one(
    uneven_shards: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    overrides = [
        "+experiment=tiny",
        f"data.shards={uneven_shards}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        "trainer.val_check_interval=4",
        "data.batches_per_epoch=4",
        "module.accumulate_grad_batches=2",
        "losses.gan.weight=0.01",  # discriminators and their optimizers under DDP too
        "losses.mouth_gan.weight=0.01",
        "callbacks.checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={run}",
        "+callbacks.samples._target_=musetalk.training.callbacks.SampleLog",
        f"+callbacks.samples.dirpath={run / 'samples'}",
        "+callbacks.samples.weights_checksum=true",
        *QUIET,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for notice in ("in eval mode", "LeafSpec", "`__len__`", "Tip:", "AFTER optimization"):
        assert notice not in proc.stdout + proc.stderr, notice  # harmless ones are silenced
    logs = {}
    for rank in (0, 1):
        lines = (run / "samples" / f"rank{rank}.tsv").read_text().splitlines()
        logs[rank] = [line.split("\t") for line in lines]
    assert len(logs[0]) == len(logs[1]) == 6  # 3 steps x 2 accumulated batches on each rank
    clips = {rank: [row[2] for row in rows] for rank, rows in logs.items()}
    assert clips[0] != clips[1] and set(clips[0]) != set(clips[1])
    for row0, row1 in zip(logs[0], logs[1], strict=True):  # same weights on both ranks
        assert row0[0] == row1[0] and float(row0[3]) == pytest.approx(float(row1[3]), rel=1e-9)
    steps = [int(row[0]) for row in logs[0]]
    assert steps == [0, 1, 1, 2, 2, 3]
    assert (run / "export" / "unet.safetensors").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and len(ckpt["optimizer_states"]) == 3

    resumed = tiny_cfg(
        uneven_shards,
        tmp_path / "resumed",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=5",
        "data.batches_per_epoch=4",
        "losses.gan.weight=0.01",
        "losses.mouth_gan.weight=0.01",
    )
    assert train_entry.train(resumed).global_step == 5
