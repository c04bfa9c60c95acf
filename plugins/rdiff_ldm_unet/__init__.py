"""rdiff plugin ``ldm-unet``: the reference paper's latent diffusion (VQ autoencoder + UNet denoiser).

Only light imports here; torch and diffusers load when the backbone is built. The latent autoencoder
(:mod:`rdiff_ldm_unet.autoencoder`) and the denoiser-independent method
(:mod:`rdiff_ldm_unet.latent_diffusion`) are reused by other latent backbones such as ``rdiff_dit``.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = "Latent diffusion of the reference paper: VQ autoencoder (x4) and a UNet denoiser conditioned by channel concatenation."
CAPABILITIES = ["concat_condition", "down_residuals", "latent", "lora_targets", "sampling"]


@hookimpl
def rdiff_register_backbones(register):
    from rdiff_ldm_unet.config import LDMConfig

    register("ldm-unet", build=_build, config=LDMConfig, summary=SUMMARY, capabilities=CAPABILITIES)


def _build(config, channels):
    from rdiff_ldm_unet.backbone import LDMUNet

    return LDMUNet(config, channels)
