"""No-reference OCT image-quality measures: SNR, CNR and ENL, found without annotations.

The standard OCT measures compare a homogeneous tissue region with the background; here both regions
are found per image from the image itself (``preds``; the clean target is not used):

1. the image is smoothed along the layers (Gaussian σ = 1 px in depth, 4 px across A-scans), so regions
   follow bands rather than individual speckle grains;
2. *signal* = roi pixels whose smoothed value is in the top 5 % (in a B-scan: the RPE / ellipsoid-zone
   complex, the brightest band); *background* = roi pixels in the bottom 10 % (the vitreous, or the
   darkest band of a crop without vitreous).

Then, with μ and σ the mean and standard deviation of the raw pixel values in a region:

- ``snr``  = 20·log10(μ_signal / σ_background)   (dB)
- ``cnr``  = 10·log10(|μ_signal − μ_background| / sqrt(σ_signal² + σ_background²))   (dB)
- ``enl``  = μ_signal² / σ_signal²   (equivalent number of looks of the bright band)

All three are computed on the pixel values as given, i.e. on the log-compressed display for exported
B-scans, as OCT despeckling papers report them; higher is better for all three. Images whose roi is too
small to hold both regions are skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rdiff.metrics import PSNR_CAP, MeanOverImages

SMOOTHING_SIGMA = (1.0, 4.0)  # px along depth, across A-scans
SIGNAL_QUANTILE = 0.95
BACKGROUND_QUANTILE = 0.10
MIN_REGION_PIXELS = 16
ENL_CAP = 1e6  # a perfectly flat band has infinite ENL; this keeps means finite


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(int(round(3 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_along_layers(image: torch.Tensor) -> torch.Tensor:
    """``H×W`` image smoothed by a separable anisotropic Gaussian (reflecting borders)."""
    out = image[None, None]
    for axis, sigma in enumerate(SMOOTHING_SIGMA):
        kernel = _gaussian_kernel(sigma, image.device)
        radius = kernel.numel() // 2
        if axis == 0:
            pad, weight = (0, 0, radius, radius), kernel.view(1, 1, -1, 1)
        else:
            pad, weight = (radius, radius, 0, 0), kernel.view(1, 1, 1, -1)
        if min(out.shape[-2:]) > radius:
            out = F.conv2d(F.pad(out, pad, mode="reflect"), weight)
    return out[0, 0]


def signal_and_background(image: torch.Tensor, roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Boolean masks of the brightest band and the background of an ``H×W`` image inside ``roi``,
    or ``None`` when the roi is too small to hold both."""
    smooth = smooth_along_layers(image)
    values = smooth[roi]
    if values.numel() < MIN_REGION_PIXELS * 10:
        return None
    high = torch.quantile(values, SIGNAL_QUANTILE)
    low = torch.quantile(values, BACKGROUND_QUANTILE)
    signal, background = roi & (smooth >= high), roi & (smooth <= low)
    if signal.sum() < MIN_REGION_PIXELS or background.sum() < MIN_REGION_PIXELS:
        return None
    return signal, background


class _NoReferenceMetric(MeanOverImages):
    """Mean over images of a per-image score of ``preds`` alone; ``target`` is ignored (it may be
    ``None``), so the metric sits in a full-reference metric collection unchanged."""

    def per_image(self, preds: torch.Tensor, target: torch.Tensor | None, roi: torch.Tensor) -> torch.Tensor:
        images = preds.mean(dim=1)  # B×H×W (OCT has one channel; others are averaged)
        scores = []
        for image, mask in zip(images, roi[:, 0] > 0.5):
            regions = signal_and_background(image, mask)
            # NaN: no usable regions in this image, so it is skipped
            scores.append(float("nan") if regions is None else float(self.score(image[regions[0]], image[regions[1]])))
        return torch.tensor(scores, dtype=torch.float64)

    def score(self, signal: torch.Tensor, background: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class OctSNR(_NoReferenceMetric):
    """20·log10(mean of the brightest band / standard deviation of the background), in dB."""

    def score(self, signal, background):
        ratio = signal.mean() / background.std().clamp(min=1e-12)
        return (20 * torch.log10(ratio.clamp(min=1e-12))).clamp(-PSNR_CAP, PSNR_CAP)


class OctCNR(_NoReferenceMetric):
    """10·log10(|μ_signal − μ_background| / sqrt(σ_signal² + σ_background²)), in dB."""

    def score(self, signal, background):
        contrast = (signal.mean() - background.mean()).abs()
        spread = (signal.var() + background.var()).sqrt().clamp(min=1e-12)
        return (10 * torch.log10((contrast / spread).clamp(min=1e-12))).clamp(-PSNR_CAP, PSNR_CAP)


class OctENL(_NoReferenceMetric):
    """Equivalent number of looks of the brightest band: mean² / variance."""

    def score(self, signal, background):
        return (signal.mean() ** 2 / signal.var().clamp(min=1e-30)).clamp(max=ENL_CAP)
