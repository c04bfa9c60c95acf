"""The ``cnn-ae`` backbone: a convolutional autoencoder (no diffusion) whose adapted encoder enhances in one
forward pass, ``D(E'(lq))``. This module stays light (no torch at import)."""

from __future__ import annotations

from typing import Any

from rdiff import hookimpl

SUMMARY = "convolutional autoencoder, no diffusion: adapted encoder, one-shot D(E'(lq)) enhancement"
CAPABILITIES = ("latent", "lora_targets")


@hookimpl
def rdiff_register_backbones(register):
    from .config import CNNAEConfig

    register("cnn-ae", build=_build, config=CNNAEConfig, summary=SUMMARY, capabilities=CAPABILITIES)


def _build(config: Any, channels: int):
    from .backbone import CNNAE

    return CNNAE(config, channels)
