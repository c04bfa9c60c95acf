"""Colour fidelity: the mean CIEDE2000 colour difference between output and target, inside the roi."""

from __future__ import annotations

import numpy as np
import torch

from rdiff.metrics import MeanOverImages


class MeanDeltaE(MeanOverImages):
    """Mean ΔE₀₀ (CIEDE2000, sRGB under D65 to CIELAB) over the roi's pixels, averaged over images.

    ΔE ≈ 1 is the smallest difference an observer notices side by side; 0 means identical colours.
    Lower is better. Computed with scikit-image on the CPU (evaluation sets are small)."""

    higher_is_better = False

    def per_image(self, preds: torch.Tensor, target: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        from skimage.color import deltaE_ciede2000, rgb2lab

        scores = []
        for pred, clean, mask in zip(_as_rgb(preds), _as_rgb(target), roi[:, 0].detach().cpu().numpy() > 0.5):
            if not mask.any():
                scores.append(float("nan"))  # no pixel to score: the image is left out of the mean
                continue
            scores.append(float(deltaE_ciede2000(rgb2lab(clean[mask][None]), rgb2lab(pred[mask][None])).mean()))
        return torch.tensor(scores, dtype=torch.float64)


def _as_rgb(batch: torch.Tensor) -> np.ndarray:
    """B×C×H×W tensor in [0, 1] as B×H×W×3 float64 numpy (grey repeated to RGB)."""
    array = batch.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1).astype(np.float64)
    return np.repeat(array, 3, axis=3) if array.shape[3] == 1 else array[..., :3]
