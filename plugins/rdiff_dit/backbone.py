"""``dit``: the latent diffusion of ``ldm-unet`` with a diffusers ``DiTTransformer2DModel`` denoiser.

Only the denoiser differs from :class:`rdiff_ldm_unet.latent.LatentDiffusion`: building it,
calling it, and naming where adaptors and LoRA may act inside it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from einops import rearrange

from rdiff import AdaptationTarget
from rdiff.plugins import declarations
from rdiff_dit.config import DiTConfig
from rdiff_ldm_unet.latent import LatentDiffusion


def build_dit(config: DiTConfig) -> DiTTransformer2DModel:
    """A DiT whose input is the noisy latent ⊕ the condition latent, with a single (constant) class."""
    dit = DiTTransformer2DModel(
        num_attention_heads=config.dit_heads, attention_head_dim=config.dit_head_dim,
        in_channels=2 * config.latent_channels, out_channels=config.latent_channels,
        num_layers=config.dit_layers, sample_size=config.latent_size, patch_size=config.patch_size,
        # DiT's adaLN-Zero embeds a class label with the timestep; one class is the least it accepts
        num_embeds_ada_norm=1,
    )
    # label dropout (for classifier-free guidance) has nothing to drop with one constant class; off, so
    # training sees the same conditioning as sampling and draws no extra random numbers
    for module in dit.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return dit


def dit_forward(dit: DiTTransformer2DModel, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """``dit(sample, timestep, class_labels=0).sample`` for any (also non-square) latent.

    Mirrors ``DiTTransformer2DModel.forward``, whose unpatchify assumes a square token grid; here the
    grid's height and width come from the input.
    """
    patch = dit.config.patch_size
    height, width = sample.shape[-2] // patch, sample.shape[-1] // patch
    labels = torch.zeros(sample.shape[0], dtype=torch.long, device=sample.device)
    tokens = dit.pos_embed(sample)
    for block in dit.transformer_blocks:
        if torch.is_grad_enabled() and dit.gradient_checkpointing:
            tokens = dit._gradient_checkpointing_func(block, tokens, None, None, None, timestep, None, labels)
        else:
            tokens = block(tokens, timestep=timestep, class_labels=labels)
    conditioning = dit.transformer_blocks[0].norm1.emb(timestep, labels, hidden_dtype=tokens.dtype)
    shift, scale = dit.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
    tokens = dit.norm_out(tokens) * (1 + scale[:, None]) + shift[:, None]
    tokens = dit.proj_out_2(tokens)
    return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=height, w=width, p=patch, q=patch)


class LDMDiT(LatentDiffusion):
    """VQ autoencoder (×4) + DiT denoiser conditioned by concatenating the condition latent."""

    capabilities: ClassVar[frozenset[str]] = frozenset(declarations("rdiff_dit")["backbones"]["dit"]["capabilities"])
    size_multiple: ClassVar[int] = 8  # at the default size: autoencoder ×4, patches of 2 (set per instance)
    config: DiTConfig
    denoiser: DiTTransformer2DModel

    def build_denoiser(self) -> DiTTransformer2DModel:
        return build_dit(self.config)

    def denoiser_multiple(self) -> int:
        return self.config.patch_size

    def denoiser_output(self) -> torch.nn.Linear:
        return self.denoiser.proj_out_2

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return dit_forward(self.denoiser, sample, timestep)

    def denoiser_tile(self) -> int:
        """Attention spans the whole token grid, so the transformer always sees latent windows of the size
        it was trained on, whatever tile the caller asks for."""
        return self.config.latent_size

    def denoiser_adaptation_targets(self) -> list[AdaptationTarget]:
        """The feed-forward output of every transformer block (its last residual branch, before the
        adaLN gate), as token sequences. The first half of the blocks plays the UNet's down path
        (``denoiser_down``), the second half its up path (``denoiser_up``)."""
        blocks = self.denoiser.transformer_blocks
        return [AdaptationTarget(name=f"denoiser.transformer_blocks.{index}.ff",
                                 group="denoiser_down" if index < len(blocks) // 2 else "denoiser_up",
                                 module=block.ff, channels=self.denoiser.inner_dim, layout="BLC")
                for index, block in enumerate(blocks)]

    def denoiser_lora_targets(self) -> list[str]:
        """Self-attention projections and feed-forward layers of every block (full names)."""
        return [f"transformer_blocks.{index}.{layer}" for index in range(len(self.denoiser.transformer_blocks))
                for layer in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")]
