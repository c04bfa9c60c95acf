"""The ``cnn-ae`` backbone: a convolutional autoencoder (no diffusion) whose adapted encoder enhances in one
forward pass, ``D(E'(lq))``. This module stays light (no torch at import)."""

from __future__ import annotations

from typing import Any

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_backbones(register):
    from .config import CNNAEConfig

    register("cnn-ae", build=_build, config=CNNAEConfig, **declarations(__name__)["backbones"]["cnn-ae"])


def _build(config: Any, channels: int):
    from .backbone import CNNAE

    return CNNAE(config, channels)
