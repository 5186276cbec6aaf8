"""UNet loading/export in the released MuseTalk format, the VAE loader, the mask."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from musetalk.errors import CheckpointError, UnsafeFileError
from musetalk.models import (
    TINY_UNET,
    TINY_VAE,
    build_unet,
    decode,
    encode,
    export_unet,
    load_unet,
    load_vae,
    mask_lower_half,
    unet_input,
)


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return build_unet(TINY_UNET).eval()


def run(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 32, 32, generator=g)
    audio = torch.randn(2, 50, 384, generator=g)
    with torch.no_grad():
        return unet(x, 0, encoder_hidden_states=audio).sample


def test_export_loads_strictly_with_plain_diffusers(tiny_unet, tmp_path):
    export_unet(tiny_unet, tmp_path)
    config = json.loads((tmp_path / "musetalk.json").read_text())
    plain = UNet2DConditionModel(**config)  # what released-weight users do
    plain.load_state_dict(torch.load(tmp_path / "unet.pth", weights_only=True), strict=True)
    expected = run(tiny_unet)
    assert torch.equal(run(plain.eval()), expected)
    for name in ("unet.pth", "unet.safetensors"):
        assert torch.equal(run(load_unet(tmp_path / name).eval()), expected)


def test_released_v1_layout_and_lightning_checkpoints_load(tiny_unet, tmp_path):
    v1 = tmp_path / "musetalk"
    v1.mkdir()
    (v1 / "musetalk.json").write_text(json.dumps(TINY_UNET))
    torch.save(tiny_unet.state_dict(), v1 / "pytorch_model.bin")
    assert torch.equal(run(load_unet(v1 / "pytorch_model.bin").eval()), run(tiny_unet))
    ckpt = {"state_dict": {f"unet.{k}": v for k, v in tiny_unet.state_dict().items()}, "epoch": 3}
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = load_unet(tmp_path / "last.ckpt", config=TINY_UNET)
    assert torch.equal(run(loaded.eval()), run(tiny_unet))


def test_mismatches_and_missing_files_are_clear(tiny_unet, tmp_path):
    export_unet(tiny_unet, tmp_path)
    other = dict(TINY_UNET, block_out_channels=[32, 96])
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_unet(tmp_path / "unet.pth", config=other)
    state = tiny_unet.state_dict()
    del state["conv_in.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="1 missing"):
        load_unet(tmp_path / "partial.pth", config=TINY_UNET)
    with pytest.raises(FileNotFoundError, match="musetalk.json"):
        load_unet(tmp_path / "sub" / "unet.pth", config=tmp_path / "sub" / "musetalk.json")
    with pytest.raises(FileNotFoundError, match="UNet weights not found"):
        load_unet(tmp_path / "nope.pth")


class Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_pickled_code_is_never_executed(tmp_path):
    (tmp_path / "musetalk.json").write_text(json.dumps(TINY_UNET))
    with (tmp_path / "evil.pth").open("wb") as f:
        pickle.dump({"conv_in.weight": Payload()}, f)
    with pytest.raises(UnsafeFileError, match=r"evil\.pth: refused") as err:
        load_unet(tmp_path / "evil.pth")
    assert "weights_only=False" not in str(err.value)
    assert "only safetensors files and weights-only torch checkpoints" in str(err.value)


def test_vae_local_dir_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path / "sd-vae")
    vae = load_vae(tmp_path / "sd-vae")
    assert not any(p.requires_grad for p in vae.parameters())
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        latents = encode(vae, images)
        assert latents.shape == (2, 4, 32, 32)
        assert torch.equal(latents, encode(vae, images))  # deterministic (distribution mode)
        assert decode(vae, latents).shape == (2, 3, 256, 256)
    with pytest.raises(FileNotFoundError, match="VAE directory not found"):
        load_vae(tmp_path / "missing")


def test_mask_and_unet_input_order():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    masked = mask_lower_half(images)
    assert torch.equal(masked[..., :4, :], images[..., :4, :])
    assert torch.all(masked[..., 4:, :] == -1) and not torch.all(images[..., 4:, :] == -1)
    a, b = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    x = unet_input(a, b)
    assert x.shape == (1, 8, 2, 2) and x[:, :4].sum() == 0 and x[:, 4:].sum() == 16
