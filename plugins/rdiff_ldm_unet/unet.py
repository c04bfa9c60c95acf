"""The UNet denoiser: a diffusers ``UNet2DModel`` and a forward pass that can take ControlNet residuals."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from rdiff import UserError
from rdiff_layers import replace_group_norms
from rdiff_ldm_unet.autoencoder import check_widths
from rdiff_ldm_unet.config import LDMConfig


def build_unet(config: LDMConfig) -> UNet2DModel:
    """A UNet whose input is the noisy latent ⊕ the condition latent (channel concatenation)."""
    check_widths("unet_channels", config.unet_channels, config.norm_groups)
    if len(config.unet_attention) != len(config.unet_channels):
        raise UserError(f"model.unet_attention has {len(config.unet_attention)} entries but model.unet_channels "
                        f"has {len(config.unet_channels)} levels; give one true/false per level.")
    down = tuple("AttnDownBlock2D" if attend else "DownBlock2D" for attend in config.unet_attention)
    up = tuple("AttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(config.unet_attention))
    unet = UNet2DModel(
        in_channels=2 * config.latent_channels, out_channels=config.latent_channels,
        block_out_channels=tuple(config.unet_channels), down_block_types=down, up_block_types=up,
        layers_per_block=config.unet_layers, attention_head_dim=config.head_dim,
        add_attention=config.unet_mid_attention, norm_num_groups=config.norm_groups,
    )
    if config.norm == "channel":
        replace_group_norms(unet)
    return unet


def unet_forward(unet: UNet2DModel, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                 down_residuals: tuple[torch.Tensor, ...] | None = None,
                 mid_residual: torch.Tensor | None = None) -> torch.Tensor:
    """``unet(sample, timestep).sample``, optionally with ControlNet-style residuals added.

    ``UNet2DModel.forward`` takes no residuals, so this mirrors it step by step (diffusers 0.3x, without
    class labels) and adds ``down_residuals`` to the skip tensors of the down path and ``mid_residual``
    to the middle block's output, exactly where ``UNet2DConditionModel`` adds a ControlNet's. With no
    residuals the result equals ``unet(sample, timestep).sample``.
    """
    if unet.class_embedding is not None:
        raise ValueError("unet_forward supports UNets without class conditioning only")
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0

    # 1. time: one timestep per batch element
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
    elif timesteps.ndim == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
    embedding = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype))

    # 2. pre-process
    skip_sample = sample
    sample = unet.conv_in(sample)

    # 3. down, keeping every skip tensor for the up path
    skips = (sample,)
    for block in unet.down_blocks:
        if hasattr(block, "skip_conv"):
            sample, block_skips, skip_sample = block(hidden_states=sample, temb=embedding, skip_sample=skip_sample)
        else:
            sample, block_skips = block(hidden_states=sample, temb=embedding)
        skips += block_skips
    if down_residuals is not None:
        if len(down_residuals) != len(skips):
            raise ValueError(f"expected {len(skips)} down residuals (one per skip tensor), got {len(down_residuals)}")
        skips = tuple(skip + residual for skip, residual in zip(skips, down_residuals))

    # 4. mid
    if unet.mid_block is not None:
        sample = unet.mid_block(sample, embedding)
    if mid_residual is not None:
        sample = sample + mid_residual

    # 5. up, consuming the skip tensors from the deepest
    skip_sample = None
    for block in unet.up_blocks:
        block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        if hasattr(block, "skip_conv"):
            sample, skip_sample = block(sample, block_skips, embedding, skip_sample)
        else:
            sample = block(sample, block_skips, embedding)

    # 6. post-process
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    if skip_sample is not None:
        sample = sample + skip_sample
    if unet.config.time_embedding_type == "fourier":
        sample = sample / timesteps.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
    return sample
