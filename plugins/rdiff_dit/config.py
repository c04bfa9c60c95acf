"""Options of the ``dit`` backbone (a light module: no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass

from rdiff_ldm_unet.latent import LatentConfig


@dataclass
class DiTConfig(LatentConfig):
    """The paper's latent autoencoder with a diffusion transformer (DiT) as the denoiser, conditioned by
    concatenating the condition latent to the noisy latent before patchifying (defaults: about DiT-S/2)."""

    dit_layers: int = 12  # transformer blocks
    dit_heads: int = 6  # attention heads per block
    dit_head_dim: int = 64  # channels per head (the token width is heads × head_dim)
    patch_size: int = 2  # latent pixels per patch side
    latent_size: int = 64  # latent side of the training crops; positions of other sizes are scaled to it
