"""The ``cnn-ae`` backbone: reconstruction and adaptation with an autoencoder alone, no diffusion.

- Phase 1 (stage ``autoencoder``): reconstruct clean images, L1 + (1 − SSIM) inside the region of interest.
- Phase 2: the paper's encoder adaptation loss only, ``|E(hq) − E'(lq)|₁ + |E(hq) − E'(hq)|₁`` with ``E``
  the frozen encoder (the adaptor switched off) and ``E'`` the adapted one.
- Enhancement: the one path ``fast``, ``D(E'(lq))``.

Adaptors act on the encoder's residual blocks only (group ``encoder``): the decoder gets no target because
the adaptation loss never reaches it (it compares latents), so layers placed there would never train.
Capabilities: ``latent`` (encode / decode / latent_shape) and ``lora_targets`` (the encoder's res-block
convolutions); it has no denoiser, so the ``controlnet`` adaptor cannot be paired with it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rdiff.errors import UserError
from rdiff.plugins import declarations
from rdiff.reconstructor import AdaptationTarget, Reconstructor

from .model import CNNAutoencoder


def masked_mean(values: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B×C×H×W) over the pixels where ``roi`` (B×1×H×W) is set."""
    weight = roi.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def ssim_map(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (Gaussian window 11, σ 1.5, data range 1), differentiable."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none",
                                                  return_full_image=True)
    return full


def residual_branch_end(block: nn.Module) -> tuple[str, int] | None:
    """``(attribute, channels)`` of the last module of ``block``'s residual branch, if ``block`` is a residual
    block rdiff knows: diffusers' ``ResnetBlock2D`` and timm's ResNet and EfficientNet-family blocks."""
    kind = type(block).__name__
    if kind == "ResnetBlock2D":
        return "conv2", block.out_channels  # the block's own record: conv2 may be wrapped (LoRA) by now
    if kind in ("BasicBlock", "Bottleneck") and hasattr(block, "downsample"):  # timm ResNet family
        norm = block.bn2 if kind == "BasicBlock" else block.bn3
        last = "se" if getattr(block, "se", None) is not None else ("bn2" if kind == "BasicBlock" else "bn3")
        return last, _norm_channels(norm)
    if kind in ("DepthwiseSeparableConv", "EdgeResidual") and getattr(block, "has_skip", False):
        return "bn2", _norm_channels(block.bn2)
    if kind in ("InvertedResidual", "CondConvResidual") and getattr(block, "has_skip", False):
        return "bn3", _norm_channels(block.bn3)
    return None


def _norm_channels(norm: nn.Module) -> int:
    return int(getattr(norm, "num_channels", None) or getattr(norm, "num_features"))


class CNNAE(Reconstructor):
    """A convolutional autoencoder trained to reconstruct, then adapted in its encoder (see the module doc)."""

    capabilities = frozenset(declarations("rdiff_cnn_ae")["backbones"]["cnn-ae"]["capabilities"])
    stages = ("autoencoder",)
    tile_overlap = 192  # three levels and a middle block at a quarter of the resolution: a wide reach

    def __init__(self, config: Any, channels: int):
        super().__init__(config, channels)
        widths = list(config.block_out_channels)
        if not widths or min(widths) < 1:
            raise UserError(f"model.block_out_channels must list one or more positive widths, not {widths}.")
        if config.timm_encoder is None and any(w % config.norm_groups for w in widths):
            raise UserError(f"model.norm_groups ({config.norm_groups}) must divide every width in "
                            f"model.block_out_channels ({widths}).")
        if config.layers_per_block < 1 or config.latent_channels < 1:
            raise UserError("model.layers_per_block and model.latent_channels must be at least 1.")
        self.autoencoder = CNNAutoencoder(
            in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
            layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
            norm_num_groups=config.norm_groups, timm_encoder=config.timm_encoder, norm=config.norm)
        self.size_multiple = self.autoencoder.downsample_factor

    # --- the latent protocol -------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → latents (through E' while an adaptor is enabled)."""
        return self.autoencoder.encode(images * 2 - 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1]."""
        return self._decode_unclamped(latents).clamp(0, 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the latent of a ``height × width`` image."""
        factor = self.size_multiple
        return self.config.latent_channels, height // factor, width // factor

    def _decode_unclamped(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.autoencoder.decode(latents) + 1) / 2

    # --- phase 1 -------------------------------------------------------------------------------------------
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        self._check_stage(stage)
        return list(self.autoencoder.parameters())

    def reconstruction_loss(self, stage: str, clean: torch.Tensor, roi: torch.Tensor,
                            degraded: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_stage(stage)
        output = self._decode_unclamped(self.encode(clean))
        l1 = masked_mean((output - clean).abs(), roi)
        ssim = masked_mean(ssim_map(output, clean), roi)
        loss = self.config.l1_weight * l1 + self.config.ssim_weight * (1 - ssim)
        return loss, {"l1": float(l1.detach()), "ssim": float(ssim.detach())}

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise UserError(f"backbone 'cnn-ae' trains only the stage 'autoencoder', not '{stage}'.")

    # --- phase 2 -------------------------------------------------------------------------------------------
    def adaptation_targets(self) -> list[AdaptationTarget]:
        """The end of every residual branch in the encoder (group ``encoder``), in forward order."""
        targets = []
        for name, block in self.autoencoder.encoder.named_modules():
            end = residual_branch_end(block)
            if end is not None:
                attribute, channels = end
                targets.append(AdaptationTarget(name=f"autoencoder.encoder.{name}.{attribute}", group="encoder",
                                                module=getattr(block, attribute), channels=channels,
                                                norm=self.config.norm))
        return targets

    def lora_target_modules(self) -> dict[str, list[str]]:
        """The convolutions of the encoder's residual branches (shortcut projections excluded)."""
        names = []
        for name, block in self.autoencoder.encoder.named_modules():
            if residual_branch_end(block) is None:
                continue
            names += [f"encoder.{name}.{inner}" for inner, module in block.named_modules()
                      if isinstance(module, nn.Conv2d) and not inner.startswith(("downsample", "conv_shortcut"))]
        return {"autoencoder": names}

    def adaptation_loss(self, lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        """``|E(hq) − E'(lq)|₁ + |E(hq) − E'(hq)|₁``: degraded images must land on the clean image's latent, clean
        images must stay where the frozen encoder put them (the paper's encoder adaptation loss)."""
        with torch.no_grad(), self.base_only():
            target = self.encode(hq)
        towards_clean = F.l1_loss(self.encode(lq), target)
        stay_put = F.l1_loss(self.encode(hq), target)
        return towards_clean + stay_put, {"latent_l1_lq": float(towards_clean.detach()),
                                          "latent_l1_hq": float(stay_put.detach())}

    # --- enhancement ---------------------------------------------------------------------------------------
    def enhance(self, lq: torch.Tensor, *, path: str = "fast", options: Any = None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``D(E'(lq))`` in [0, 1]; ``options``, ``generator`` and ``noise`` concern sampling paths, which
        this backbone does not have."""
        if path != "fast":
            raise UserError(f"backbone 'cnn-ae' has only the enhancement path 'fast', not '{path}'.")
        height, width = lq.shape[-2:]
        factor = self.size_multiple
        pad_h, pad_w = (-height) % factor, (-width) % factor
        with torch.no_grad():
            padded = F.pad(lq, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else lq
            return self.decode(self.encode(padded))[..., :height, :width]

    # --- weights -------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}
