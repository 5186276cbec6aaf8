"""Models: the audio-conditioned UNet, the frozen VAE, the inpainting mask."""

from musetalk.models.export import export_unet
from musetalk.models.masking import mask_lower_half, unet_input
from musetalk.models.unet import MUSETALK_UNET, TINY_UNET, build_unet, load_unet
from musetalk.models.vae import SCALING_FACTOR, TINY_VAE, decode, encode, load_vae

__all__ = [
    "MUSETALK_UNET",
    "SCALING_FACTOR",
    "TINY_UNET",
    "TINY_VAE",
    "build_unet",
    "decode",
    "encode",
    "export_unet",
    "load_unet",
    "load_vae",
    "mask_lower_half",
    "unet_input",
]
