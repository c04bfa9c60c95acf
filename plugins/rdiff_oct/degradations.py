"""OCT degradations, simulated on the linear intensity under a log-compressed display.

Pixel values are display values ``d`` in [0, 1]; the intensity they show is
``I = 10 ** ((d - 1) * dynamic_range_db / 10)`` (1 at the top of the display). The acquisition model is

    I_frame = speckle × fall-off × blur(motion(I_clean)) + noise,      B-scan = mean of N frames,

which is the physics of spectral-domain OCT: fully developed speckle multiplies the intensity, with a
gamma distribution of shape L for L independent looks (exponential intensity, Rayleigh amplitude, at
L = 1); averaging N frames with independent speckle gives shape N·L, which is why averaged scans (the
clean images) are smooth; detection noise adds an exponentially distributed intensity per frame; the
sensitivity of the spectrometer rolls off with depth; eye motion shifts A-scans up and down.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from rdiff.modality import choose_degradations
from rdiff_oct.config import DEGRADATIONS, OctDegradationConfig

REFERENCE_DEPTH_PX = 256  # fall-off is given per this many px, so crops and full scans agree


def to_intensity(display: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """Linear intensity (1 = display top) of log-compressed display values."""
    return np.power(10.0, (display.astype(np.float64) - 1.0) * dynamic_range_db / 10.0)


def to_display(intensity: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """Log-compressed display values in [0, 1] of linear intensities (the inverse of :func:`to_intensity`)."""
    decibels = 10.0 * np.log10(np.maximum(intensity, 1e-30))
    return np.clip(1.0 + decibels / dynamic_range_db, 0.0, 1.0)


def speckle_field(shape: tuple[int, int], looks: int, rng: np.random.Generator, grain: float = 0.0) -> np.ndarray:
    """A multiplicative speckle field of mean 1 whose values are gamma-distributed with shape ``looks``.

    Each look is the squared magnitude of a circular complex Gaussian field (so its intensity is
    exponential, its amplitude Rayleigh); ``grain`` > 0 low-passes that field with a Gaussian of σ =
    ``grain`` px, which correlates neighbouring pixels (the speckle grain of a finite resolution cell)
    without changing the marginal distribution. The mean of ``looks`` independent looks is Gamma(looks,
    1/looks): its equivalent number of looks (mean²/variance) is ``looks``.
    """
    looks = int(looks)
    if looks < 1:
        raise ValueError(f"looks must be at least 1, got {looks}")
    field = rng.standard_normal((looks, 2, *shape), dtype=np.float32)
    energy = 1.0
    if grain > 0:
        # wrap mode keeps the field stationary up to the borders (reflection would double the energy there)
        field = ndimage.gaussian_filter(field, sigma=(0, 0, grain, grain), mode="wrap")
        impulse = np.zeros((33, 33), np.float32)
        impulse[16, 16] = 1.0
        energy = float((ndimage.gaussian_filter(impulse, sigma=grain, mode="wrap") ** 2).sum())
    intensity = (field ** 2).sum(axis=1).mean(axis=0)  # |re|² + |im|², averaged over the looks
    return intensity / (2.0 * energy)


def shift_columns(image: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Every column (A-scan) moved down by ``shifts[column]`` px (sub-pixel, edges repeated)."""
    rows, cols = np.meshgrid(np.arange(image.shape[0], dtype=np.float64), np.arange(image.shape[1]), indexing="ij")
    return ndimage.map_coordinates(image, [rows - shifts[None, :], cols], order=1, mode="nearest")


def motion_shifts(width: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Axial eye motion across one B-scan: a smooth random drift plus, half the time, a sudden jump
    (a saccade), scaled so the largest shift is ``amplitude`` px."""
    drift = np.cumsum(rng.normal(0.0, 1.0, width))
    drift = ndimage.gaussian_filter1d(drift, sigma=max(width / 64, 1.0), mode="nearest")
    if rng.random() < 0.5:
        drift += np.where(np.arange(width) >= rng.integers(width // 8, width - width // 8), rng.choice([-1, 1]) * drift.std() * 2, 0.0)
    drift -= drift.mean()
    return drift * (amplitude / max(float(np.abs(drift).max()), 1e-9))


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    low, high = float(bounds[0]), float(bounds[1])
    return float(rng.uniform(low, high)) if high > low else low


def _integer(rng: np.random.Generator, bounds: list[int]) -> int:
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def degrade_bscan(image: np.ndarray, config: OctDegradationConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade one display-valued B-scan (``H×W``) and return it with the sampled parameters."""
    types = choose_degradations(config.name, config.mix_probability, DEGRADATIONS, rng, fallback="speckle")
    # outside the default mix every degradation runs at full strength
    strength = config.mix_strength if config.name == "default" else 1.0
    params: dict[str, Any] = {"types": types, "dynamic_range_db": float(config.dynamic_range_db)}
    height, width = image.shape
    intensity = to_intensity(image, config.dynamic_range_db)

    if "motion" in types:
        amplitude = _uniform(rng, config.motion_px) * strength
        intensity = shift_columns(intensity, motion_shifts(width, amplitude, rng))
        params["motion_px"] = round(amplitude, 4)
    if "blur" in types:
        sigma = (_uniform(rng, config.blur_sigma) * strength, _uniform(rng, config.blur_sigma) * strength)
        intensity = ndimage.gaussian_filter(intensity, sigma=sigma, mode="nearest")
        params["blur_sigma"] = [round(s, 4) for s in sigma]
    if "falloff" in types:
        falloff = _uniform(rng, config.falloff_db) * strength
        depth = np.arange(height, dtype=np.float64)[:, None] / REFERENCE_DEPTH_PX
        intensity = intensity * np.power(10.0, -falloff * depth / 10.0)
        params["falloff_db"] = round(falloff, 4)

    frames = 1
    if "low_signal" in types:  # a weak signal is scanned with few frames and sits close to the noise
        loss = _uniform(rng, config.signal_loss_db)
        intensity = intensity * 10.0 ** (-loss / 10.0)
        frames = _integer(rng, config.low_signal_frames)
        params.update(signal_loss_db=round(loss, 4), frames=frames)
    elif "speckle" in types:
        frames = _integer(rng, config.frames)
        params["frames"] = frames
    if "speckle" in types or "low_signal" in types:
        looks = frames * int(config.looks)
        intensity = intensity * speckle_field((height, width), looks, rng, config.speckle_grain)
        params.update(looks=int(config.looks), speckle_grain=float(config.speckle_grain))
    if "noise" in types or "low_signal" in types:
        floor_db = _uniform(rng, config.noise_floor_db)
        if "low_signal" not in types:
            floor_db += 10.0 * np.log10(max(strength, 1e-6))
        # per frame the noise intensity is exponential; the mean of `frames` frames is Gamma(frames)
        noise = rng.gamma(float(frames), 1.0 / frames, size=(height, width)) * 10.0 ** (floor_db / 10.0)
        intensity = intensity + noise
        params["noise_floor_db"] = round(float(floor_db), 4)
    return to_display(intensity, config.dynamic_range_db).astype(np.float32), params
