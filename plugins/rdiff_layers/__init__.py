"""Network layers that backbone and adaptor plugins share: normalisation without spatial statistics (here)
and a smooth field of colour maps (:mod:`rdiff_layers.colour_field`).

A library that ships with rdiff, not a plugin (no entry point) and not the runtime (the core never imports
it): the built-in backbones build their networks with it, the residual adaptor its layers, and a third-party
plugin may import it the same way (``from rdiff_layers import ChannelNorm``). An
:class:`rdiff.AdaptationTarget` whose ``norm`` is ``"channel"`` asks for a :class:`ChannelNorm`.

GroupNorm normalises each image by statistics gathered over its whole extent. That has two costs in an
enhancement model: a tile of a large photograph is normalised differently from the same pixels seen whole
(the output depends on how the image was cut, and seams show), and the per-image mean and variance it
removes are exactly the brightness and colour balance the model is supposed to keep. :class:`ChannelNorm`
normalises each pixel over its channels only (the "LayerNorm2d" of ConvNeXt), so a fully convolutional
network built with it computes the same value at a pixel whatever surrounds the receptive field, and a
tiled image equals the whole one up to the receptive field's reach.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelNorm(nn.Module):
    """Normalises every pixel of a ``B×C×H×W`` tensor over its ``C`` channels, then a per-channel affine.

    Its parameters are named and shaped like :class:`torch.nn.GroupNorm`'s (``weight``, ``bias`` of size
    ``C``), so a diffusers model whose GroupNorms were replaced saves and loads with the usual state dicts.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is ``B×C×...`` (images ``B×C×H×W``, or ``B×C×L`` as diffusers' attention hands its norm)."""
        # statistics in float32 even under autocast: a variance over few channels is fragile in half precision;
        # layer_norm over channels-last is one fused kernel (a reduction over dim 1 is several times slower)
        work = x.float().movedim(1, -1)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = torch.nn.functional.layer_norm(work, (self.num_channels,), weight, bias, self.eps)
        return out.movedim(-1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def replace_group_norms(module: nn.Module) -> int:
    """Replace every :class:`torch.nn.GroupNorm` inside ``module`` by a :class:`ChannelNorm` of the same
    width (in place); returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, ChannelNorm(child.num_channels, eps=child.eps, affine=child.affine))
            count += 1
        else:
            count += replace_group_norms(child)
    return count


def norm_layer(kind: str, channels: int, groups: int = 32, eps: float = 1e-6) -> nn.Module:
    """``group``: GroupNorm with the largest group count ≤ ``groups`` dividing ``channels``; ``channel``:
    :class:`ChannelNorm`; ``none``: no normalisation."""
    if kind == "channel":
        return ChannelNorm(channels, eps=eps)
    if kind == "none":  # the input's own values matter (e.g. an image's brightness): no normalisation
        return nn.Identity()
    if kind != "group":
        raise ValueError(f"unknown normalisation {kind!r} (expected 'group' or 'channel')")
    count = max(g for g in range(1, max(1, min(groups, channels)) + 1) if channels % g == 0)
    return nn.GroupNorm(count, channels, eps=eps)
