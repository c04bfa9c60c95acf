"""The paper's enhancement adaptor: a small layer on the residual branch of chosen res-blocks.

For every :class:`~rdiff.AdaptationTarget` (the last module of a block's residual branch, e.g. a diffusers
``ResnetBlock2D``'s ``conv2``) a forward hook turns the branch's output ``h`` into ``h + layer(h)`` with
``layer = GroupNorm → SiLU → 3×3 conv (C→C)`` (``LayerNorm → SiLU → Linear`` for token targets), i.e. the
adaptation happens before the block's skip addition, as in the paper. The layers live in the adaptor, never
in the backbone, so the backbone's ``state_dict`` is untouched and the adaptor's weights save on their own,
keyed by the targets' stable names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rdiff.errors import UserError
from rdiff_layers import norm_layer
from rdiff.plugins import declarations
from rdiff.reconstructor import AdaptationTarget, Reconstructor

from .base import DetachableAdaptor, check_keys, detached
from rdiff_layers.colour_field import ColourField

# Where the paper put its adaptors: every res-block of the autoencoder's encoder (the adapted encoder E')
# and the encoder-side and middle res-blocks of the denoiser; and, where a backbone offers one, the image
# itself before its networks (group ``image``: a ColourField, see rdiff_layers/colour_field.py).
PAPER_GROUPS = frozenset({"encoder", "denoiser_down", "denoiser_mid", "image"})


class ResidualLayer(nn.Module):
    """``norm → SiLU → proj`` with ``proj`` a 3×3 conv (image features) or a linear map (tokens), C→C."""

    def __init__(self, channels: int, layout: str = "BCHW", norm_groups: int = 32, zero_init: bool = True,
                 norm: str = "group"):
        super().__init__()
        if layout == "BCHW":
            self.norm: nn.Module = norm_layer(norm, channels, norm_groups)
            self.proj: nn.Module = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        elif layout == "BLC":
            self.norm = nn.LayerNorm(channels, eps=1e-6)
            self.proj = nn.Linear(channels, channels)
        else:
            raise ValueError(f"unknown adaptation target layout {layout!r} (expected 'BCHW' or 'BLC')")
        self.act = nn.SiLU()
        if zero_init:
            # f(h) = 0 at start: the adapted network equals its base bit for bit until the first update
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.norm(hidden)))


def _layer(target: AdaptationTarget, norm_groups: int, zero_init: bool, norm: str) -> nn.Module:
    if target.group == "image":
        return ColourField(target.channels, zero_init=zero_init)
    return ResidualLayer(target.channels, target.layout, norm_groups, zero_init,
                         target.norm if norm == "auto" else norm)


def _module_key(name: str) -> str:
    # nn.ModuleDict keys cannot hold dots; the targets' dotted names are kept for saving (named_state)
    return name.replace(".", "/")


class ResidualBranches(nn.Module):
    """One :class:`ResidualLayer` per target, hooked so that ``target.module``'s output ``h`` becomes
    ``h + layer(h)`` while ``is_active()`` is true (and stays ``h`` otherwise).

    Shared by the ``residual`` adaptor and by ``controlnet`` (which uses it for the autoencoder's encoder).
    """

    def __init__(self, targets: Sequence[AdaptationTarget], *, is_active: Callable[[], bool],
                 norm_groups: int = 32, zero_init: bool = True, norm: str = "auto"):
        super().__init__()
        names = [t.name for t in targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adaptation target names must be unique; '{duplicates[0]}' appears twice")
        self.names = names
        # "auto": each layer normalises as the block it joins does (AdaptationTarget.norm), so an adaptor on a
        # backbone without spatial statistics keeps it tile-invariant
        self.layers = nn.ModuleDict({_module_key(t.name): _layer(t, norm_groups, zero_init, norm) for t in targets})
        self._is_active = is_active
        self._handles = [t.module.register_forward_hook(self._hook(self.layers[_module_key(t.name)]))
                         for t in targets]

    def _hook(self, layer: ResidualLayer) -> Callable[..., Any]:
        def add_branch(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not self._is_active():
                return None  # None keeps the module's own output: the exact base computation
            return output + layer(output)

        return add_branch

    def remove_hooks(self) -> None:
        """Unhook every layer from the backbone (the layers and their weights stay in this module)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def named_state(self) -> dict[str, torch.Tensor]:
        """The weights keyed ``<target name>.<parameter>``, e.g. ``...resnets.0.conv2.proj.weight``."""
        return {f"{name}.{key}": value for name in self.names
                for key, value in self.layers[_module_key(name)].state_dict().items()}

    def load_named_state(self, state: dict[str, torch.Tensor], adaptor: str) -> None:
        check_keys(adaptor, set(self.named_state()), set(state))
        for name in self.names:
            layer = self.layers[_module_key(name)]
            layer.load_state_dict({key: state[f"{name}.{key}"] for key in layer.state_dict()}, strict=True)


class ResidualAdaptor(DetachableAdaptor):
    """The paper's enhancement adaptor (see the module docstring); ``requires`` nothing."""

    name = "residual"
    requires = frozenset(declarations("rdiff_adaptors")["adaptors"]["residual"]["requires"])  # its plugin.yaml

    def _attach(self, config: Any, backbone: Reconstructor) -> None:
        offered = backbone.adaptation_targets()
        wanted = PAPER_GROUPS if config.position == "paper" else None
        targets = [t for t in offered if (wanted is None or t.group in wanted) and (config.image or t.group != "image")]
        if not targets:
            groups = sorted({t.group for t in offered})
            raise UserError(f"adaptor 'residual' with position '{config.position}' finds no res-block in backbone "
                            f"'{backbone.registered_name}' (its adaptation target groups: {', '.join(groups) or 'none'}).")
        self.branches = ResidualBranches(targets, is_active=lambda: self.enabled,
                                         norm_groups=config.norm_groups, zero_init=config.init == "zero",
                                         norm=config.norm)

    @property
    def target_names(self) -> list[str]:
        """The adapted targets' names, in the backbone's order."""
        return list(self.branches.names)

    def _remove_from_backbone(self) -> None:
        branches = getattr(self, "branches", None)  # absent when attaching stopped before building them
        if branches is not None:
            branches.remove_hooks()

    def adaptor_state_dict(self) -> dict[str, torch.Tensor]:
        return detached(self.branches.named_state())

    def load_adaptor_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.branches.load_named_state(state, self.name)

