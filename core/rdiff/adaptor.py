"""The Adaptor role: a small trainable part injected into a frozen Reconstructor in phase 2."""

from __future__ import annotations

from abc import ABC
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from rdiff.reconstructor import Reconstructor


class Adaptor(nn.Module, ABC):
    """Injects itself into ``backbone`` at construction and holds only its own (trainable) weights.

    Subclasses build their layers in ``__init__`` and hook them into the backbone's
    :meth:`~rdiff.Reconstructor.adaptation_targets`. While :attr:`enabled` is false the backbone must
    behave exactly as the original (that is how phase 2 computes the frozen encoder's latents).
    """

    name: ClassVar[str] = "adaptor"

    def __init__(self, config: Any, backbone: Reconstructor):
        # the backbone capabilities an adaptor needs are declared at registration (``requires``) and
        # checked once, by rdiff.registry.create_adaptor, before this is called
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
