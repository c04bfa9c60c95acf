"""A histology-specific metric: how far the stain densities of an output are from the clean slide's."""

from __future__ import annotations

import torch

from rdiff.metrics import MeanOverImages
from rdiff_histology.stains import to_stains_torch


class StainError(MeanOverImages):
    """Mean absolute difference of the haematoxylin, eosin and DAB density maps inside the roi, averaged per
    image (lower is better). PSNR weighs every RGB error alike; this one reads the output the way stain
    quantification does, through the amount of each stain: a nucleus that lost its haematoxylin or a brown
    DAB membrane that turned pale costs more than the same error in the glass around them."""

    higher_is_better = False

    def per_image(self, preds: torch.Tensor, target: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        difference = (to_stains_torch(preds) - to_stains_torch(target)).abs()
        weight = roi.expand_as(difference)
        return (difference * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)
