"""Patch discriminators (full face, mouth), LSGAN losses and feature matching (MuseTalk stage 2).

The discriminator is a pix2pix-style patch network: `num_blocks` 4x4 convolutions (spectral norm,
instance norm after the first, LeakyReLU 0.2, 2x2 average pooling between blocks) and a 1x1
convolution to a map of real/fake scores. The generator is pushed towards scores of 1 (LSGAN)
and towards the discriminator features of the real image (feature matching); the discriminator
is trained towards 1 on real and 0 on generated images.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

REGIONS = ("face", "mouth")


class PatchDiscriminator(nn.Module):
    """(N, C, H, W) images in [-1, 1] -> (features of every block, (N, 1, h, w) score map).

    channels: width of the first block, doubled per block up to max_channels.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 32,
        max_channels: int = 512,
        num_blocks: int = 4,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        width_in = in_channels
        for i in range(num_blocks):
            width_out = min(max_channels, channels * 2 ** (i + 1))
            conv: nn.Module = nn.Conv2d(width_in, width_out, kernel_size=4)
            if spectral_norm:
                conv = _spectral_norm(conv)
            block = nn.Sequential(
                conv,
                nn.InstanceNorm2d(width_out, affine=True) if i > 0 else nn.Identity(),
                nn.LeakyReLU(0.2),
                nn.AvgPool2d(2) if i < num_blocks - 1 else nn.Identity(),
            )
            self.blocks.append(block)
            width_in = width_out
        head: nn.Module = nn.Conv2d(width_in, 1, kernel_size=1)
        self.head = _spectral_norm(head) if spectral_norm else head

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features = []
        x = images
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features, self.head(x)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, size, size) bilinear crops of (N, C, H, W) images at (N, 4) boxes (x1, y1, x2, y2)
    in pixels of the images; differentiable with respect to the images."""
    n, _, h, w = images.shape
    boxes = boxes.to(images.device, torch.float32)
    x1, y1, x2, y2 = boxes.unbind(-1)
    half_w = ((x2 - x1) / 2).clamp(min=0.5)
    half_h = ((y2 - y1) / 2).clamp(min=0.5)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = half_w * 2 / w
    theta[:, 0, 2] = (x1 + x2) / w - 1
    theta[:, 1, 1] = half_h * 2 / h
    theta[:, 1, 2] = (y1 + y2) / h - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", align_corners=False)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` do not require gradients inside the block (restored after)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class AdversarialLoss(nn.Module):
    """A patch discriminator on the full face or the mouth region, with its LSGAN losses.

    weight: factor of the generator's LSGAN term (MuseTalk: 0.01 for face and mouth); 0 turns
    the whole adversarial loss off (no discriminator training, no feature matching).
    feature_matching: factor of the feature matching term (sum over blocks of the mean L1
    between discriminator features of real and generated images; MuseTalk: 1.0).
    region: "face" (whole crop) or "mouth" (crop at the batch's mouth boxes, grown by
    `mouth_margin` pixels per side; the DataModule's boxes already have a margin).
    size: side the discriminator sees (resized; None = as is; mouth crops need one).
    start_step: before this optimizer step the adversarial generator term and the
    discriminator loss are multiplied by 0 (MuseTalk starts the GAN at step 1000); feature
    matching applies from step 0, as in MuseTalk.
    channels, max_channels, num_blocks, spectral_norm: the PatchDiscriminator's.
    """

    def __init__(
        self,
        weight: float = 0.01,
        feature_matching: float = 1.0,
        region: str = "face",
        size: int | None = 224,
        mouth_margin: float = 0.0,
        start_step: int = 0,
        channels: int = 32,
        max_channels: int = 512,
        num_blocks: int = 4,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if region not in REGIONS:
            raise ValueError(f"expected region in {REGIONS}, got {region!r}")
        if region == "mouth" and size is None:
            raise ValueError("the mouth discriminator needs a crop size (size=...)")
        if weight < 0 or feature_matching < 0 or start_step < 0:
            raise ValueError(
                f"expected weight, feature_matching, start_step >= 0, got {weight}, "
                f"{feature_matching}, {start_step}"
            )
        self.weight = float(weight)
        self.feature_matching = float(feature_matching)
        self.region = region
        self.size = size
        self.mouth_margin = float(mouth_margin)
        self.start_step = int(start_step)
        self.discriminator = PatchDiscriminator(
            3, channels, max_channels, num_blocks, spectral_norm
        )

    @property
    def active(self) -> bool:
        """weight 0 turns off the discriminator and both generator terms."""
        return self.weight > 0

    def factor(self, step: int) -> float:
        """1.0 from `start_step` on, else 0.0."""
        return 1.0 if step >= self.start_step else 0.0

    def inputs(self, images: torch.Tensor, mouth_boxes: torch.Tensor | None) -> torch.Tensor:
        """What the discriminator sees of (N, 3, H, W) images: the whole crop or the mouth crop
        ((N, 4) boxes in crop pixels), resized to `size`."""
        if self.region == "mouth":
            if mouth_boxes is None:
                raise ValueError("the mouth discriminator needs the batch's 'mouth_box'")
            m = self.mouth_margin
            boxes = mouth_boxes.to(torch.float32) + torch.tensor(
                [-m, -m, m, m], device=mouth_boxes.device
            )
            return crop_boxes(images, boxes, self.size)
        if self.size is not None and images.shape[-2:] != (self.size, self.size):
            return F.interpolate(
                images, size=(self.size, self.size), mode="bilinear", antialias=True
            )
        return images

    def generator_terms(
        self, pred: torch.Tensor, target: torch.Tensor, mouth_boxes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(LSGAN generator term, feature matching term), unweighted scalars. The
        discriminator's parameters get no gradient from them."""
        fake = self.inputs(pred, mouth_boxes)
        with frozen(self.discriminator):
            fake_feats, fake_score = self.discriminator(fake)
            with torch.no_grad():
                real_feats, _ = self.discriminator(self.inputs(target, mouth_boxes))
        gan = ((1 - fake_score.float()) ** 2).mean()
        fm = sum(
            (r.float() - f.float()).abs().mean()
            for r, f in zip(real_feats, fake_feats, strict=True)
        )
        return gan, fm

    def discriminator_loss(
        self, pred: torch.Tensor, target: torch.Tensor, mouth_boxes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LSGAN discriminator loss mean((1 - D(real))^2 + D(fake)^2); `pred` is detached."""
        _, real_score = self.discriminator(self.inputs(target, mouth_boxes))
        _, fake_score = self.discriminator(self.inputs(pred.detach(), mouth_boxes))
        return ((1 - real_score.float()) ** 2 + fake_score.float() ** 2).mean()
