"""The ``cnn-ae`` network: a deterministic convolutional autoencoder written as a diffusers model.

It is built from diffusers' VAE ``Encoder``/``Decoder`` (stacks of ``ResnetBlock2D`` with GroupNorm, no
attention so any image size behaves as in training), used deterministically: no posterior, no codebook,
the encoder's output *is* the latent. Optionally the encoder is a timm CNN (``timm_encoder``), always
randomly initialised and with batch-independent normalisation, cut at the level matching the decoder.
Being a ``ModelMixin``/``ConfigMixin`` it saves with ``save_pretrained`` (config.json + safetensors) and
loads with ``from_pretrained``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from rdiff.errors import UserError, did_you_mean


def group_count(channels: int, wanted: int) -> int:
    """The largest number of GroupNorm groups not above ``wanted`` that divides ``channels``."""
    return max(g for g in range(1, max(1, min(wanted, channels)) + 1) if channels % g == 0)


class TimmEncoder(nn.Module):
    """A timm feature extractor cut at the level that shrinks images by ``reduction``, then
    GroupNorm → SiLU → 3×3 conv to the latent channels.

    timm's models normalise with BatchNorm by default; here every norm is timm's ``groupnorm1`` instead, so the
    encoder does not depend on batch statistics (phase 2 trains on batches of a few pairs, the paper on one).
    Weights are never downloaded (``pretrained=False``).
    """

    def __init__(self, model_name: str, in_channels: int, latent_channels: int, reduction: int, norm_groups: int):
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            raise UserError(f"model.timm_encoder '{model_name}' is not a timm model"
                            f"{did_you_mean(model_name, timm.list_models())}.")
        options = dict(features_only=True, pretrained=False, in_chans=in_channels, norm_layer="groupnorm1")
        try:
            probe = timm.create_model(model_name, **options)
        except TypeError as exc:
            raise UserError(f"model.timm_encoder '{model_name}' does not accept a norm_layer, which rdiff needs to "
                            f"replace its batch norm ({exc}).") from None
        reductions = list(probe.feature_info.reduction())
        if reduction not in reductions:
            raise UserError(f"model.timm_encoder '{model_name}' has no feature level that shrinks images by "
                            f"{reduction} (its levels shrink by {', '.join(map(str, reductions))}); change the "
                            f"number of entries of model.block_out_channels.")
        level = reductions.index(reduction)
        # built again with only the needed level, so timm drops the unused deeper stages where it can
        self.body = timm.create_model(model_name, **options, out_indices=(level,))
        channels = self.body.feature_info.channels()[-1]
        self.norm_out = nn.GroupNorm(group_count(channels, norm_groups), channels, eps=1e-6)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels, latent_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        features = self.body(sample)[-1]
        return self.conv_out(self.act(self.norm_out(features)))


class CNNAutoencoder(ModelMixin, ConfigMixin):
    """Encoder and decoder of residual blocks; images in [-1, 1], latents ``latent_channels × H/f × W/f``
    with ``f = 2^(len(block_out_channels) - 1)``."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (64, 128, 256), layers_per_block: int = 2,
                 latent_channels: int = 3, norm_num_groups: int = 32, timm_encoder: str | None = None,
                 norm: str = "group"):
        super().__init__()
        levels = len(block_out_channels)
        if timm_encoder:
            self.encoder: nn.Module = TimmEncoder(timm_encoder, in_channels, latent_channels,
                                                  reduction=2 ** (levels - 1), norm_groups=norm_num_groups)
        else:
            self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                                   down_block_types=("DownEncoderBlock2D",) * levels,
                                   block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                   norm_num_groups=norm_num_groups, double_z=False, mid_block_add_attention=False)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                               up_block_types=("UpDecoderBlock2D",) * levels,
                               block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                               norm_num_groups=norm_num_groups, mid_block_add_attention=False)
        if norm == "channel":  # part of the config, so from_pretrained rebuilds the same network
            from rdiff_layers import replace_group_norms

            replace_group_norms(self)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, sample: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → latents."""
        return self.encoder(sample)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents → images in (about) [-1, 1]."""
        return self.decoder(latent)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(sample))
