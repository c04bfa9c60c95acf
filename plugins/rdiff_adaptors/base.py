"""What every built-in adaptor shares: one adaptor per backbone, removable again, strict weight loading."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from rdiff.adaptor import Adaptor
from rdiff.errors import UserError
from rdiff.reconstructor import Reconstructor


class DetachableAdaptor(Adaptor):
    """An adaptor that can be removed (:meth:`detach`), leaving its backbone as it was before.

    Subclasses build their layers and hook them into the backbone in :meth:`_attach` and undo that in
    :meth:`_remove_from_backbone`. A backbone hosts one adaptor at a time: attaching a new one detaches the
    previous one, whose hooks would otherwise keep acting on the backbone. If attaching fails (a bad option,
    say), the backbone is left with no adaptor rather than a half-built one.
    """

    def __init__(self, config: Any, backbone: Reconstructor):
        previous = getattr(backbone, "adaptor", None)
        super().__init__(config, backbone)  # attaches itself to the backbone
        if previous is not None and previous is not self and hasattr(previous, "detach"):
            previous.detach()  # leaves backbone.adaptor alone: it already names this adaptor
        try:
            self._attach(config, backbone)
        except BaseException:
            self.detach()
            raise

    @abstractmethod
    def _attach(self, config: Any, backbone: Reconstructor) -> None:
        """Build this adaptor's parts and hook them into ``backbone``."""

    @abstractmethod
    def _remove_from_backbone(self) -> None:
        """Undo whatever :meth:`_attach` did to the backbone (it may have stopped half-way)."""

    def detach(self) -> None:
        """Remove this adaptor from its backbone; the backbone then runs exactly as its base."""
        self._remove_from_backbone()
        if getattr(self.backbone, "adaptor", None) is self:
            self.backbone.attach(None)


def check_keys(adaptor: str, expected: set[str], given: set[str]) -> None:
    """Refuse adaptor weights that do not fit this adaptor exactly, in one sentence."""
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        problem = (f"lack '{missing[0]}'" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                   if missing else
                   f"hold an unknown '{unexpected[0]}'" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
        raise UserError(f"the saved '{adaptor}' adaptor weights {problem}: they were trained for a differently "
                        f"configured backbone or adaptor.")


def detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors ready for safetensors: no autograd history, contiguous, each owning its storage."""
    return {k: v.detach().contiguous().clone() for k, v in state.items()}
