"""rdiff plugin ``dit``: latent diffusion with a diffusion transformer as the denoiser.

It reuses ``rdiff_ldm_unet``'s latent autoencoder and method (a plugin building on another plugin, as a
third-party one would) and replaces only the denoiser. Only light imports here.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = "Latent diffusion with a DiT denoiser: the VQ autoencoder of ldm-unet and a transformer conditioned by channel concatenation."
CAPABILITIES = ["concat_condition", "latent", "lora_targets", "sampling"]


@hookimpl
def rdiff_register_backbones(register):
    from rdiff_dit.config import DiTConfig

    register("dit", build=_build, config=DiTConfig, summary=SUMMARY, capabilities=CAPABILITIES)


def _build(config, channels):
    from rdiff_dit.backbone import LDMDiT

    return LDMDiT(config, channels)
