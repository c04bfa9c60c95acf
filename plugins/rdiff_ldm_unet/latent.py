"""The public API of ``rdiff_ldm_unet`` for other latent-diffusion backbones (``rdiff_dit`` is one).

A backbone that keeps this plugin's latent autoencoder and method and brings its own denoiser subclasses
:class:`LatentDiffusion` (implementing ``build_denoiser`` and the denoiser call) and extends
:class:`LatentConfig` with its denoiser's options. Only these names are promised to stay; everything else
in this package is internal. ``LatentConfig`` is light; ``LatentDiffusion`` (torch, diffusers) is imported
on first use, so a plugin's config module can import this one without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from rdiff_ldm_unet.config import LatentConfig

__all__ = ["LatentConfig", "LatentDiffusion"]


def __getattr__(name: str) -> Any:
    if name == "LatentDiffusion":
        return import_module("rdiff_ldm_unet.latent_diffusion").LatentDiffusion
    raise AttributeError(f"module 'rdiff_ldm_unet.latent' has no attribute '{name}'")
