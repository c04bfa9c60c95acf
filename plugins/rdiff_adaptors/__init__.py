"""rdiff's built-in phase-2 adaptors: ``residual`` (the paper's), ``lora`` (peft) and ``controlnet``.

Each adaptor is a subclass of :class:`rdiff.Adaptor` built on a backbone whose own weights are already
frozen; it hooks a small trainable part into the backbone and trains only that. This module stays light
(no torch at import): the adaptors' code is imported when one is built.
"""

from __future__ import annotations

from typing import Any

from rdiff import hookimpl

RESIDUAL_SUMMARY = ("the paper's enhancement adaptor: GroupNorm, SiLU, 3x3 conv on the residual branch of "
                    "each res-block (zero-initialised)")
LORA_SUMMARY = "low-rank updates (peft LoRA) of the layers the backbone names, in its encoder and denoiser"
CONTROLNET_SUMMARY = ("a trainable copy of the denoiser's down path feeding its skip connections through "
                      "zero convolutions, plus residual layers in the autoencoder's encoder")


@hookimpl
def rdiff_register_adaptors(register):
    from .config import ControlNetConfig, LoRAOptions, ResidualConfig

    register("residual", build=_build_residual, config=ResidualConfig, summary=RESIDUAL_SUMMARY, requires=())
    register("lora", build=_build_lora, config=LoRAOptions, summary=LORA_SUMMARY, requires=("lora_targets",))
    register("controlnet", build=_build_controlnet, config=ControlNetConfig, summary=CONTROLNET_SUMMARY,
             requires=("down_residuals",))


def _build_residual(config: Any, backbone: Any):
    from .residual import ResidualAdaptor

    return ResidualAdaptor(config, backbone)


def _build_lora(config: Any, backbone: Any):
    from .lora import LoRAAdaptor

    return LoRAAdaptor(config, backbone)


def _build_controlnet(config: Any, backbone: Any):
    from .controlnet import ControlNetAdaptor

    return ControlNetAdaptor(config, backbone)
