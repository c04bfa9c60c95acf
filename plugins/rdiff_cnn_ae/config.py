"""Options of the ``cnn-ae`` backbone (a light module: no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class CNNAEConfig:
    """A deterministic convolutional autoencoder, no diffusion: phase 1 learns to reconstruct clean images,
    phase 2 adapts its encoder so degraded images land on their clean latents, and ``D(E'(lq))`` enhances.
    The defaults are the ``base`` preset's sizes (13.3 M parameters)."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 256])  # width per level; n levels shrink the image by 2^(n-1) into the latent
    layers_per_block: int = 2  # res-blocks per encoder level (the decoder has one more per level, as diffusers' Decoder)
    latent_channels: int = 3  # channels of the latent image
    norm_groups: int = 32  # GroupNorm groups in the res-blocks; must divide every width
    norm: Literal["group", "channel"] = "group"  # group: GroupNorm; channel: every pixel normalised over its channels only (no spatial statistics: tiled enhancement equals whole-image enhancement, and each image keeps its own brightness and colour)
    timm_encoder: str | None = None  # a timm model name (e.g. resnet10t) to use as the encoder, always randomly initialised and with GroupNorm; None: diffusers res-blocks
    l1_weight: float = 1.0  # phase 1: pixel L1 loss inside the region of interest
    ssim_weight: float = 0.2  # phase 1: weight of 1 - SSIM inside the region of interest (structure, independent of brightness)
