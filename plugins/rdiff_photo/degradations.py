"""A camera-pipeline degradation model for sRGB photographs.

The image is decoded to linear light, where physics happens: the lens blurs (Gaussian, or a defocus
disc), a short exposure scales the light, a wrong white balance multiplies the channels by unequal gains,
the sensor counts photons (Poisson) and adds read noise (Gaussian). It is then encoded back to sRGB,
optionally through a darker tone curve (``gamma``), and saved as JPEG last, as a camera does.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from scipy import ndimage, signal

from rdiff.modality import choose_degradations
from rdiff_photo.config import DEGRADATIONS, PhotoDegradationConfig

LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights of linear R, G, B


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """Linear light (float32) of sRGB values in [0, 1] (IEC 61966-2-1)."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    out = image / np.float32(12.92)
    curve = image > 0.04045
    out[curve] = ((image[curve] + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4)
    return out


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """sRGB values (float32) in [0, 1] of linear light (clipped to [0, 1] first)."""
    linear = np.clip(np.asarray(linear, np.float32), 0.0, 1.0)
    out = linear * np.float32(12.92)
    curve = linear > 0.0031308
    out[curve] = np.float32(1.055) * linear[curve] ** np.float32(1 / 2.4) - np.float32(0.055)
    return out


def photon_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of mean ``expected``: drawn exactly where few photons are expected, by the normal
    approximation N(λ, λ) where λ > 30 (its skewness is below 0.2 there; several times faster)."""
    counts = np.empty_like(expected)
    few = expected <= 30.0
    counts[few] = rng.poisson(expected[few])
    many = ~few
    counts[many] = expected[many] + np.sqrt(expected[many]) * rng.standard_normal(int(many.sum()), dtype=np.float32)
    return counts


def defocus_kernel(radius: float) -> np.ndarray:
    """A normalised disc (the point-spread function of defocus), anti-aliased at its rim."""
    half = int(np.ceil(radius)) + 1
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return kernel / kernel.sum()


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (H×W×3 in [0, 1]) saved as a JPEG of ``quality`` in memory and decoded again."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / np.float32(255.0)


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    low, high = float(bounds[0]), float(bounds[1])
    return float(rng.uniform(low, high)) if high > low else low


def degrade_photo(image: np.ndarray, config: PhotoDegradationConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade one ``H×W×3`` sRGB image in [0, 1]; returns it (float32) and the sampled parameters."""
    types = choose_degradations(config.name, config.mix_probability, DEGRADATIONS, rng, fallback="lowlight")
    # the default mix keeps noise, blur and JPEG mild; a named degradation runs at full strength
    strength = config.mix_strength if config.name == "default" else 1.0
    params: dict[str, Any] = {"types": types}
    linear = srgb_to_linear(image)

    if "blur" in types:
        if rng.random() < 0.5:
            sigma = _uniform(rng, config.blur_sigma) * strength
            linear = ndimage.gaussian_filter(linear, sigma=(sigma, sigma, 0), mode="reflect")
            params["blur"] = {"kind": "gaussian", "sigma": round(sigma, 4)}
        else:
            radius = _uniform(rng, config.defocus_radius) * strength
            kernel = defocus_kernel(radius)
            half = kernel.shape[0] // 2
            padded = np.pad(linear, ((half, half), (half, half), (0, 0)), mode="reflect")
            linear = signal.fftconvolve(padded, kernel[..., None], mode="valid", axes=(0, 1)).astype(np.float32)
            params["blur"] = {"kind": "defocus", "radius": round(radius, 4)}
    if "lowlight" in types:
        exposure = _uniform(rng, config.exposure)
        linear = linear * np.float32(exposure)
        params["exposure"] = round(exposure, 4)
    if "color" in types:
        cast, tint = rng.uniform(-config.cast, config.cast), rng.uniform(-config.tint, config.tint)
        gains = np.array([1.0 + cast, 1.0 + tint, 1.0 - cast])
        gains /= LUMINANCE @ gains  # a colour shift, not a brightness change
        linear = linear * gains.astype(np.float32)
        params["color_gains"] = [round(float(g), 4) for g in gains]
    if "noise" in types:
        # the mix scales the noise σ by `strength`: σ² of shot noise goes as 1/photons
        photons = _uniform(rng, config.photons) / max(strength, 1e-6) ** 2
        read = _uniform(rng, config.read_noise) * strength
        counts = photon_counts(np.clip(linear, 0.0, None) * np.float32(photons), rng)
        linear = counts / np.float32(photons) + np.float32(read) * rng.standard_normal(linear.shape, dtype=np.float32)
        params.update(photons=round(photons, 2), read_noise=round(read, 5))
    out = linear_to_srgb(linear)
    if "lowlight" in types:
        gamma = _uniform(rng, config.gamma)
        out = out ** np.float32(gamma)
        params["gamma"] = round(gamma, 4)
    if "jpeg" in types:
        low, high = int(config.jpeg_quality[0]), int(config.jpeg_quality[1])
        quality = int(round(100 - strength * (100 - int(rng.integers(low, high + 1)))))
        out = jpeg_roundtrip(out, quality)
        params["jpeg_quality"] = quality
    return np.clip(out, 0.0, 1.0).astype(np.float32), params
