"""A smooth field of colour maps that corrects illumination: the residual adaptor's layer for an ``image``
target, and the latent backbones' phase-1 corrector (``model.corrector``), which learns the same map from
the modality's degraded copies of unpaired images before any pair is seen.

Uneven illumination, colour casts, haze and washed-out contrast change an image slowly across it, and they
are what separates most degraded photographs from their clean versions in PSNR. A residual layer inside
an encoder sees a few pixels; this one has two parts, both predicting a gain and an offset for each
channel, applied pixel by pixel:

- a local field: the image at a quarter of its size, through dilated convolutions with a reach of about
  130 px, upsampled bilinearly (vignetting, a bright or dark side);
- a global term: the whole image's quantiles, mean and spread per channel through a small MLP. Contrast
  loss, haze and casts act on the whole photograph, and only its whole distribution tells them from a
  photograph that is darker or redder by nature. Trained on whole images (``train.adapt_image_size`` at
  the working scale), it took held-out IDRiD from 22.2 dB (the local field alone, on 128-px crops) to
  24.0 dB (3 seeds, with a squared-error loss); on crops, whose statistics are not the whole image's,
  a ridge fit of the same statistics predicted the correction 0.6–0.9 dB worse.

Each channel stays a function of itself: a full colour matrix mixes the red channel, which shows vessels
faintly, into the green one, which shows them best (on held-out IDRiD the matrix scored 22.54 dB / vessel
Dice 0.211 against 22.85 dB / 0.232 per channel). It is zero-initialised (the identity) and residual,
like the other adaptor layers.

The statistics come from pixels brighter than the background only: a fundus photograph's black corners,
which no degradation touches, stay black and do not dilute the cells at the field-of-view border, and the
black canvas whole images are batched on does not count. A backbone that offers an ``image`` target runs
it once over the whole image before tiling its networks, so the result does not depend on the tiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)  # of the cell means, per channel: the image's distribution
BACKGROUND = 0.02  # pixels at or below this value (in [0, 1]) in every channel are background
FACTOR = 4  # the field's cells are FACTOR×FACTOR pixels
DILATIONS = (1, 2, 4, 8, 1)  # 3×3 convolutions at the cell scale: a reach of 16 cells (64 px) each way


class ColourField(nn.Module):
    """``x ↦ g(x)·x + b(x)`` per channel (the correction to add: the output is ``(1 + g)·x + b``) with
    ``g, b`` smooth fields predicted from cell means, cell standard deviations and background coverage,
    plus one gain and offset per channel predicted from the whole image's statistics (its quantiles, mean
    and spread inside the field of view); images in [0, 1], ``B×C×H×W``."""

    def __init__(self, channels: int, width: int = 32, zero_init: bool = True):
        super().__init__()
        self.channels = channels
        layers: list[nn.Module] = []
        inputs = 2 * channels + 1
        for dilation in DILATIONS:
            layers += [nn.Conv2d(inputs, width, 3, padding=dilation, dilation=dilation), nn.SiLU()]
            inputs = width
        layers.append(nn.Conv2d(width, 2 * channels, 1))
        self.net = nn.Sequential(*layers)
        # the global part: contrast loss, haze and a colour cast act on the whole photograph, and only its
        # whole distribution tells them from a photograph that is darker or redder by nature
        self.whole = nn.Sequential(nn.Linear((len(QUANTILES) + 2) * channels, 2 * width), nn.SiLU(),
                                   nn.Linear(2 * width, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2 * channels))
        if zero_init:
            for last in (self.net[-1], self.whole[-1]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % FACTOR, -width % FACTOR
        x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        mask = (x.amax(dim=1, keepdim=True) > BACKGROUND).to(x.dtype)
        mean, std, coverage = cell_statistics(x, mask)
        coefficients = self.net(torch.cat([mean * 2 - 1, std * 4, coverage], dim=1))
        coefficients = coefficients + self.whole(whole_statistics(mean, coverage))[..., None, None]
        coefficients = F.interpolate(coefficients, scale_factor=FACTOR, mode="bilinear", align_corners=False)
        gain, offset = coefficients.chunk(2, dim=1)
        correction = (gain * x + offset) * mask  # the background stays as it is
        return correction[..., :height, :width]


def cell_statistics(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per FACTOR×FACTOR cell of ``x`` (sides multiples of FACTOR): the mean and standard deviation of the
    pixels ``mask`` keeps, and the fraction it keeps."""
    coverage = F.avg_pool2d(mask, FACTOR)
    weight = coverage.clamp_min(1e-3)
    mean = F.avg_pool2d(x * mask, FACTOR) / weight
    std = (F.avg_pool2d(x * x * mask, FACTOR) / weight - mean**2).clamp_min(0).sqrt()
    return mean, std, coverage


def whole_statistics(cell_means: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Per image, ``B × (len(QUANTILES) + 2)·C``: quantiles, mean and spread of the means of the cells that
    lie mostly inside the field of view (cells rather than pixels: the same numbers at a fraction of the
    sorting, and noise averaged out), scaled to about [-1, 1]."""
    rows = []
    for means, cover in zip(cell_means, coverage):
        inside = means[:, cover[0] > 0.5]  # C × N
        if inside.shape[1] < 2:  # an image with (almost) no field of view: nothing to tell
            inside = means.flatten(1)
        quantiles = torch.quantile(inside.float(), torch.tensor(QUANTILES, device=inside.device), dim=1).T
        rows.append(torch.cat([quantiles * 2 - 1, inside.mean(1, keepdim=True) * 2 - 1,
                               inside.std(1, keepdim=True) * 4], dim=1).flatten().to(means.dtype))
    return torch.stack(rows)
