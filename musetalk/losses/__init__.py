"""Training losses, one module per loss; each has a `weight` (its factor in the generator loss)
and an `active` flag (weight > 0). Pretrained networks load from local paths or the torch hub
cache, and fail with a message naming the config key when missing."""

from musetalk.losses.gan import AdversarialLoss, PatchDiscriminator, crop_boxes
from musetalk.losses.l1 import L1Loss
from musetalk.losses.perceptual import PerceptualLoss, VGG19Features
from musetalk.losses.sync import LATENTSYNC_SYNCNET, SyncLoss, SyncNet, load_syncnet

__all__ = [
    "LATENTSYNC_SYNCNET",
    "AdversarialLoss",
    "L1Loss",
    "PatchDiscriminator",
    "PerceptualLoss",
    "SyncLoss",
    "SyncNet",
    "VGG19Features",
    "crop_boxes",
    "load_syncnet",
]
