"""Colour fidelity: the mean CIEDE2000 colour difference between output and target, inside the roi."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric


class MeanDeltaE(Metric):
    """Mean ΔE₀₀ (CIEDE2000, sRGB under D65 to CIELAB) over the roi's pixels, averaged over images.

    ΔE ≈ 1 is the smallest difference an observer notices side by side; 0 means identical colours.
    Lower is better. Computed with scikit-image on the CPU (evaluation sets are small)."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, roi: torch.Tensor | None = None) -> None:
        from skimage.color import deltaE_ciede2000, rgb2lab

        preds_np = _as_rgb(preds)
        target_np = _as_rgb(target)
        masks = (np.ones(preds_np.shape[:3], dtype=bool) if roi is None
                 else roi[:, 0].detach().cpu().numpy() > 0.5)
        for pred, clean, mask in zip(preds_np, target_np, masks):
            if not mask.any():
                continue
            difference = deltaE_ciede2000(rgb2lab(clean[mask][None]), rgb2lab(pred[mask][None]))
            self.total += float(difference.mean())
            self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def _as_rgb(batch: torch.Tensor) -> np.ndarray:
    """B×C×H×W tensor in [0, 1] as B×H×W×3 float64 numpy (grey repeated to RGB)."""
    array = batch.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1).astype(np.float64)
    return np.repeat(array, 3, axis=3) if array.shape[3] == 1 else array[..., :3]
