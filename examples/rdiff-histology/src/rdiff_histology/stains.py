"""Colour deconvolution: RGB <-> stain densities (haematoxylin, eosin, DAB), in NumPy and in torch.

Light passing through a slide is absorbed by each stain in proportion to its amount (Beer-Lambert), so the
optical density ``OD = -ln(I)`` of a pixel is a linear mix of the stains' absorption vectors. Inverting
that mix gives one density map per stain (Ruifrok and Johnston, Anal. Quant. Cytol. Histol. 2001; the
vectors are scikit-image's ``rgb_from_hed``). Unlike ``skimage.color.rgb2hed`` nothing is clipped here, so
``to_rgb(to_stains(x)) == x`` up to rounding and a stain change touches nothing else.
"""

from __future__ import annotations

import numpy as np

# rows: the RGB absorption of haematoxylin, eosin and DAB
RGB_FROM_STAINS = np.array([[0.65, 0.70, 0.29],
                            [0.07, 0.99, 0.11],
                            [0.27, 0.57, 0.78]], dtype=np.float64)
STAINS_FROM_RGB = np.linalg.inv(RGB_FROM_STAINS)
STAIN_NAMES = ("haematoxylin", "eosin", "dab")
DARKEST = 1.0 / 255.0  # intensities are floored here: an 8-bit 0 means "at least this dark"


def to_stains(image: np.ndarray) -> np.ndarray:
    """``H×W×3`` RGB in [0, 1] -> ``H×W×3`` stain densities."""
    density = -np.log(np.clip(image.astype(np.float64), DARKEST, 1.0))
    return density @ STAINS_FROM_RGB


def to_rgb(stains: np.ndarray) -> np.ndarray:
    """Stain densities -> RGB in [0, 1] (float32)."""
    return np.clip(np.exp(-(stains @ RGB_FROM_STAINS)), 0.0, 1.0).astype(np.float32)


def optical_density(image: np.ndarray) -> np.ndarray:
    """``H×W`` optical density summed over R, G and B: 0 on clear glass, large in dense tissue."""
    return -np.log(np.clip(image.astype(np.float64), DARKEST, 1.0)).sum(axis=-1)


def to_stains_torch(images):
    """``B×3×H×W`` RGB tensors in [0, 1] -> ``B×3×H×W`` stain densities (differentiable)."""
    import torch

    matrix = torch.as_tensor(STAINS_FROM_RGB, dtype=images.dtype, device=images.device)
    density = -torch.log(images.clamp(DARKEST, 1.0))
    return torch.einsum("bchw,cs->bshw", density, matrix)
