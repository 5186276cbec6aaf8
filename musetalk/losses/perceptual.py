"""VGG19 perceptual loss over an image pyramid (MuseTalk's `vgg_loss`).

Our own VGG19 feature stack (convolutions up to relu5_1) with torchvision's key layout
(`features.N.weight`), so the standard ImageNet file `vgg19-dcbb9e9d.pth` loads into it without
torchvision. Features at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of the prediction and the
target, at every pyramid scale, are compared with L1 and averaged with per-layer weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from musetalk.files import fetch_weights

#: torchvision's ImageNet VGG19 (the file MuseTalk's `models.vgg19(pretrained=True)` loads).
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
#: VGG19 ("E") convolution widths per stage, up to conv5_1; "M" = 2x2 max pool.
_VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
#: `features` indices whose outputs are compared: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
FEATURE_LAYERS = (1, 6, 11, 20, 29)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG19 convolutions up to relu5_1, keys `features.N.*` as in torchvision's `vgg19`.

    width: channel multiplier (1.0 = the real network; smaller only for random-init smoke runs).
    Input: (N, 3, H, W) RGB (in [0, 1], or MuseTalk's [-1, 1]); ImageNet normalisation is
    applied inside.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = max(1, round(int(item) * width))
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Five feature maps (relu1_1 .. relu5_1) of (N, 3, H, W) images in [0, 1]."""
        x = (images - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in FEATURE_LAYERS:
                out.append(x)
        return out

    def load_torchvision(self, path: str | Path) -> VGG19Features:
        """Load the `features.*` convolutions of a torchvision VGG19 state dict file strictly
        (classifier and layers past conv5_1 are ignored); ValueError on missing/misshaped keys."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a VGG19 state dict, got {type(state).__name__}")
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state)
        wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != own[k].shape)
        if missing or wrong:
            raise ValueError(
                f"{path} is not torchvision's VGG19 layout: missing {missing[:3]}, wrong shapes "
                f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}"
            )
        self.load_state_dict({k: state[k] for k in own}, strict=True)
        return self


def gaussian_downsample(images: torch.Tensor, scale: float) -> torch.Tensor:
    """MuseTalk's pyramid level: a Gaussian blur (sigma = (1/scale - 1) / 2, kernel
    2 round(4 sigma) + 1, reflect-free zero padding) then every (1/scale)-th pixel."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    grid = torch.arange(size, dtype=images.dtype, device=images.device) - (size - 1) / 2
    kernel_1d = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = torch.outer(kernel_1d, kernel_1d)
    kernel = (kernel / kernel.sum()).expand(images.shape[1], 1, size, size)
    blurred = F.conv2d(images, kernel, padding=size // 2, groups=images.shape[1])
    step = round(1 / scale)
    return blurred[:, :, ::step, ::step]


class PerceptualLoss(nn.Module):
    """L1 between VGG19 features of predictions and targets over an image pyramid.

    weight: factor in the generator loss (MuseTalk: 0.01); with 0 no network is built or loaded.
    weights: torchvision's `vgg19-dcbb9e9d.pth`; None = the torch hub cache copy (downloaded
    there when `download` and the network allow). random_init: a seeded random VGG-shaped
    network instead (smoke runs without the file; meaningless as a perceptual measure).
    width: channel multiplier of the random network. layer_weights: per feature layer
    (relu1_1 .. relu5_1). scales: pyramid scales of the (resized) images. resize: side the
    images are resized to first (MuseTalk: 224), None = as they are.
    """

    def __init__(
        self,
        weight: float = 0.01,
        weights: str | None = None,
        download: bool = True,
        random_init: bool = False,
        width: float = 1.0,
        layer_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0),
        scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        resize: int | None = 224,
        input: Literal["musetalk", "unit"] = "musetalk",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"expected weight >= 0, got {weight}")
        if len(layer_weights) != len(FEATURE_LAYERS) or sum(layer_weights) <= 0:
            raise ValueError(f"expected 5 layer_weights with a positive sum, got {layer_weights}")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"expected scales in (0, 1], got {scales}")
        if width != 1.0 and not random_init:
            raise ValueError(f"width={width} only exists for random_init (pretrained VGG19 is 1.0)")
        self.weight = float(weight)
        self.layer_weights = [float(w) for w in layer_weights]
        self.scales = [float(s) for s in scales]
        self.resize = resize
        if input not in ("musetalk", "unit"):
            raise ValueError(f"input must be 'musetalk' or 'unit', got {input!r}")
        self.input = input
        self.vgg: VGG19Features | None = None
        if not self.active:
            return
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vgg = VGG19Features(width)
        else:
            try:
                path = fetch_weights(
                    weights, VGG19_URL, option="losses.perceptual.weights", download=download
                )
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"perceptual loss: {err}. Get torchvision's {VGG19_URL} onto this machine "
                    "and set losses.perceptual.weights=<path>, or turn the loss off with "
                    "losses.perceptual.weight=0"
                ) from err
            self.vgg = VGG19Features().load_torchvision(path)
        self.vgg.eval().requires_grad_(False)

    @property
    def active(self) -> bool:
        return self.weight > 0

    def _pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        unit = self.input == "unit"
        x = (images.float() + 1) / 2 if unit else images.float()
        if self.resize is not None and x.shape[-2:] != (self.resize, self.resize):
            size = (self.resize, self.resize)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=unit, align_corners=False)
        if unit:
            return [
                x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", antialias=True)
                for s in self.scales
            ]
        return [x if s == 1.0 else gaussian_downsample(x, s) for s in self.scales]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss (unweighted) of (N, 3, H, W) predictions vs targets in [-1, 1]:
        sum over scales of the layer-weighted mean L1 between features."""
        if self.vgg is None:
            raise RuntimeError("the perceptual loss has weight 0 and no network")
        total = pred.new_zeros((), dtype=torch.float32)
        norm = sum(self.layer_weights)
        for p, t in zip(self._pyramid(pred), self._pyramid(target), strict=True):
            if min(p.shape[-2:]) < 16:
                raise ValueError(
                    f"perceptual loss: a pyramid level of {tuple(p.shape[-2:])} px is below "
                    "VGG19's 16 px minimum (4 poolings before relu5_1); use a larger resize "
                    "or fewer scales"
                )
            with torch.no_grad():
                t_feats = self.vgg(t)
            for w, pf, tf in zip(self.layer_weights, self.vgg(p), t_feats, strict=True):
                total = total + w * (pf.float() - tf.float()).abs().mean() / norm
        return total
