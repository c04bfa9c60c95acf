"""ControlNet-style adaptor: a trainable copy of the denoiser's down path added to its skip connections.

As in ControlNet (Zhang et al., 2023), the side network starts as a deep copy of the frozen denoiser's input
convolution, time embedding, down blocks and middle block, and each of its skip tensors (and its middle
output) passes through a 1×1 convolution initialised to zero before the backbone adds it to the frozen
denoiser's matching skip connection (or middle output). The zero convolutions make the adapted model equal
its base at start while the copy begins from the base's features rather than from noise.

The side network sees the denoiser's own input (with a concatenation-conditioned backbone, noisy latent and
condition latent together), so it learns how the *adapted* condition should steer the frozen denoiser.

The paper's method also adapts the autoencoder's encoder (E', trained by the encoder loss): unless
``encoder_layers`` is off this adaptor installs the ``residual`` adaptor's layers on the backbone's
"encoder" targets, through the same :class:`~rdiff_adaptors.residual.ResidualBranches` code.

Backbones offer this through the ``down_residuals`` capability: ``control_unet()`` returns the denoiser to
copy, and the denoiser adds ``adaptor.control_residuals(sample, timestep)`` while the adaptor is enabled.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from rdiff.errors import UserError
from rdiff.plugins import declarations
from rdiff.reconstructor import Reconstructor

from .base import DetachableAdaptor, check_keys, detached
from .residual import ResidualBranches

CONTROL_PREFIX = "controlnet."  # key prefix of the side network's weights in the adaptor file


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1×1 convolution that outputs zeros until it is trained."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def skip_channels(unet: nn.Module) -> list[int]:
    """Channels of every skip tensor a diffusers UNet's down path emits, in order: the input conv's output,
    then each res-block's output and each downsampler's output, block by block."""
    channels = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        channels += [resnet.out_channels for resnet in block.resnets]
        channels += [sampler.out_channels for sampler in (getattr(block, "downsamplers", None) or [])]
    return channels


class ControlBranch(nn.Module):
    """The trainable side network: copies of ``unet``'s input path and zero convolutions on its outputs."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        for part in ("conv_in", "time_proj", "time_embedding", "down_blocks"):
            if not hasattr(unet, part):
                raise UserError(f"adaptor 'controlnet' needs a diffusers UNet denoiser; "
                                f"'{type(unet).__name__}' has no '{part}'.")
        if any(getattr(block, "has_cross_attention", False) for block in unet.down_blocks):
            raise UserError(f"adaptor 'controlnet' copies denoisers without cross-attention; "
                            f"'{type(unet).__name__}' has cross-attention blocks.")
        if getattr(unet, "class_embedding", None) is not None:
            raise UserError(f"adaptor 'controlnet' copies denoisers without class conditioning; "
                            f"'{type(unet).__name__}' has a class embedding.")
        config = getattr(unet, "config", {})
        self.center_input_sample = bool(config.get("center_input_sample", False))
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(getattr(unet, "mid_block", None))
        self.requires_grad_(True)  # the originals are frozen; their copies are what trains
        self.down_zero_convs = nn.ModuleList(zero_conv(c) for c in skip_channels(unet))
        mid_channels = unet.down_blocks[-1].resnets[-1].out_channels
        self.mid_zero_conv = zero_conv(mid_channels) if self.mid_block is not None else None

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int
                ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """``(down residuals, mid residual)`` for a denoiser input ``sample`` at ``timestep``, computed as
        diffusers' ``UNet2DModel`` computes its skip tensors."""
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        if not torch.is_tensor(timestep):
            timesteps = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        else:
            timesteps = (timestep[None] if timestep.ndim == 0 else timestep).to(sample.device)
        timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.conv_in.weight.dtype))

        skip_sample = sample  # only the "skip" block types of diffusers use it
        hidden = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            if hasattr(block, "skip_conv"):
                hidden, block_skips, skip_sample = block(hidden_states=hidden, temb=emb, skip_sample=skip_sample)
            else:
                hidden, block_skips = block(hidden_states=hidden, temb=emb)
            skips += tuple(block_skips)
        down = tuple(conv(skip) for conv, skip in zip(self.down_zero_convs, skips, strict=True))
        mid = self.mid_zero_conv(self.mid_block(hidden, emb)) if self.mid_block is not None else None
        return down, mid


class ControlNetAdaptor(DetachableAdaptor):
    """A ControlNet side copy of the denoiser's down path (plus residual layers in the encoder, E')."""

    name = "controlnet"
    requires = frozenset(declarations("rdiff_adaptors")["adaptors"]["controlnet"]["requires"])  # its plugin.yaml

    def _attach(self, config: Any, backbone: Reconstructor) -> None:
        self.control = ControlBranch(backbone.control_unet())
        encoder_targets = [t for t in backbone.adaptation_targets() if t.group == "encoder"]
        if config.encoder_layers and not encoder_targets:
            raise UserError(f"adaptor 'controlnet' with encoder_layers on finds no encoder res-block in backbone "
                            f"'{backbone.registered_name}'; set adaptor_options.encoder_layers=false.")
        self.encoder = (ResidualBranches(encoder_targets, is_active=lambda: self.enabled,
                                         norm_groups=config.norm_groups, zero_init=config.init == "zero")
                        if config.encoder_layers else None)

    def control_residuals(self, sample: torch.Tensor, timestep: torch.Tensor | float | int
                          ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """What the backbone adds to its denoiser's skip connections and middle-block output."""
        return self.control(sample, timestep)

    def _remove_from_backbone(self) -> None:
        encoder = getattr(self, "encoder", None)  # absent when attaching stopped before building it
        if encoder is not None:
            encoder.remove_hooks()

    def adaptor_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder layers keyed by their targets' names, the side network under ``controlnet.``."""
        state = dict(self.encoder.named_state()) if self.encoder is not None else {}
        state.update({CONTROL_PREFIX + k: v for k, v in self.control.state_dict().items()})
        return detached(state)

    def load_adaptor_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_keys(self.name, set(self.adaptor_state_dict()), set(state))
        control = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
        self.control.load_state_dict(control, strict=True)
        if self.encoder is not None:
            self.encoder.load_named_state({k: v for k, v in state.items() if not k.startswith(CONTROL_PREFIX)},
                                          self.name)
