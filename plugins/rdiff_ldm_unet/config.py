"""Options of the latent-diffusion backbones (a light module: no torch at import).

The defaults are the reference paper's sizes; the ``tiny`` and ``base`` presets in registry.yaml shrink
them. :class:`LatentConfig` holds what every latent backbone shares (the autoencoder, the noise schedule and
the losses); :class:`LDMConfig` adds the UNet denoiser and ``rdiff_dit`` adds its transformer on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal


@dataclass
class LatentConfig:
    """A latent autoencoder, a diffusion schedule and the losses of both training phases."""

    # keys that steer phase 2 only: adapting a pretrained phase 1 may change them (rdiff.pretrained.check_model)
    ADAPTATION_KEYS: ClassVar[frozenset[str]] = frozenset({"encoder_loss_weight", "diffusion_loss_weight",
                                                           "image_loss_weight", "adapt_crop",
                                                           "detail_loss_weight"})

    # --- latent autoencoder (phase-1 stage "autoencoder") ---
    autoencoder: Literal["vq", "kl"] = "vq"  # vq: diffusers VQModel as in the paper; kl: AutoencoderKL
    ae_channels: list[int] = field(default_factory=lambda: [128, 256, 512])  # width per level; n levels downsample by 2^(n-1)
    ae_layers: int = 2  # res-blocks per autoencoder level
    ae_mid_attention: bool = True  # self-attention in the autoencoder's middle block (off: any image size behaves as in training)
    latent_channels: int = 3  # channels of the latent image
    codebook_size: int = 32768  # vq only: number of codebook vectors
    norm_groups: int = 32  # GroupNorm groups in every network; must divide every width (one channel per group normalises away each crop's brightness: an illumination prior)
    norm: Literal["group", "channel"] = "group"  # group: GroupNorm (the paper); channel: every pixel normalised over its channels only, no spatial statistics, so a tiled image enhances exactly as the whole and keeps its own brightness and colour
    image_skip: bool = False  # kl only: the first latent channels carry the image downsampled (antialiased bicubic) and the decoder adds it back upsampled; the networks learn the residual detail, starting from the bicubic round trip
    latent_scale: float | None = None  # latents are multiplied by this before diffusion; None: 1/std of the first denoiser batch's latents
    # --- noise schedule (phase-1 stage "denoiser") ---
    train_timesteps: int = 1000  # diffusion steps of the training schedule
    beta_start: float = 0.0015  # first beta of the schedule
    beta_end: float = 0.0155  # last beta of the schedule
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"  # scaled_linear is what the CompVis code (and the paper) calls "linear"
    prediction: Literal["residual", "epsilon", "v_prediction"] = "residual"  # what the denoiser predicts: residual, the clean latent's difference from the condition (x0 = c + r, output layer zero-initialised, so an untrained denoiser returns the fast path); epsilon (the paper) or v
    pretext: Literal["self", "degraded"] = "degraded"  # denoiser condition in phase 1: E(degraded x), the modality's simulator, so phase 1 alone enhances; or E(x), the paper's self-reconstruction (its optimum is the identity)
    corrector: bool = False  # phase 1 also trains a colour and illumination corrector (rdiff_layers.colour_field) on whole images of the modality's degraded copies, between the autoencoder and the denoiser; it corrects every input before the encoder, so phase 1 alone fixes illumination, casts and haze (a stage of its own: train.steps.corrector)
    estimate_inputs: float = 0.5  # residual only: the share of each training batch whose noisy latent is the denoiser's own first-step estimate noised again, as every sampling step after the first sees it, instead of the clean latent noised (exposure bias): later steps learn to correct that estimate, not to copy it
    sample_strength: float = 0.3  # sampling starts from the condition noised to this fraction of the schedule (and a residual denoiser trains on that part only); 1: from pure noise, as the paper
    # --- autoencoder losses ---
    l1_weight: float = 1.0  # pixel L1 reconstruction loss
    ssim_weight: float = 0.2  # weight of 1 - SSIM (structure, independent of brightness)
    codebook_weight: float = 1.0  # vq only: codebook + commitment loss
    kl_weight: float = 1.0e-6  # kl only: KL divergence to the unit Gaussian
    detail_weight: float = 0.0  # the reconstruction's fine detail at the clean image's local amplitude and place (autoencoder.detail_loss)
    lpips_weight: float = 0.0  # perceptual loss; needs the LPIPS backbone weights present locally (never downloaded)
    lpips_net: Literal["vgg", "alex", "squeeze"] = "vgg"  # LPIPS backbone (the paper's VQGAN loss used vgg)
    gan_weight: float = 0.0  # PatchGAN adversarial loss (hinge); 0 switches the discriminator off
    gan_start: int = 0  # autoencoder steps before the adversarial loss starts
    discriminator_channels: int = 64  # width of the PatchGAN discriminator's first layer
    discriminator_layers: int = 3  # strided layers of the PatchGAN discriminator
    # --- phase-2 loss ---
    encoder_loss_weight: float = 1.0  # |E(hq) - E'(lq)| + |E(hq) - E'(hq)| on latents
    diffusion_loss_weight: float = 1.0  # adapted denoiser's diffusion loss, condition E'(lq), target E(hq)
    image_loss_weight: float = 10.0  # with image_skip: squared error inside the roi between the corrected lq (and hq) and hq, for an adaptor on the input image
    detail_loss_weight: float = 0.0  # phase 2, fast path: the decoded adapted crop must carry the clean crop's fine detail, at its local amplitude and aligned with it (autoencoder.detail_loss); 0: off, as in the paper
    adapt_crop: int = 0  # phase 2: the encoder and denoiser adaptors learn on a random crop of this side cut from each (larger) adaptation crop, which the input-image adaptor sees whole; with a corrector, phase 1's denoiser stage too (its images are corrected whole, then cropped); 0: the whole crop


@dataclass
class LDMConfig(LatentConfig):
    """The reference paper's latent diffusion: a VQ autoencoder and a UNet denoiser conditioned by channel
    concatenation (defaults: the paper's sizes, 55.4 M + 117.7 M parameters)."""

    unet_channels: list[int] = field(default_factory=lambda: [160, 320, 320, 640])  # width per UNet level
    unet_attention: list[bool] = field(default_factory=lambda: [False, True, True, True])  # self-attention per level (down path; mirrored on the up path)
    unet_mid_attention: bool = True  # self-attention in the UNet's middle block
    unet_layers: int = 2  # res-blocks per UNet level on the down path (the up path has one more)
    head_dim: int = 32  # channels per attention head
