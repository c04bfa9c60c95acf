"""Full-reference metrics computed inside a region of interest, as torchmetrics metrics.

Each metric averages per image (so one large image does not outweigh many small ones) and reduces
across processes the torchmetrics way (sum of per-image scores and a count). ``update(preds, target,
roi)`` takes ``B×C×H×W`` tensors in [0, 1] and a ``B×1×H×W`` roi (or ``None`` for the whole image).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.image import structural_similarity_index_measure

PSNR_CAP = 100.0  # identical images score this instead of infinity, so means stay finite


def metric_collection(metrics: dict[str, Metric]) -> MetricCollection:
    """A modality's metrics, reported in the order given (torchmetrics alone sorts them by name), never merged into
    compute groups (torchmetrics would merge metrics whose states happen to be equal after the first batch)."""
    collection = MetricCollection(metrics, compute_groups=False)
    collection._modules = {name: collection._modules[name] for name in metrics}  # nn.Module's table, reordered
    return collection


class MeanOverImages(Metric):
    """Base for per-image metrics: subclasses implement ``per_image(preds, target, roi) -> B scores``;
    a NaN score skips that image (e.g. a no-reference metric that finds no usable region). Sum and count
    states, so the mean reduces correctly across processes. ``target`` may be ``None`` for a
    no-reference metric; ``roi`` defaults to the whole image."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor | None = None, roi: torch.Tensor | None = None) -> None:
        if roi is None:
            roi = torch.ones_like(preds[:, :1])
        target = None if target is None else target.float()
        scores = self.per_image(preds.float(), target, roi.float()).double()
        keep = ~torch.isnan(scores)  # NaN means "no score for this image"
        self.total += scores[keep].sum()
        self.count += int(keep.sum())

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()

    def per_image(self, preds, target, roi) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class MaskedPSNR(MeanOverImages):
    """PSNR (data range 1) over the pixels inside the roi; identical images score ``PSNR_CAP``."""

    def per_image(self, preds, target, roi):
        weight = roi.expand_as(target)
        mse = ((preds - target) ** 2 * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)
        return (10 * torch.log10(1.0 / mse.clamp(min=1e-30))).clamp(max=PSNR_CAP)


class MaskedSSIM(MeanOverImages):
    """SSIM (Gaussian window 11, σ 1.5) averaged over the roi's pixels, from torchmetrics' SSIM map."""

    def per_image(self, preds, target, roi):
        _, ssim_map = structural_similarity_index_measure(
            preds, target, data_range=1.0, reduction="none", return_full_image=True)
        weight = roi.expand_as(ssim_map)
        return (ssim_map * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)
