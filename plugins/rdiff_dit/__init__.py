"""rdiff plugin ``dit``: latent diffusion with a diffusion transformer as the denoiser.

It reuses ``rdiff_ldm_unet``'s latent autoencoder and method through its public module
:mod:`rdiff_ldm_unet.latent` (a plugin building on another plugin, as a third-party one would) and replaces only the denoiser. Only light imports here.
"""

from __future__ import annotations

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_backbones(register):
    from rdiff_dit.config import DiTConfig

    register("dit", build=_build, config=DiTConfig, **declarations(__name__)["backbones"]["dit"])


def _build(config, channels):
    from rdiff_dit.backbone import LDMDiT

    return LDMDiT(config, channels)
