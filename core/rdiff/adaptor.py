"""The Adaptor role: a small trainable part injected into a frozen Reconstructor in phase 2."""

from __future__ import annotations

from abc import ABC
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from rdiff.errors import UserError
from rdiff.reconstructor import Reconstructor


def check_requires(name: str, requires: frozenset[str] | tuple[str, ...], backbone: Reconstructor) -> None:
    """Refuse a backbone that lacks a capability the adaptor ``name`` requires, in one sentence naming both.
    The one check: :func:`rdiff.create_adaptor` makes it before anything is built, and :class:`Adaptor` on
    construction, for code that builds an adaptor class directly."""
    missing = sorted(set(requires) - set(backbone.capabilities))
    if missing:
        raise UserError(f"adaptor '{name}' needs a backbone with {', '.join(missing)}; "
                        f"'{backbone.registered_name}' offers {', '.join(sorted(backbone.capabilities)) or 'nothing'}.")


class Adaptor(nn.Module, ABC):
    """Injects itself into ``backbone`` at construction and holds only its own (trainable) weights.

    Subclasses build their layers in ``__init__`` and hook them into the backbone's
    :meth:`~rdiff.Reconstructor.adaptation_targets`. While :attr:`enabled` is false the backbone must
    behave exactly as the original (that is how phase 2 computes the frozen encoder's latents).
    """

    requires: ClassVar[frozenset[str]] = frozenset()  # backbone capabilities this adaptor needs
    name: ClassVar[str] = "adaptor"

    def __init__(self, config: Any, backbone: Reconstructor):
        check_requires(self.name, self.requires, backbone)  # also for code that builds an adaptor directly
        super().__init__()
        self.config = config
        self.enabled = True
        object.__setattr__(self, "backbone", backbone)  # not a submodule: the base saves on its own
        backbone.attach(self)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The original backbone inside the block."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What phase 2 trains (default: every parameter of this module)."""
        return list(self.parameters())

    def adaptor_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights saved to ``adapt/adaptor.safetensors``."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def load_adaptor_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)
