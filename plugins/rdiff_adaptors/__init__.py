"""rdiff's built-in phase-2 adaptors: ``residual`` (the paper's), ``lora`` (peft) and ``controlnet``.

Each adaptor is a subclass of :class:`rdiff.Adaptor` built on a backbone whose own weights are already
frozen; it hooks a small trainable part into the backbone and trains only that. This module stays light
(no torch at import): the adaptors' code is imported when one is built.
"""

from __future__ import annotations

from typing import Any

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_adaptors(register):
    from .config import ControlNetConfig, LoRAOptions, ResidualConfig

    declared = declarations(__name__)["adaptors"]
    register("residual", build=_build_residual, config=ResidualConfig, **declared["residual"])
    register("lora", build=_build_lora, config=LoRAOptions, **declared["lora"])
    register("controlnet", build=_build_controlnet, config=ControlNetConfig, **declared["controlnet"])


def _build_residual(config: Any, backbone: Any):
    from .residual import ResidualAdaptor

    return ResidualAdaptor(config, backbone)


def _build_lora(config: Any, backbone: Any):
    from .lora import LoRAAdaptor

    return LoRAAdaptor(config, backbone)


def _build_controlnet(config: Any, backbone: Any):
    from .controlnet import ControlNetAdaptor

    return ControlNetAdaptor(config, backbone)
