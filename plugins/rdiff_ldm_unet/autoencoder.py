"""The latent autoencoder shared by every latent backbone: a diffusers ``VQModel`` (the paper's) or
``AutoencoderKL``, its phase-1 losses, and where adaptors and LoRA may act inside its encoder.

Images enter the autoencoder in [-1, 1] (diffusers' convention); the backbone converts from rdiff's [0, 1].
The *latent* used for diffusion is the encoder's output before quantisation (as in latent diffusion's
VQ models): the decoder quantises it, so a slightly-off latent from the denoiser still lands on codes.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from diffusers.models.autoencoders.vae import VectorQuantizer
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.func import functional_call
from torchmetrics.functional.image import structural_similarity_index_measure

from rdiff import AdaptationTarget, UserError
from rdiff_layers import replace_group_norms
from rdiff_ldm_unet.config import LatentConfig


def check_widths(key: str, widths: list[int], groups: int) -> None:
    """Refuse widths that GroupNorm with ``groups`` groups cannot split, naming the config key."""
    uneven = [w for w in widths if w % groups]
    if uneven:
        raise UserError(f"model.{key} has width {uneven[0]}, which model.norm_groups={groups} does not divide.")


def build_autoencoder(config: LatentConfig, channels: int) -> VQModel | AutoencoderKL:
    """The autoencoder described by ``config`` for images of ``channels`` channels."""
    check_widths("ae_channels", config.ae_channels, config.norm_groups)
    levels = len(config.ae_channels)
    shared = dict(
        in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.ae_channels), layers_per_block=config.ae_layers,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_groups,
        mid_block_add_attention=config.ae_mid_attention,
        # 0 marks "not measured yet"; the backbone writes the measured scale here so that a saved
        # autoencoder carries it the way diffusers' pipelines expect
        scaling_factor=config.latent_scale or 0.0,
    )
    if config.image_skip and config.autoencoder != "kl":
        raise UserError("model.image_skip needs model.autoencoder=kl (a codebook would quantise the image itself).")
    if config.image_skip and config.latent_channels < channels:
        raise UserError(f"model.image_skip needs model.latent_channels ≥ the image's {channels} channels, "
                        f"not {config.latent_channels}.")
    autoencoder = (VQModel(num_vq_embeddings=config.codebook_size, **shared) if config.autoencoder == "vq"
                   else AutoencoderKL(**shared))
    if isinstance(autoencoder, VQModel):
        autoencoder.quantize.__class__ = NearestCodeQuantizer  # same weights and state-dict keys
    if config.norm == "channel":
        replace_group_norms(autoencoder)
    if config.image_skip:
        # Start at the bicubic round trip: the decoder's residual is zero, the learned latent residual small
        # (not zero, or no gradient would reach the encoder — nor an adaptor in it — before the decoder had
        # moved) and its variance tiny (a unit-variance posterior sample would bury the image).
        mean_and_logvar = autoencoder.quant_conv
        with torch.no_grad():
            mean_and_logvar.weight[:config.latent_channels] *= 0.1
            mean_and_logvar.weight[config.latent_channels:] = 0.0
            mean_and_logvar.bias[:config.latent_channels] = 0.0
            mean_and_logvar.bias[config.latent_channels:] = -10.0
        nn.init.zeros_(autoencoder.decoder.conv_out.weight)
        nn.init.zeros_(autoencoder.decoder.conv_out.bias)
    autoencoder.image_skip = channels if config.image_skip else 0
    if config.image_skip:
        # the whole latent (downsampled image + learned detail) passes here: an identity in phase 1 (no
        # weights, so the saved networks are plain diffusers ones) and the place where phase 2 can correct
        # the image's colour and illumination directly, which the learned branch alone reaches only weakly
        autoencoder.latent_out = nn.Identity()
        # the image itself, in [0, 1], before the encoder: where phase 2 corrects illumination and colour over
        # the whole image (an identity in phase 1; the backbone runs it before tiling its networks)
        autoencoder.image_in = nn.Identity()
    return autoencoder


def downsampling_factor(config: LatentConfig) -> int:
    """How much smaller the latent is than the image, per side."""
    return 2 ** (len(config.ae_channels) - 1)


def encode_raw(autoencoder: VQModel | AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1]: the VQ encoder's pre-quantisation output, or the KL
    posterior's mean (deterministic, so enhancement is too). With an image skip the downsampled image is
    added to the first latent channels."""
    if isinstance(autoencoder, VQModel):
        return autoencoder.encode(images).latents
    latents = autoencoder.encode(images).latent_dist.mode()
    return _latent_out(autoencoder, _add_image(latents, images, getattr(autoencoder, "image_skip", 0)))


def _latent_out(autoencoder: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    out = getattr(autoencoder, "latent_out", None)
    return out(latents) if out is not None else latents


def decode_raw(autoencoder: VQModel | AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images in (about) [-1, 1] from unscaled latents (quantised first for VQ); with an image skip the
    first latent channels, upsampled, are added to the decoder's output."""
    decoded = autoencoder.decode(latents).sample
    skip = getattr(autoencoder, "image_skip", 0)
    if skip:
        factor = decoded.shape[-1] // latents.shape[-1]
        decoded = decoded + F.interpolate(latents[:, :skip], scale_factor=factor, mode="bicubic")
    return decoded


def _add_image(latents: torch.Tensor, images: torch.Tensor, skip: int) -> torch.Tensor:
    if not skip:
        return latents
    factor = images.shape[-1] // latents.shape[-1]
    # antialiased bicubic: a local filter, so tiles of an image downsample exactly as the whole
    small = F.interpolate(images, scale_factor=1 / factor, mode="bicubic", antialias=True)
    return torch.cat([latents[:, :skip] + small, latents[:, skip:]], dim=1)


def enable_gradient_checkpointing(autoencoder: VQModel | AutoencoderKL) -> None:
    """Recompute encoder and decoder activations in the backward pass (VQModel does not declare support,
    but its Encoder and Decoder implement it)."""
    if autoencoder._supports_gradient_checkpointing:
        autoencoder.enable_gradient_checkpointing()
        return
    checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    for part in (autoencoder.encoder, autoencoder.decoder):
        part._gradient_checkpointing_func = lambda module, *args: checkpoint(module.__call__, *args)
        part.gradient_checkpointing = True


# --- where adaptors and LoRA act ------------------------------------------------------------------------------


def encoder_resnets(autoencoder: nn.Module) -> list[tuple[str, ResnetBlock2D]]:
    """Every res-block of the encoder (its down levels, then its middle block), by dotted name."""
    return [(name, module) for name, module in autoencoder.named_modules()
            if name.startswith("encoder.") and isinstance(module, ResnetBlock2D)]


def encoder_adaptation_targets(autoencoder: nn.Module, prefix: str, norm: str = "group") -> list[AdaptationTarget]:
    """The end of every encoder res-block's residual branch (its ``conv2``), group ``encoder``; with an image
    skip also the latent itself (un-normalised, so an adaptor sees the image's brightness and colour)."""
    targets = [AdaptationTarget(name=f"{prefix}.{name}.conv2", group="encoder", module=block.conv2,
                                channels=block.conv2.out_channels, norm=norm)
               for name, block in encoder_resnets(autoencoder)]
    latent_out = getattr(autoencoder, "latent_out", None)
    if latent_out is not None:
        channels = autoencoder.config.latent_channels
        targets.append(AdaptationTarget(name=f"{prefix}.latent_out", group="encoder", module=latent_out,
                                        channels=channels, norm="none"))
    return targets


def image_adaptation_targets(autoencoder: nn.Module, prefix: str, channels: int) -> list[AdaptationTarget]:
    """The input image in [0, 1] before the encoder (group ``image``), where the autoencoder has one."""
    image_in = getattr(autoencoder, "image_in", None)
    if image_in is None:
        return []
    return [AdaptationTarget(name=f"{prefix}.image_in", group="image", module=image_in, channels=channels,
                             norm="none")]


def encoder_lora_targets(autoencoder: nn.Module) -> list[str]:
    """Full names (inside the autoencoder) of the encoder res-blocks' 3×3 convolutions."""
    return [f"{name}.{conv}" for name, _ in encoder_resnets(autoencoder) for conv in ("conv1", "conv2")]


# --- codebook ----------------------------------------------------------------------------------------------


class NearestCodeQuantizer(VectorQuantizer):
    """diffusers' ``VectorQuantizer`` whose nearest-code search runs without autograd, in float32 and in
    chunks of latent vectors; the quantised latents, losses and gradients are the same.

    diffusers computes the whole distance matrix (latent vectors × codes) inside the autograd graph, and
    since the codebook trains, autograd keeps it for a backward pass that never uses it (``argmin`` has no
    gradient). At the paper's size — a 512-px crop has 16,384 latent vectors, the codebook 32,768 codes —
    that is 2 GiB kept per crop in training, and as much again while it is computed, in training and
    enhancement alike. Here at most :attr:`chunk` distances exist at a time.
    """

    chunk = 2 ** 24  # distances computed at once: 64 MiB in float32

    @torch.no_grad()
    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        codes = self.embedding.weight.float()
        rows = max(1, self.chunk // codes.shape[0])
        return torch.cat([torch.cdist(part.float(), codes).argmin(dim=1) for part in vectors.split(rows)])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        # as VectorQuantizer.forward (diffusers 0.3x-0.4x), with the search above
        z = z.permute(0, 2, 3, 1).contiguous()
        indices = self.nearest(z.view(-1, self.vq_embed_dim))
        z_q = self.embedding(indices).view(z.shape)
        if not self.legacy:
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = (z + (z_q - z).detach()).permute(0, 3, 1, 2).contiguous()  # straight-through gradients
        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, indices)


@torch.no_grad()
def initialise_codebook(autoencoder: VQModel, latents: torch.Tensor) -> bool:
    """Seed an untrained codebook with encoder outputs of the first batch.

    diffusers initialises codes uniformly in ±1/size, i.e. all near zero, far from the encoder's outputs:
    only a handful of codes are ever nearest and the rest never train (codebook collapse). Codes drawn
    from real latents (plus a little noise, since a small batch has fewer latents than codes) are all in
    use from the first step. Returns whether it initialised; a trained codebook is left alone, which also
    makes this safe on resume.
    """
    codebook = autoencoder.quantize.embedding.weight
    if codebook.abs().max() > 1.0 / codebook.shape[0]:
        return False
    vectors = latents.detach().permute(0, 2, 3, 1).reshape(-1, codebook.shape[1]).float()
    picks = torch.randint(0, vectors.shape[0], (codebook.shape[0],), device=vectors.device)
    jitter = 0.01 * vectors.std() * torch.randn(codebook.shape, device=vectors.device)
    codebook.copy_((vectors[picks] + jitter).to(codebook.dtype))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(codebook, src=0)  # every process must start from the same codes
    return True


# --- phase-1 losses ----------------------------------------------------------------------------------------


def ssim_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of images in [0, 1] (11-px Gaussian window)."""
    return 1.0 - structural_similarity_index_measure(reconstruction.float(), target.float(), data_range=1.0)


# Fine detail for detail_loss: the band an image loses to a Gaussian blur (sigma, kernel size; px at the
# working scale), its amplitude and alignment measured over a Gaussian window. The band keeps the vessels
# of a 256-px fundus image (1-3 px wide); a band of sigma 1 raised vessel Dice less (0.34 against 0.35).
DETAIL_BAND = (2.0, 13)
DETAIL_WINDOW = (2.0, 9)
# weight of the misalignment term against the amplitude term; the amplitude term alone makes texture of
# the right strength in the wrong places (on held-out IDRiD, seed 0: vessel precision 0.92 -> 0.73)
DETAIL_ALIGNMENT = 0.2


def _blur(images: torch.Tensor, blur: tuple[float, int]) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    sigma, size = blur
    return gaussian_blur(images, [size, size], [sigma, sigma])


def detail_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How far ``output``'s fine detail is from ``target``'s in local amplitude and in alignment, not in
    value: per channel, the band ``x - G(x)``; its local amplitude ``a = sqrt(G(band²))``; the loss is
    ``|a_out - a_target|`` plus ``DETAIL_ALIGNMENT × (1 - local correlation of the two bands)``, averaged.

    Why not a squared error on the band: under uncertainty (noise, blur) a squared error is smallest for
    the *mean* of the plausible details, which is fainter than any of them, so the enhanced image's vessels
    fade (the clean image blurred by sigma 1 px keeps 0.44 of vessel Dice, at 36 dB). Matching the amplitude
    asks for detail of the clean image's strength; the correlation asks for it where the clean image has it.
    """
    band_out = output - _blur(output, DETAIL_BAND)
    band_target = target - _blur(target, DETAIL_BAND)
    amplitude_out = (_blur(band_out ** 2, DETAIL_WINDOW) + 1e-6).sqrt()
    amplitude_target = (_blur(band_target ** 2, DETAIL_WINDOW) + 1e-6).sqrt()
    correlation = _blur(band_out * band_target, DETAIL_WINDOW) / (amplitude_out * amplitude_target)
    return (amplitude_out - amplitude_target).abs().mean() + DETAIL_ALIGNMENT * (1 - correlation).mean()


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator (pix2pix): one real/fake logit per overlapping image patch."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        features = width
        for level in range(1, layers + 1):
            previous, features = features, width * min(2 ** level, 8)
            stride = 2 if level < layers else 1  # the last layer keeps the patch grid
            blocks += [nn.Conv2d(previous, features, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(32, features // 4), features), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(features, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*blocks)
        # steps taken, saved with the weights so that ``gan_start`` counts correctly across resumes
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _lpips_weight_files(net: str) -> list[Path]:
    """Files LPIPS needs: torchvision's ImageNet backbone and torchmetrics' linear heads."""
    import torchmetrics.functional.image.lpips as tm_lpips
    import torchvision

    weights = {"vgg": torchvision.models.VGG16_Weights, "alex": torchvision.models.AlexNet_Weights,
               "squeeze": torchvision.models.SqueezeNet1_1_Weights}[net].DEFAULT
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    heads = Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"
    return [backbone, heads]


class AutoencoderLoss(nn.Module):
    """L1 + (1 - SSIM) + codebook (VQ) or KL term, optionally the detail term, LPIPS and a PatchGAN (hinge)
    adversary.

    The discriminator, when on, is a submodule trained in the same stage: its hinge loss and the
    autoencoder's adversarial loss are summed into one scalar whose gradients reach each side only
    (the generator term sees the discriminator's weights detached; the discriminator term sees the
    reconstruction detached), so one optimiser step updates both correctly.
    """

    def __init__(self, config: LatentConfig, channels: int):
        super().__init__()
        self.config = config
        self.discriminator = (PatchDiscriminator(channels, config.discriminator_channels, config.discriminator_layers)
                              if config.gan_weight > 0 else None)
        # LPIPS is a frozen measuring instrument, not part of the model: kept outside the module tree so
        # it is neither counted, saved nor trained
        object.__setattr__(self, "lpips", self._load_lpips(config) if config.lpips_weight > 0 else None)
        self._codebook_ready = False  # checked once per process (a resumed run finds its codebook trained)

    @staticmethod
    def _load_lpips(config: LatentConfig) -> nn.Module:
        missing = [str(p) for p in _lpips_weight_files(config.lpips_net) if not p.is_file()]
        if missing:
            raise UserError(f"model.lpips_weight needs the LPIPS '{config.lpips_net}' weights at {missing[0]}, "
                            "which is not present (rdiff never downloads weights; place the file there or set "
                            "model.lpips_weight=0).")
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type=config.lpips_net, normalize=True)
        return metric.net.eval().requires_grad_(False)

    def forward(self, autoencoder: VQModel | AutoencoderKL, clean: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of reconstructing ``clean`` (B×C×H×W in [0, 1]) and its parts for the logs."""
        config, signed = self.config, clean * 2 - 1
        if isinstance(autoencoder, VQModel):
            latents = encode_raw(autoencoder, signed)
            if not self._codebook_ready:
                initialise_codebook(autoencoder, latents)
                self._codebook_ready = True
            decoded = autoencoder.decode(latents)
            reconstruction, regulariser = decoded.sample, config.codebook_weight * decoded.commit_loss.mean()
        else:
            posterior = autoencoder.encode(signed).latent_dist
            latents = _latent_out(autoencoder, _add_image(posterior.sample(), signed, getattr(autoencoder, "image_skip", 0)))
            reconstruction = decode_raw(autoencoder, latents)
            # KL summed over the latent and divided by the image's elements: the same balance against a
            # per-pixel L1 as latent diffusion's summed losses with kl_weight 1e-6
            regulariser = config.kl_weight * posterior.kl().sum() / clean.numel()
        reconstruction = (reconstruction + 1) / 2
        parts = {"l1": config.l1_weight * (reconstruction - clean).abs().mean(),
                 "ssim": config.ssim_weight * ssim_loss(reconstruction, clean) if config.ssim_weight else None,
                 "detail": config.detail_weight * detail_loss(reconstruction, clean) if config.detail_weight else None,
                 "codebook" if isinstance(autoencoder, VQModel) else "kl": regulariser}
        if self.lpips is not None:
            self.lpips.to(clean.device)
            parts["lpips"] = config.lpips_weight * self.lpips(_rgb(reconstruction), _rgb(clean), normalize=True).mean()
        if self.discriminator is not None:
            parts.update(self._adversarial(reconstruction, clean))
        parts = {name: value for name, value in parts.items() if value is not None}
        loss = sum(parts.values())
        return loss, {name: float(value.detach()) for name, value in parts.items()}

    def _adversarial(self, reconstruction: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        disc, config = self.discriminator, self.config
        if self.training:
            disc.steps += 1
        if disc.steps.item() <= config.gan_start:
            return {}
        frozen = {name: p.detach() for name, p in disc.named_parameters()}
        generator = -functional_call(disc, frozen, (reconstruction * 2 - 1,)).mean()
        real, fake = disc(clean * 2 - 1), disc(reconstruction.detach() * 2 - 1)
        discriminator = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return {"gan": config.gan_weight * generator, "discriminator": discriminator}


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """LPIPS backbones take three channels: repeat a grey image, keep the first three otherwise."""
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images[:, :3]


def latent_std(latents: torch.Tensor) -> float:
    """The standard deviation of a batch of latents, averaged over processes when training is distributed."""
    stats = torch.stack([latents.detach().float().pow(2).mean(), latents.detach().float().mean()])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
        stats /= torch.distributed.get_world_size()
    variance = float(stats[0] - stats[1] ** 2)
    return math.sqrt(max(variance, 1e-12))
