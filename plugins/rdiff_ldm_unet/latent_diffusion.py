"""Latent diffusion as a rdiff backbone, whatever its denoiser (the paper's method, DESIGN.md §1).

Phase 1 trains the autoencoder (stage ``autoencoder``), then, with it frozen, a denoiser given the noisy
latent ⊕ the condition latent (stage ``denoiser``). By default the condition is ``E(degraded x)`` (the
modality's simulator: phase 1 alone learns to enhance) and the denoiser predicts the clean latent *around
the condition*, ``x̂₀ = c + r(z_t, c, t)`` with ``r``'s output layer zero-initialised; the paper's
ε-prediction with condition ``E(x)`` stays available. Phase 2 trains adaptors with
``|E(hq) − E'(lq)|₁ + |E(hq) − E'(hq)|₁`` plus the adapted denoiser's diffusion loss with condition
``E'(lq)`` and target ``E(hq)``. Enhancement is ``D(E'(lq))`` (``fast``) or DDIM sampling conditioned on
``E'(lq)`` (``sample``), which starts from ``E'(lq)`` noised to ``sample_strength`` of the schedule and
returns the last step's ``x̂₀``: with ``r = 0`` it returns the fast path exactly (img2img, as SDEdit; the
few-step restorers ResShift and OSEDiff also start from the low-quality latent rather than from noise).

:class:`LatentDiffusion` owns everything but the denoiser network; a subclass supplies it
(``rdiff_ldm_unet``'s UNet, ``rdiff_dit``'s transformer) through the methods marked "denoiser".
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from rdiff import AdaptationTarget, Reconstructor, UserError
from rdiff.errors import did_you_mean
from rdiff_ldm_unet.autoencoder import (AutoencoderLoss, build_autoencoder, decode_raw, detail_loss,
                                        downsampling_factor, enable_gradient_checkpointing, encode_raw,
                                        encoder_adaptation_targets, encoder_lora_targets, image_adaptation_targets,
                                        latent_std)
from rdiff_ldm_unet.config import LatentConfig
from rdiff_layers.colour_field import ColourField


@dataclass(frozen=True)
class DDIMOptions:
    """The options of the ``sample`` path: DDIM ``steps`` and ``eta`` (0: deterministic given the start noise;
    1.0 in the paper's code).

    Built by :meth:`LatentDiffusion.resolve_path` from a path name (``ddim20``: 20 steps) and the settings
    ``steps`` (``rdiff enhance --steps``), ``eta`` (``--eta``, ``eval.eta``) and ``sample_steps``."""

    steps: int = 4
    eta: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(f"steps must be at least 1, not {self.steps}.")


class LatentDiffusion(Reconstructor):
    """A latent autoencoder and a concat-conditioned denoiser; subclasses provide the denoiser."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"latent", "concat_condition", "sampling", "lora_targets"})
    sampling_options: ClassVar[type] = DDIMOptions
    stages: ClassVar[tuple[str, ...]] = ("autoencoder", "denoiser")

    def __init__(self, config: LatentConfig, channels: int):
        if not 0 < config.sample_strength <= 1:
            raise UserError(f"config key 'model.sample_strength' must be in (0, 1], not {config.sample_strength}.")
        if not 0 <= config.estimate_inputs <= 1:
            raise UserError(f"config key 'model.estimate_inputs' must be in [0, 1], not {config.estimate_inputs}.")
        super().__init__(config, channels)
        self.autoencoder = build_autoencoder(config, channels)
        # corrects colour and illumination of every input before the encoder; zero-initialised, the identity
        self.corrector = ColourField(channels) if config.corrector else None
        self.stages = ("autoencoder", "corrector", "denoiser") if config.corrector else type(self).stages
        self.denoiser = self.build_denoiser()
        self.autoencoder_loss = AutoencoderLoss(config, channels)
        # a residual denoiser's output plus the condition is the clean sample (diffusers' "sample" prediction)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=config.train_timesteps, beta_start=config.beta_start, beta_end=config.beta_end,
            beta_schedule=config.beta_schedule, clip_sample=False,
            prediction_type="sample" if config.prediction == "residual" else config.prediction)
        if config.prediction == "residual":  # an untrained residual is zero: sampling returns the fast path
            nn.init.zeros_(self.denoiser_output().weight)
            nn.init.zeros_(self.denoiser_output().bias)
        # multiplies latents before diffusion so they have about unit variance, like the noise; 0 means
        # "not measured yet" (measured on the first denoiser batch); a buffer so checkpoints keep it
        self.register_buffer("latent_scale", torch.tensor(float(config.latent_scale or 0.0)))
        # images must survive the autoencoder's and the denoiser's downsampling (depends on the config,
        # so each instance sets it; the class attribute holds the paper-size value)
        self.size_multiple = downsampling_factor(config) * self.denoiser_multiple()

    # --- denoiser: supplied by subclasses -------------------------------------------------------------------
    def build_denoiser(self) -> nn.Module:
        """The denoiser network: input ``2 × latent_channels`` (noisy ⊕ condition), output ``latent_channels``."""
        raise NotImplementedError

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for ``sample`` (noisy latent ⊕ condition latent) at ``timestep`` (B,)."""
        raise NotImplementedError

    def denoiser_multiple(self) -> int:
        """Latent sides must be multiples of this for the denoiser."""
        raise NotImplementedError

    def denoiser_output(self) -> nn.Module:
        """The denoiser's last layer (zero-initialised for a residual prediction)."""
        raise NotImplementedError

    def denoiser_adaptation_targets(self) -> list[AdaptationTarget]:
        raise NotImplementedError

    def denoiser_lora_targets(self) -> list[str]:
        raise NotImplementedError

    # --- latent protocol --------------------------------------------------------------------------------------
    def scale(self) -> float:
        """The latent scale in use (1 until measured)."""
        value = float(self.latent_scale)
        return value if value > 0 else 1.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images in [0, 1] (with any enabled adaptor acting on the image and the encoder)."""
        return self.encode_corrected(self.correct(images))

    def correct(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] through the phase-1 corrector (``model.corrector``), then the input-image target
        (``autoencoder.image_in``): unchanged in phase 1, corrected by an adaptor there in phase 2. Both look
        across the image, so they run on whole images, before any tiling."""
        if self.corrector is not None:
            images = images + self.corrector(images)
        image_in = getattr(self.autoencoder, "image_in", None)
        return image_in(images) if image_in is not None else images

    def encode_corrected(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` without :meth:`correct` (for images it has corrected already, or tiles of them)."""
        return encode_raw(self.autoencoder, images * 2 - 1) * self.scale()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in (about) [0, 1] from scaled latents; not clamped, so losses keep their gradients."""
        return (decode_raw(self.autoencoder, latents / self.scale()) + 1) / 2

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latent of an ``height × width`` image."""
        factor = downsampling_factor(self.config)
        return self.config.latent_channels, height // factor, width // factor

    def measure_latent_scale(self, latents: torch.Tensor) -> None:
        """Set the latent scale to 1/std of these (unscaled) latents, as latent diffusion's ``scale_by_std``."""
        self.latent_scale.fill_(1.0 / latent_std(latents))
        self.autoencoder.register_to_config(scaling_factor=float(self.latent_scale))

    # --- phase 1 ---------------------------------------------------------------------------------------------
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        if stage == "autoencoder":
            return [*self.autoencoder.parameters(), *self.autoencoder_loss.parameters()]
        if stage == "denoiser":
            return list(self.denoiser.parameters())
        if stage == "corrector" and self.corrector is not None:
            return list(self.corrector.parameters())
        raise self._unknown_stage(stage)

    def _unknown_stage(self, stage: str) -> UserError:
        return UserError(f"train.steps names stage '{stage}', but {self.registered_name} trains the stages "
                         f"{', '.join(self.stages)}.")

    def needs_degraded(self, stage: str) -> bool:
        return stage == "corrector" or (stage == "denoiser" and self.config.pretext == "degraded")

    def stage_image_size(self, stage: str, train: Any) -> int:
        """With a corrector, its stage and the denoiser's see whole images at the working scale: the corrector
        reads the whole image's statistics, so the denoiser's condition is corrected whole (as enhancement
        corrects it), then cut to an ``adapt_crop`` crop."""
        if self.corrector is None or stage == "autoencoder":
            return train.image_size
        return train.resize or train.image_size

    def reconstruction_loss(self, stage: str, clean: torch.Tensor, roi: torch.Tensor,
                            degraded: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``autoencoder``: L1 + SSIM + codebook/KL (+ LPIPS, GAN); ``corrector``: squared error inside ``roi``
        of the corrected degraded image, and of the corrected clean one, against the clean image (the
        phase-2 image loss, here before any pair); ``denoiser``: the diffusion loss with the autoencoder
        (and corrector) frozen. The whole crop counts there (as in the paper)."""
        if stage == "autoencoder":
            return self.autoencoder_loss(self.autoencoder, clean)
        if stage == "corrector" and self.corrector is not None:
            loss = image_loss(self.correct(degraded), self.correct(clean), clean, roi)
            return loss, {"corrector": float(loss.detach())}
        if stage != "denoiser":
            raise self._unknown_stage(stage)
        with torch.no_grad():  # the autoencoder (and the corrector) are frozen in this stage
            degraded = None if degraded is None else self.correct(degraded)  # whole, as enhancement corrects it
            if self.corrector is not None:  # whole images (stage_image_size): cropped once corrected
                clean, *rest = _random_crops(self.config.adapt_crop, clean, *([degraded] if degraded is not None else []))
                degraded = rest[0] if rest else None
            raw = encode_raw(self.autoencoder, clean * 2 - 1)
            if float(self.latent_scale) <= 0:
                self.measure_latent_scale(raw)
            target = raw * self.scale()
            if self.config.pretext == "degraded":
                if degraded is None:
                    raise ValueError("the 'degraded' pretext needs degraded images (see needs_degraded)")
                condition = self.encode_corrected(degraded)
            else:
                condition = target
        loss = self.diffusion_loss(target, condition)
        return loss, {"diffusion": float(loss.detach()), "latent_scale": self.scale()}

    def last_timestep(self) -> int:
        """The highest timestep sampling starts from (``sample_strength`` of the schedule)."""
        return max(1, round(self.config.sample_strength * self.scheduler.config.num_train_timesteps))

    def diffusion_loss(self, target: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """L2 between the denoiser's prediction and its goal at a random timestep: the clean latent's
        difference from the condition (residual; timesteps up to where sampling starts), the noise or the
        velocity. An ε error is amplified √((1−ᾱ)/ᾱ)-fold in x̂₀ (39× at t = 999), an x₀ error is not.

        A residual denoiser sees, at every sampling step after the first, not the clean latent noised but
        its own previous estimate noised; trained on the clean latent only, it trusts that input at low t and
        copies the estimate's errors with fresh noise into the image (a mottle, streaks), so several steps
        scored below one. ``estimate_inputs`` of each batch is therefore noised from the denoiser's own
        (detached) first-step estimate, made exactly as sampling makes it, with the clean latent as the goal:
        a later step learns to correct the estimate (Ning et al. 2023 perturb the input with noise for the
        same exposure bias; here the perturbation is the model's own error)."""
        noise = torch.randn_like(target)
        residual = self.config.prediction == "residual"
        high = self.last_timestep() if residual else self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, high, (target.shape[0],), device=target.device)
        start = target
        if residual and self.config.estimate_inputs > 0:
            estimated = torch.rand(target.shape[0], device=target.device) < self.config.estimate_inputs
            if estimated.any():
                start = target.clone()
                start[estimated] = self.first_estimate(condition[estimated]).to(target.dtype)
        noisy = self.scheduler.add_noise(start, noise, timesteps)
        prediction = self.predict(torch.cat([noisy, condition], dim=1), timesteps)
        if residual:
            goal = target - condition
        elif self.config.prediction == "epsilon":
            goal = noise
        else:
            goal = self.scheduler.get_velocity(target, noise, timesteps)
        return F.mse_loss(prediction.float(), goal.float())

    @torch.no_grad()
    def first_estimate(self, condition: torch.Tensor) -> torch.Tensor:
        """The first sampling step's ``x̂₀``: the condition noised to the first timestep, then denoised."""
        first = torch.full((condition.shape[0],), self.last_timestep() - 1, device=condition.device)
        noisy = self.scheduler.add_noise(condition, torch.randn_like(condition), first)
        return condition + self.predict(torch.cat([noisy, condition], dim=1), first)

    # --- phase 2 ---------------------------------------------------------------------------------------------
    def adaptation_targets(self) -> list[AdaptationTarget]:
        return (image_adaptation_targets(self.autoencoder, "autoencoder", self.channels)
                + encoder_adaptation_targets(self.autoencoder, "autoencoder", self.config.norm)
                + self.denoiser_adaptation_targets())

    def adaptation_loss(self, lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Input image (where an adaptor acts on it): the corrected ``lq`` and ``hq`` must match ``hq``
        inside ``roi`` (squared error); encoder: degraded images must land on the clean image's original latent and
        clean images stay where they were (with ``detail_loss_weight``, the decoded adapted crop must also carry
        the clean crop's fine detail, :func:`~rdiff_ldm_unet.autoencoder.detail_loss`); denoiser: the diffusion loss conditioned on the adapted latent of
        ``lq``. Encoder and denoiser see a random ``adapt_crop`` of the corrected images: the image
        adaptor needs the wide view to tell illumination from anatomy, the res-block adaptors do not."""
        corrected_lq, corrected_hq = self.correct(lq), self.correct(hq)
        logs: dict[str, float] = {}
        loss = lq.new_zeros(())
        if corrected_lq.requires_grad:  # an adaptor acts on the input image
            image = image_loss(corrected_lq, corrected_hq, hq, roi)
            loss = loss + self.config.image_loss_weight * image
            logs["image"] = float(image.detach())
        lq_crop, corrected_hq_crop, hq_crop = _random_crops(self.config.adapt_crop, corrected_lq.detach(),
                                                            corrected_hq.detach(), hq)
        with torch.no_grad(), self.base_only():
            target = self.encode_corrected(hq_crop)  # E(hq), the frozen original encoder
        adapted_lq, adapted_hq = self.encode_corrected(lq_crop), self.encode_corrected(corrected_hq_crop)
        encoder = (adapted_lq - target).abs().mean() + (adapted_hq - target).abs().mean()
        # the condition is detached: the encoder's adaptors learn from their own loss only and the
        # denoiser's from the diffusion loss (the two adaptors of the paper)
        loss = loss + self.config.encoder_loss_weight * encoder
        logs["encoder"] = float(encoder.detach())
        if self.config.detail_loss_weight:  # through the frozen decoder: the fast path's output itself
            detail = detail_loss(self.decode(adapted_lq), hq_crop)
            loss = loss + self.config.detail_loss_weight * detail
            logs["detail"] = float(detail.detach())
        if self.config.diffusion_loss_weight:  # 0: the fast path only, the denoiser's adaptors stay at zero
            diffusion = self.diffusion_loss(target, adapted_lq.detach())
            loss = loss + self.config.diffusion_loss_weight * diffusion
            logs["diffusion"] = float(diffusion.detach())
        return loss, logs

    def supervised_loss(self, lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The from-scratch baseline trains both paths at once: L1 inside ``roi`` between ``D(E(lq))`` and
        ``hq`` (the ``fast`` path) plus the denoiser's diffusion loss towards ``E(hq)`` conditioned on
        ``E(lq)`` (the sampling paths). The latents are detached for the denoiser, so the autoencoder
        learns from the pixel loss only, as it would in a two-stage latent diffusion."""
        l1, _ = super().supervised_loss(lq, hq, roi)
        with torch.no_grad():
            raw = encode_raw(self.autoencoder, hq * 2 - 1)
            if float(self.latent_scale) <= 0:
                self.measure_latent_scale(raw)
            target, condition = raw * self.scale(), self.encode(lq)
        diffusion = self.diffusion_loss(target, condition)
        return l1 + diffusion, {"l1": float(l1.detach()), "diffusion": float(diffusion.detach())}

    def finetune_parameters(self) -> list[nn.Parameter]:
        """``--train-base`` fine-tunes the whole denoiser, as the paper's released code did."""
        return list(self.denoiser.parameters())

    # --- enhancement ---------------------------------------------------------------------------------------
    def tiles_itself(self, path: str) -> bool:
        """Every path takes the whole image: an adaptor on the input image corrects it whole, then each
        network runs on tiles; sampling steps the whole latent, so its steps agree across tile borders."""
        return True

    def denoiser_tile(self) -> int | None:
        """The latent tile side the denoiser must see (None: any, e.g. a convolutional UNet)."""
        return None

    def path_names(self, *, sample_steps: list[int] | tuple[int, ...] = (DDIMOptions.steps,), **_: Any) -> list[str]:
        """``fast`` and ``ddimK`` for each K of ``sample_steps`` (the run's ``eval.sample_steps``)."""
        return ["fast", *(f"ddim{int(k)}" for k in sample_steps)]

    def resolve_path(self, name: str, *, steps: int | None = None, eta: float | None = None,
                     sample_steps: list[int] | None = None, **_: Any) -> tuple[str, DDIMOptions | None]:
        """``fast``; ``sample`` (``steps``, else the first of ``sample_steps``) or ``ddimK`` (K steps unless
        ``steps`` says otherwise), with ``eta``."""
        if name == "fast":
            return "fast", None
        named = re.fullmatch(r"ddim(\d+)", name)
        if name != "sample" and not named:
            known = ("fast", "sample", *self.path_names(sample_steps=sample_steps or (DDIMOptions.steps,)))
            raise UserError(f"backbone '{self.registered_name}' has no enhancement path '{name}'"
                            f"{did_you_mean(name, known)}; paths: fast, sample, ddimK (DDIM with K steps).")
        default = int(named[1]) if named else int(sample_steps[0]) if sample_steps else DDIMOptions.steps
        return "sample", DDIMOptions(steps=default if steps is None else int(steps),
                                     eta=DDIMOptions.eta if eta is None else float(eta))

    @torch.no_grad()
    def enhance(self, lq: torch.Tensor, *, path: str = "fast", options: DDIMOptions | None = None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                tile: int | None = None, overlap: int = 32) -> torch.Tensor:
        """``fast``: ``D(E'(lq))``; ``sample``: DDIM (``options``, default :class:`DDIMOptions`) from noise,
        conditioned on ``E'(lq)``. With ``tile``, encoder, denoiser (at every step) and decoder each run on
        overlapping tiles of at most ``tile`` image pixels (:func:`rdiff.enhance.tiled_apply`): memory
        bounded by the tile, one latent."""
        from rdiff.enhance import tiled_apply

        if path not in self.paths():
            raise UserError(f"enhancement path '{path}' is not one of {', '.join(self.paths())}.")
        height, width = lq.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"image sides must be multiples of {self.size_multiple}, got {height}×{width}")
        factor = downsampling_factor(self.config)
        big = tile or max(height, width)
        latent_tile, latent_overlap = big // factor, overlap // factor
        latent_multiple = self.size_multiple // factor
        condition = self._condition(lq, big, overlap)
        if path == "fast":
            latents = condition
        else:
            denoiser_tile = self.denoiser_tile() or latent_tile
            # the denoiser's reach is wider than the autoencoder's and every step's difference is amplified
            # by the next: a quarter of the tile overlaps
            options = options or DDIMOptions()
            latents = self.sample(condition, steps=options.steps, eta=options.eta, generator=generator, noise=noise,
                                  tile=(denoiser_tile, min(max(latent_overlap, denoiser_tile // 4), denoiser_tile // 2),
                                        latent_multiple))
        return tiled_apply(self.decode, latents, latent_tile, latent_overlap, latent_multiple).clamp(0, 1)

    _condition_memo: dict[str, Any] | None = None  # the last input and its latent, inside reusing_condition()

    def _condition(self, lq: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        """``E'(correct(lq))`` on tiles; inside :meth:`reusing_condition`, the last one again for the same input."""
        from rdiff.enhance import tiled_apply

        key = (tile, overlap, torch.is_inference_mode_enabled())
        memo = self._condition_memo
        if memo and memo["key"] == key and torch.equal(memo["input"], lq):  # equal is False for another shape
            return memo["latent"]
        condition = tiled_apply(self.encode_corrected, self.correct(lq), tile, overlap, self.size_multiple)
        if memo is not None:
            memo.update(input=lq.clone(), key=key, latent=condition)
        return condition

    @contextlib.contextmanager
    def reusing_condition(self) -> Iterator[None]:
        """Within this block, :meth:`enhance` corrects and encodes an input equal to the previous one only once:
        K samples of one image (``rdiff enhance --uncertainty``) pay for the corrector and the encoder once. Only
        the last input is kept (one image and its latent), and nothing once the block ends."""
        self._condition_memo = {}
        try:
            yield
        finally:
            self._condition_memo = None

    def ddim_scheduler(self, steps: int, device: torch.device | None = None) -> DDIMScheduler:
        """DDIM on the training schedule with ``steps`` steps from ``sample_strength`` of it down. Trailing
        spacing (Lin et al. 2024), so that even one step starts where the denoiser was trained (a residual
        denoiser at ``t ≤ sample_strength·T``), not at t = 1 where it would trust the noisy latent."""
        scheduler = DDIMScheduler.from_config(self.scheduler.config, clip_sample=False, set_alpha_to_one=True,
                                              timestep_spacing="trailing")
        scheduler.set_timesteps(max(steps, math.ceil(steps / self.config.sample_strength)), device=device)
        scheduler.timesteps = scheduler.timesteps[-steps:]
        return scheduler

    def sample(self, condition: torch.Tensor, *, steps: int, eta: float = 0.0,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               tile: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Scaled latents sampled by DDIM given the condition latents: from the condition noised to the first
        timestep (pure noise at ``sample_strength`` 1), returning the last step's ``x̂₀``; ``tile`` = (side,
        overlap, multiple) runs the denoiser on overlapping latent tiles at every step (the scheduler steps the
        whole latent, so its per-step noise is one field whatever the tiling)."""
        from rdiff.enhance import tiled_apply

        scheduler = self.ddim_scheduler(steps, condition.device)
        if noise is None:
            noise = randn_tensor(condition.shape, generator=generator, device=condition.device, dtype=condition.dtype)
        elif noise.ndim == 3:
            noise = noise.expand(condition.shape[0], -1, -1, -1)
        if noise.shape != condition.shape:
            raise ValueError(f"noise must have the latent shape {tuple(condition.shape)}, got {tuple(noise.shape)}")
        noise = noise.to(condition)
        start = scheduler.timesteps[:1].expand(condition.shape[0])
        latents = noise if self.config.sample_strength >= 1 else scheduler.add_noise(condition, noise, start)
        for t in scheduler.timesteps:
            timesteps = t.expand(condition.shape[0]).to(condition.device)
            joined = torch.cat([latents, condition], dim=1)
            if tile is None:
                prediction = self.predict(joined, timesteps)
            else:
                prediction = tiled_apply(lambda part: self.predict(part, timesteps), joined, *tile)
            if self.config.prediction == "residual":
                prediction = prediction + condition
            step = scheduler.step(prediction, t, latents, eta=eta, generator=generator)
            latents = step.prev_sample
        return step.pred_original_sample

    # --- capability protocols --------------------------------------------------------------------------------
    def lora_target_modules(self) -> dict[str, list[str]]:
        """Full module names (inside each network) a LoRA adaptor may wrap: the encoder's res-block
        convolutions and the denoiser's attention projections and res-block/feed-forward layers."""
        return {"autoencoder": encoder_lora_targets(self.autoencoder), "denoiser": self.denoiser_lora_targets()}

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory in every network (diffusers' activation checkpointing)."""
        enable_gradient_checkpointing(self.autoencoder)
        self.denoiser.enable_gradient_checkpointing()

    # --- weights ---------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {"autoencoder": self.autoencoder, "denoiser": self.denoiser}
        if self.corrector is not None:
            nets["corrector"] = self.corrector
        if self.autoencoder_loss.discriminator is not None:
            nets["discriminator"] = self.autoencoder_loss.discriminator
        return nets

    def save(self, directory: str | Path) -> None:
        """Every network in diffusers' layout (the latent scale as the autoencoder's ``scaling_factor``)
        plus the training noise schedule as ``scheduler/``."""
        self.autoencoder.register_to_config(scaling_factor=float(self.latent_scale))
        super().save(directory)
        self.scheduler.save_pretrained(Path(directory) / "scheduler")

    def load(self, directory: str | Path) -> None:
        super().load(directory)
        config_file = Path(directory) / "autoencoder" / "config.json"
        if config_file.is_file():
            scale = float(json.loads(config_file.read_text()).get("scaling_factor") or 0.0)
            self.latent_scale.fill_(scale)
            self.autoencoder.register_to_config(scaling_factor=scale)


def image_loss(corrected_lq: torch.Tensor, corrected_hq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Squared error inside ``roi`` of the corrected degraded image and of the corrected clean one against the
    clean image (the corrector's loss in phase 1, the input-image adaptor's in phase 2). Squared, as PSNR
    counts it: a colour field's errors are smooth and broad, not outliers an L1 would have to forgive (on
    held-out IDRiD 23.8 dB against 23.4 with L1, 2 seeds each)."""
    inside = roi.expand_as(hq)
    return (((corrected_lq - hq) ** 2 + (corrected_hq - hq) ** 2) * inside).sum() / inside.sum().clamp_min(1.0)


def _random_crops(size: int, *images: torch.Tensor) -> list[torch.Tensor]:
    """The same random ``size``-px window of each image (all of them when ``size`` is 0 or not smaller)."""
    height, width = images[0].shape[-2:]
    if not size or (size >= height and size >= width):
        return list(images)
    size_h, size_w = min(size, height), min(size, width)
    y = int(torch.randint(0, height - size_h + 1, ()))
    x = int(torch.randint(0, width - size_w + 1, ()))
    return [image[..., y:y + size_h, x:x + size_w] for image in images]
