"""The histology degradation simulator: stain variation, defocus, sensor noise and JPEG, seeded.

Every random number comes from the ``rng`` passed in, so one seed gives one output, and every sampled
value is returned in a JSON-safe dict (logged next to the pairs made from it).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from scipy import ndimage

from rdiff.modality import choose_degradations
from rdiff_histology.config import DEGRADATIONS, HistologyDegradationConfig
from rdiff_histology.stains import to_rgb, to_stains


def degrade_slide(image: np.ndarray, config: HistologyDegradationConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A degraded copy of an ``H×W×3`` image in [0, 1] and the parameters used (with their ``types``)."""
    chosen = choose_degradations(config.name, config.mix_probability, DEGRADATIONS, rng, fallback="stain")
    out = image.astype(np.float32, copy=True)
    params: dict[str, Any] = {"types": chosen}
    for kind in DEGRADATIONS:  # a fixed order, whatever the draw: staining, focus, sensor, compression
        if kind in chosen:
            out, params[kind] = STEPS[kind](out, config, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32), params


def stain_variation(image: np.ndarray, config: HistologyDegradationConfig, rng: np.random.Generator):
    """More or less of each stain, plus a small tint: ``s' = a·s + b`` per stain density (Tellez et al. 2018)."""
    scale = rng.uniform(1 - config.stain_scale, 1 + config.stain_scale, size=3)
    shift = rng.uniform(-config.stain_shift, config.stain_shift, size=3)
    return to_rgb(to_stains(image) * scale + shift), {"scale": _round(scale), "shift": _round(shift)}


def defocus(image: np.ndarray, config: HistologyDegradationConfig, rng: np.random.Generator):
    """An out-of-focus scan: convolution with a uniform disc (the defocus point-spread function)."""
    radius = float(rng.uniform(*config.defocus_radius))
    reach = int(np.ceil(radius))
    y, x = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    disc = (x**2 + y**2 <= radius**2).astype(np.float32)
    disc /= disc.sum()
    blurred = np.stack([ndimage.convolve(image[..., c], disc, mode="reflect") for c in range(image.shape[2])], axis=-1)
    return blurred, {"radius": round(radius, 4)}


def noise(image: np.ndarray, config: HistologyDegradationConfig, rng: np.random.Generator):
    """Gaussian sensor noise, independent per pixel and channel."""
    sigma = float(rng.uniform(*config.noise_sigma))
    return image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32), {"sigma": round(sigma, 5)}


def jpeg(image: np.ndarray, config: HistologyDegradationConfig, rng: np.random.Generator):
    """The scanner's JPEG compression (whole-slide images are stored as JPEG tiles)."""
    from PIL import Image

    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0, {"quality": quality}


STEPS = {"stain": stain_variation, "defocus": defocus, "noise": noise, "jpeg": jpeg}


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]
