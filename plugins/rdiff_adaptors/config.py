"""Options of the built-in adaptors (a light module: no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ResidualConfig:
    """The paper's enhancement adaptor: in every chosen res-block, a layer GroupNorm → SiLU → 3×3 conv
    (C→C) added to the residual branch before the skip addition; LayerNorm → SiLU → Linear for token
    backbones."""

    position: Literal["paper", "all"] = "paper"  # paper: autoencoder encoder + denoiser down and middle blocks; all: every target the backbone offers
    init: Literal["zero", "paper"] = "zero"  # zero: last conv zero-initialised, so the adapted model starts equal to its base; paper: PyTorch's default init, as the paper's code
    norm_groups: int = 32  # GroupNorm groups of each layer (lowered to the largest divisor of the block's channels)
    norm: Literal["auto", "group", "channel", "none"] = "auto"  # auto: as the backbone asks for each target (GroupNorm; per-pixel ChannelNorm on tile-invariant backbones; none where values carry the signal)
    image: bool = True  # where the backbone offers its input image as a target, correct colour and illumination there with a smooth field of colour maps (ColourField); off: res-blocks only


@dataclass
class LoRAOptions:
    """Low-rank updates (peft LoRA) of the layers the backbone names for its encoder and denoiser."""

    rank: int = 8  # rank r of every low-rank update
    alpha: float = 8.0  # LoRA scaling numerator: the update is multiplied by alpha / rank
    dropout: float = 0.0  # dropout on the LoRA branch's input while training
    target_modules: dict[str, list[str]] | None = None  # per network, module names (suffixes) or regular expressions to wrap instead of the backbone's choice


@dataclass
class ControlNetConfig:
    """ControlNet-style side network: a trainable copy of the denoiser's input conv, time embedding, down
    blocks and middle block whose outputs join the frozen denoiser's skip connections through zero-initialised
    1×1 convolutions. The autoencoder's encoder gets residual adaptor layers as well, for the adapted encoder E'."""

    encoder_layers: bool = True  # also adapt the autoencoder's encoder with residual layers (the paper's E'); off: the encoder stays the base's
    init: Literal["zero", "paper"] = "zero"  # init of the encoder's residual layers (the zero convolutions are always zero)
    norm_groups: int = 32  # GroupNorm groups of the encoder's residual layers
