"""What each backbone capability promises, as :class:`typing.Protocol` classes.

A backbone lists the capabilities it offers (``capabilities`` in its plugin's declarations); an adaptor
lists those it ``requires``, and :func:`rdiff.registry.create_adaptor` refuses a backbone lacking one. A
capability is a promise about methods beyond the :class:`rdiff.Reconstructor` role; these protocols say
which, and the contract tests of :mod:`rdiff.testing` check them. docs/hooks.md lists their docstrings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn


@runtime_checkable
class Latent(Protocol):
    """``"latent"``: has ``encode(x)`` / ``decode(z)``; a backbone that samples also has ``latent_shape(height,
    width) -> (C, h, w)``, the shape of the latent of an image that size (tiles of one image then share one
    noise field)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Sampling(Protocol):
    """``"sampling"``: ``enhance(path="sample", options=...)`` runs an iterative sampler (``paths()`` then
    includes ``"sample"``). ``options`` is the backbone's own typed object, an instance of its
    ``sampling_options`` dataclass, which ``resolve_path(name, **settings)`` builds from a path name
    (ldm-unet: ``ddim20``) and the user's settings (``eval`` keys, ``rdiff enhance --steps/--eta``)."""

    def resolve_path(self, name: str, **settings: Any) -> tuple[str, Any]: ...

    def enhance(self, lq: torch.Tensor, *, path: str = "fast", options: Any = None, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class LoraTargets(Protocol):
    """``"lora_targets"``: implement ``lora_target_modules() -> {network name: [module names or regex]}``
    naming the layers a LoRA adaptor may wrap (peft ``target_modules``) in each network of ``networks()``."""

    def lora_target_modules(self) -> dict[str, list[str]]: ...


@runtime_checkable
class DownResiduals(Protocol):
    """``"down_residuals"``: implement ``control_unet()`` -> the denoiser network whose down path a
    ControlNet-style adaptor copies; while the adaptor is enabled and has ``control_residuals(sample,
    timestep)``, the backbone adds its result (tuple of down-path skip tensors, mid tensor) to the denoiser's
    skip connections and middle-block output, as diffusers' ControlNet residuals are added."""

    def control_unet(self) -> nn.Module: ...


@runtime_checkable
class ConcatCondition(Protocol):
    """``"concat_condition"``: the denoiser is conditioned on the degraded image by concatenating its latent
    to the noisy latent (channel concatenation), so the first layer's condition channels can be adapted. A
    promise about the architecture; it adds no method."""


#: capability name -> the protocol describing it
PROTOCOLS: dict[str, type] = {"latent": Latent, "sampling": Sampling, "lora_targets": LoraTargets,
                              "down_residuals": DownResiduals, "concat_condition": ConcatCondition}
