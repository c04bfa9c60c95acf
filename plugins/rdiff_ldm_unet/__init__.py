"""rdiff plugin ``ldm-unet``: the reference paper's latent diffusion (VQ autoencoder + UNet denoiser).

Only light imports here; torch and diffusers load when the backbone is built. Other latent backbones (such
as ``rdiff_dit``) reuse the latent autoencoder and the denoiser-independent method through the public
module :mod:`rdiff_ldm_unet.latent`; the other modules are this plugin's internals.
"""

from __future__ import annotations

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_backbones(register):
    from rdiff_ldm_unet.config import LDMConfig

    register("ldm-unet", build=_build, config=LDMConfig, **declarations(__name__)["backbones"]["ldm-unet"])


def _build(config, channels):
    from rdiff_ldm_unet.backbone import LDMUNet

    return LDMUNet(config, channels)


@hookimpl
def rdiff_register_pretrained(register):
    """The phase-1 weights shipped in ``pretrained/`` (one folder per preset and modality, with its card)."""
    from pathlib import Path

    for folder in sorted((Path(__file__).parent / "pretrained").glob("*/config.yaml")):
        register(folder.parent)
