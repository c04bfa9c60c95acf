"""The Reconstructor role: a generative backbone trained in phase 1 to reconstruct unpaired images.

The engine never sees timesteps, latents or codebooks: it asks the backbone for a loss per stage, for
the phase-2 loss, and for enhanced images. Everything a backbone knows about itself stays inside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import torch
from torch import nn

from rdiff.errors import UserError, did_you_mean


@dataclass
class AdaptationTarget:
    """A place where an adaptor may act: the *end of a residual branch* inside the backbone.

    A residual adaptor adds ``f(output)`` to ``module``'s output, i.e. on the residual branch before the
    block's skip addition (for a diffusers ``ResnetBlock2D`` that module is its ``conv2``).
    """

    name: str  # dotted path inside the backbone, stable across runs (adaptor weights are keyed by it)
    group: str  # which part of the backbone: "encoder", "denoiser_down", "denoiser_mid", "denoiser_up", or "image", the input image itself in [0, 1] before the networks, where an adaptor corrects colour and illumination (run on the whole image, never per tile, so a layer there may look across the image)
    module: nn.Module  # the module whose output is the branch's end
    channels: int  # channels of that output
    layout: Literal["BCHW", "BLC"] = "BCHW"  # image-shaped features or token sequences
    norm: Literal["group", "channel", "none"] = "group"  # the normalisation an adaptor layer here should use to be as tile-invariant as the block it joins: "channel" (rdiff_layers.ChannelNorm, no spatial statistics) where the backbone has no GroupNorm, "none" where the values themselves carry the signal (an image's brightness and colour)


class Reconstructor(nn.Module, ABC):
    """A backbone. Inputs and outputs are ``B×C×H×W`` tensors in [0, 1]; rois ``B×1×H×W`` in {0, 1}."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    stages: ClassVar[tuple[str, ...]] = ()  # phase-1 stages in training order, e.g. autoencoder, denoiser
    size_multiple: ClassVar[int] = 1  # H and W given to the networks must be multiples of this
    # pixels neighbouring tiles share by default: wider than the networks' reach, so that a tiled image
    # enhances like the whole one (within 2/255, tests/test_tile_invariance.py)
    tile_overlap: ClassVar[int] = 96

    def __init__(self, config: Any, channels: int):
        super().__init__()
        self.config = config
        self.channels = channels
        self.registered_name = type(self).__name__  # the name it was created under (set by create_backbone)
        self.attach(None)

    def attach(self, adaptor: Any) -> None:
        """Record the adaptor acting on this backbone (``None``: none). The adaptor is not a submodule: the
        base saves its own weights and the adaptor its own. Only what the adaptor offers is used here, its
        ``disabled()`` context, so this module needs nothing from :mod:`rdiff.adaptor`."""
        object.__setattr__(self, "adaptor", adaptor)

    def forward(self, task: str, *args: Any, **kwargs: Any) -> Any:
        """Training entry point: ``task`` is ``"reconstruction_loss"``, ``"adaptation_loss"`` or
        ``"supervised_loss"``.

        The engine calls losses through ``forward`` so that DistributedDataParallel, which only hooks
        ``forward``, synchronises the gradients of every loss."""
        if task not in ("reconstruction_loss", "adaptation_loss", "supervised_loss"):
            raise ValueError(f"unknown task {task!r}")
        return getattr(self, task)(*args, **kwargs)

    # --- phase 1 -------------------------------------------------------------------------------------------
    @abstractmethod
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """The parameters trained in phase-1 ``stage`` (the others stay frozen meanwhile)."""

    @abstractmethod
    def reconstruction_loss(self, stage: str, clean: torch.Tensor, roi: torch.Tensor,
                            degraded: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """The self-supervised loss of ``stage`` on a batch of clean images (optionally with logs).
        ``degraded`` (the same images through the modality's degradation) is given only for stages for
        which :meth:`needs_degraded` is true."""

    def needs_degraded(self, stage: str) -> bool:
        """Whether phase-1 ``stage`` wants degraded copies of its clean images (a degraded pretext)."""
        return False

    def stage_image_size(self, stage: str, train: Any) -> int:
        """Side of the phase-1 crops ``stage`` learns on (``train``: the run's train section); at least the
        working scale (``train.resize``) gives whole images on a black canvas, for a network that looks across them."""
        return train.image_size

    # --- phase 2 -------------------------------------------------------------------------------------------
    @abstractmethod
    def adaptation_targets(self) -> list[AdaptationTarget]:
        """Where adaptors may act."""

    @abstractmethod
    def adaptation_loss(self, lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """The phase-2 loss on pairs, with the adaptor on; use :meth:`base_only` for the frozen original."""

    def supervised_loss(self, lq: torch.Tensor, hq: torch.Tensor, roi: torch.Tensor
                        ) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """A plain supervised objective on pairs: the bench's from-scratch baseline (``rdiff bench``) trains the
        whole backbone, from random initialisation, with it.

        Default: L1 inside ``roi`` between the ``fast`` enhancement of ``lq`` and ``hq``. Backbones with the
        ``latent`` capability compute the fast path as ``decode(encode(lq))`` (their ``enhance`` may run
        without gradients); the others through ``enhance(lq, path="fast")``, which must then be
        differentiable. By default only the networks of the fast path learn; latent-diffusion backbones
        (``ldm-unet``, ``dit``) override this to also train their denoiser on ``E(lq) → E(hq)``, so that
        their sampling paths are trained too."""
        if "latent" in self.capabilities:
            out = self.decode(self.encode(lq))
        else:
            out = self.enhance(lq, path="fast")
        if torch.is_grad_enabled() and not out.requires_grad:
            raise TypeError(f"{type(self).__name__}.enhance(path='fast') returns no gradients; override "
                            f"supervised_loss() to train this backbone on pairs.")
        weight = roi.to(out.dtype).expand_as(out)
        l1 = ((out - hq).abs() * weight).sum() / weight.sum().clamp(min=1.0)
        return l1, {"l1": float(l1.detach())}

    def finetune_parameters(self) -> list[nn.Parameter]:
        """What ``train.train_base`` fine-tunes in phase 2 besides the adaptor (default: the last stage)."""
        return self.stage_parameters(self.stages[-1])

    @contextmanager
    def base_only(self) -> Iterator[None]:
        """Run the frozen original backbone: every attached adaptor switched off inside the block."""
        with self.adaptor.disabled() if self.adaptor is not None else nullcontext():
            yield

    # --- enhancement ---------------------------------------------------------------------------------------
    #: the dataclass of this backbone's sampling options, the ``options`` its ``enhance`` takes (None: none)
    sampling_options: ClassVar[type | None] = None

    def paths(self) -> tuple[str, ...]:
        """Enhancement paths: ``fast`` (one forward pass) always, ``sample`` for diffusion backbones."""
        return ("fast", "sample") if "sampling" in self.capabilities else ("fast",)

    def path_names(self, **settings: Any) -> list[str]:
        """The names evaluation scores and ``eval.path`` chooses from (default: :meth:`paths`); ``settings``
        as for :meth:`resolve_path`. A sampler may name one variant per option set (``ddim10``, ``ddim20``)."""
        return list(self.paths())

    def resolve_path(self, name: str, **settings: Any) -> tuple[str, Any]:
        """``(path, options)`` for a path or a name of :meth:`path_names`: ``options`` is what this backbone's
        :meth:`enhance` takes, built here from ``settings``, the user's values by name (the run's ``eval``
        keys, ``rdiff enhance --steps/--eta``); unknown names and ``None`` values are ignored. The core passes
        the object on without looking inside. Default: :attr:`sampling_options` filled from the settings
        that name its fields, for every path but ``fast``."""
        paths = self.paths()
        if name not in paths:
            raise UserError(f"backbone '{self.registered_name}' has no enhancement path '{name}'"
                            f"{did_you_mean(name, paths)}; paths: {', '.join(paths)}.")
        if name == "fast" or self.sampling_options is None:
            return name, None
        given = {f.name: settings[f.name] for f in fields(self.sampling_options) if settings.get(f.name) is not None}
        return name, self.sampling_options(**given)

    def tiles_itself(self, path: str) -> bool:
        """Whether ``enhance(path=...)`` takes the whole image and cuts its networks' work into tiles itself
        (keywords ``tile`` and ``overlap``; :func:`rdiff.enhance.tiled_apply` does the cutting and blending).
        Iterative paths need it: separately sampled tiles would drift apart where they overlap. Default:
        no — the image is cut into tiles and each is enhanced on its own."""
        return False

    @abstractmethod
    def enhance(self, lq: torch.Tensor, *, path: str = "fast", options: Any = None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Enhanced images in [0, 1], same shape as ``lq`` (H, W multiples of :attr:`size_multiple`).
        ``options``: from :meth:`resolve_path` (``None``: the path's defaults). ``noise`` fixes the initial
        latent noise of sampling paths (tiles of one image share one field)."""

    # what each capability promises beyond this role: rdiff.capabilities (typing.Protocol classes)

    # --- weights -------------------------------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The networks of this backbone by name; each saves to ``<dir>/<name>/`` in diffusers' layout."""

    def save(self, directory: str | Path) -> None:
        """Save every network as ``config.json`` + safetensors (``save_pretrained``)."""
        from rdiff.checkpoints import save_network

        for name, net in self.networks().items():
            save_network(net, Path(directory) / name)

    def load(self, directory: str | Path) -> None:
        """Load weights saved by :meth:`save` into this (identically configured) backbone."""
        from rdiff.checkpoints import load_network

        for name, net in self.networks().items():
            load_network(net, Path(directory) / name)
