"""MuseTalk v1.5 recipe parity: schedules, feature matching from step 0, the VGG input, the mouth
box, the audio positional encoding of fine-tuned weights (each against MuseTalk's numbers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from musetalk.losses import AdversarialLoss, PerceptualLoss
from musetalk.losses.perceptual import gaussian_downsample
from musetalk.models.export import write_training_info
from musetalk.training.crops import mouth_box
from musetalk.training.module import lr_factor, trained_with_positional_encoding


def test_generator_schedule_is_warmup_then_linear_decay_to_zero() -> None:
    warmup, total = 10, 110
    assert lr_factor(0, warmup, total, "linear") == pytest.approx(0.1)
    assert lr_factor(9, warmup, total, "linear") == 1.0
    assert lr_factor(10, warmup, total, "linear") == 1.0
    assert lr_factor(60, warmup, total, "linear") == pytest.approx(0.5)
    assert lr_factor(110, warmup, total, "linear") == 0.0
    assert lr_factor(500, warmup, total, "linear") == 0.0  # clamped, as diffusers' "linear"
    assert lr_factor(60, warmup, total, "cosine") == pytest.approx(0.5)
    assert lr_factor(35, warmup, total, "cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor(100, warmup, total, "constant") == 1.0


def test_discriminator_lr_anneals_to_its_minimum() -> None:
    disc = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(disc.parameters(), lr=5e-6)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-6)
    lrs = []
    for _ in range(20):
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[9] == pytest.approx(3e-6) and lrs[-1] == pytest.approx(1e-6)


def test_feature_matching_counts_before_the_gan_starts() -> None:
    """Before start_step the LSGAN terms are off, but feature matching is already on."""
    loss = AdversarialLoss(
        weight=0.01, feature_matching=1.0, region="face", size=None, start_step=1000,
        channels=8, max_channels=16, num_blocks=2,
    )  # fmt: skip
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    gan, fm = loss.generator_terms(pred, target, None)
    assert loss.factor(0) == 0.0 and loss.factor(1000) == 1.0
    assert float(fm) > 0 and float(gan) > 0
    # the module's generator total at step 0: only feature matching of the two terms
    on = loss.factor(0)
    total = on * loss.weight * gan + loss.feature_matching * fm
    assert float(total) == pytest.approx(float(fm))


def test_gaussian_pyramid_level_matches_musetalk_kernel() -> None:
    """Scale 0.5: sigma 0.5, a 5x5 normalised Gaussian, then every 2nd pixel."""
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 8, 8] = 1.0
    out = gaussian_downsample(image, 0.5)
    assert out.shape == (1, 1, 8, 8)
    g = np.exp(-((np.arange(5) - 2.0) ** 2) / (2 * 0.25))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    assert float(out[0, 0, 4, 4]) == pytest.approx(kernel[2, 2], rel=1e-5)
    assert float(out[0, 0, 4, 5]) == pytest.approx(kernel[2, 0], rel=1e-4)  # 2 px away
    flat = gaussian_downsample(torch.full((1, 3, 32, 32), 0.3), 0.25)
    assert torch.allclose(flat[:, :, 2:-2, 2:-2], torch.tensor(0.3))  # away from the zero pad


def test_vgg_input_modes_differ_as_described() -> None:
    """musetalk feeds [-1, 1] to the ImageNet normalisation; unit maps to [0, 1] first: the same
    images give different losses, and unit mode equals musetalk mode on images (x + 1) / 2."""
    common = {"random_init": True, "width": 0.125, "resize": None, "scales": [1.0]}
    musetalk = PerceptualLoss(input="musetalk", **common)
    unit = PerceptualLoss(input="unit", **common)
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(musetalk(a, b)) != pytest.approx(float(unit(a, b)))
    assert float(unit(a, b)) == pytest.approx(float(musetalk((a + 1) / 2, (b + 1) / 2)), rel=1e-5)
    with pytest.raises(ValueError, match="input"):
        PerceptualLoss(input="imagenet", **common)


def test_mouth_box_is_musetalks() -> None:
    """Lips x extent +- 10 px (at 256), height = width / 2 on the lips' y midpoint."""
    landmarks = np.zeros((68, 2))
    landmarks[:, 0], landmarks[:, 1] = 100.0, 100.0
    lips = np.array([[90.0, 160.0], [166.0, 160.0], [128.0, 150.0], [128.0, 180.0]])
    landmarks[48:52] = lips
    landmarks[52:67] = [128.0, 165.0]
    landmarks[67] = [40.0, 250.0]  # index 67 is not part of MuseTalk's lips slice
    rect, stored = (0, 0, 256, 256), (256, 256)
    box = mouth_box(landmarks, rect, stored, np.array([0.0, 0.0, 256.0, 256.0]), 10.0, 256)
    np.testing.assert_allclose(box, [80.0, 165.0 - 24.0, 176.0, 165.0 + 24.0])
    half = mouth_box(landmarks, rect, stored, np.array([0.0, 0.0, 256.0, 256.0]), 10.0, 128)
    np.testing.assert_allclose(half, box / 2)  # the padding scales with the crop


def test_positional_encoding_follows_the_initial_weights(tmp_path) -> None:
    assert trained_with_positional_encoding(None) is True  # random init: our convention
    released = tmp_path / "musetalkV15"
    released.mkdir()
    (released / "unet.pth").write_bytes(b"")
    (released / "musetalk.json").write_text(json.dumps({}))
    assert trained_with_positional_encoding(str(released / "unet.pth")) is True
    export = tmp_path / "export"
    export.mkdir()
    write_training_info(export, {"audio_positional_encoding": False})
    assert trained_with_positional_encoding(str(export / "unet.safetensors")) is False
