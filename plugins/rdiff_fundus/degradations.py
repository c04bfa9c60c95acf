"""Fundus degradation models. Each is seeded by the ``np.random.Generator`` it is given and returns its
sampled parameters as JSON-safe data, with a ``types`` list naming what it applied among
``illumination, spots, blur, noise, jpeg, haze, contrast`` (results are broken down by these).

Every model works on the FOV's *square frame* — the bounding square of the field of view, background set
to black, padded where the field is clipped — because that is the image the published models were
defined on (cofe-Net crops the FOV, pads to a square and resizes to 512²). Image-wide statistics
(cofe's image mean, ArcNet's contrast mean) therefore mean what they meant there, and sizes scale with
the FOV diameter: ``cofe`` and ``cataract`` keep their published pixel numbers at 512² (and log them in
those units), ``default`` states its sizes as fractions of the diameter.

A model is ``model(frame, roi, rng, options) -> (frame, params)`` on a ``D×D×3`` float32 frame and its
``D×D`` bool FOV mask; the caller pastes the FOV back and leaves the background as it was.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from rdiff_fundus.config import DegradationConfig
from rdiff_fundus.filters import (add_local, blend, clip01, defocus_blur, gaussian_blur, grayscale, jpeg_roundtrip,
                                  masked_mean, odd, squared_distance, truncated_gaussian_blur)

TYPES = ("illumination", "spots", "blur", "noise", "jpeg", "haze", "contrast")

Model = Callable[[np.ndarray, np.ndarray, np.random.Generator, DegradationConfig], tuple[np.ndarray, dict]]

# The side cofe-Net and ArcNet degrade at; their pixel parameters are stated at this size.
PUBLISHED_SIZE = 512

# cofe-Net's halo tints (cyan, yellow-green); its white tint needs a brightness factor below 0.2, which
# its colour jitter never draws.
COFE_HALO_TINTS = ((141 / 255, 238 / 255, 238 / 255), (177 / 255, 195 / 255, 147 / 255))


# --- cofe-Net (Shen et al., IEEE TMI 2021), faithful to its released parameters ----------------------------


def cofe(frame: np.ndarray, roi: np.ndarray, rng: np.random.Generator,
         options: DegradationConfig) -> tuple[np.ndarray, dict]:
    """One of cofe-Net's seven types, drawn uniformly from ``options.cofe_types``: three bits (blur,
    spots, illumination), applied as illumination → spots → blur, clipping after each step."""
    scale = frame.shape[0] / PUBLISHED_SIZE
    code = str(options.cofe_types[int(rng.integers(len(options.cofe_types)))])
    blur_bit, spots_bit, illumination_bit = (bit == "1" for bit in code)
    params: dict[str, Any] = {"type": code, "scale": scale}
    types = []
    image = frame.copy()
    if illumination_bit:
        image, params["illumination"] = _cofe_illumination(image, roi, rng, scale)
        types.append("illumination")
    if spots_bit:
        image, params["spots"] = _cofe_spots(image, rng, scale)
        types.append("spots")
    if blur_bit:
        image, params["blur"] = _cofe_blur(image, rng, scale)
        types.append("blur")
    params["types"] = types
    return image, params


def _cofe_illumination(image, roi, rng, scale):
    image, colour = _cofe_colour_jitter(image, rng)
    image, halo = _cofe_halo(image, rng, scale)
    image, hole = _cofe_dark_hole(image, roi, rng, scale)
    return image, {"colour": colour, "halo": halo, "hole": hole}


def _cofe_colour_jitter(image, rng):
    """torchvision's adjust_brightness, adjust_contrast (towards the frame's mean luma) and
    adjust_saturation (towards each pixel's luma), in that order."""
    brightness, contrast, saturation = rng.uniform(0.7, 1.2), rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)
    blend(image, 0.0, brightness)
    blend(image, float(grayscale(image).mean()), contrast)
    blend(image, grayscale(image), saturation)
    return image, {"brightness": brightness, "contrast": contrast, "saturation": saturation}


def _cofe_halo(image, rng, scale):
    """A ring of leaked light: the annulus between two concentric discs, filled with the frame's mean,
    blurred very widely and added with a cyan or yellow-green tint."""
    size = PUBLISHED_SIZE
    cx = int(rng.integers(size // 2 - size // 8, size // 2 + size // 8, endpoint=True))
    cy = int(rng.integers(size // 2 - size // 8, size // 2 + size // 8, endpoint=True))
    inner_diameter = size * rng.uniform(0.75, 1.0)
    farthest_corner = math.hypot(max(cx, size - cx), max(cy, size - cy))
    outer_weight = rng.uniform(1.0, 2 * int(farthest_corner) / size)
    outer_diameter = size * outer_weight + abs(max(cx - size / 2, cy - size / 2) + size / 2)
    tint_index = int(rng.integers(len(COFE_HALO_TINTS)))
    # The blur spans the gap between the inner disc and the frame's farthest border.
    kernel = int(abs(2 * max(cx, size - cx, cy, size - cy) - inner_diameter))
    sigma = 2 * kernel / 3

    mean = float(image.mean())
    distance2 = squared_distance(image.shape[:2], cy * scale, cx * scale)
    annulus = ((distance2 > (int(inner_diameter / 2) * scale) ** 2)
               & (distance2 <= (int(outer_diameter / 2) * scale) ** 2)).astype(np.float32) * np.float32(mean)
    kernel_px = odd(kernel * scale)
    halo = truncated_gaussian_blur(annulus, (kernel_px, kernel_px), sigma * scale)
    for channel, tint in enumerate(COFE_HALO_TINTS[tint_index]):
        image[..., channel] += np.float32(tint) * halo
    clip01(image)
    return image, {"center": [cx, cy], "inner_diameter": inner_diameter, "outer_diameter": outer_diameter,
                   "tint": ["cyan", "yellow-green"][tint_index], "kernel": odd(kernel), "sigma": sigma,
                   "mean": mean}


def _cofe_dark_hole(image, roi, rng, scale):
    """A large, softly blurred dark disc (under-lit centre) of about −0.28, only on images bright enough."""
    size = PUBLISHED_SIZE
    diameter = int(rng.integers(int(0.4 * size), int(0.7 * size), endpoint=True))
    cx = int(rng.integers(size // 4, 3 * size // 4, endpoint=True))
    cy = int(rng.integers(3 * size // 8, 5 * size // 8, endpoint=True))
    # cofe divides the sum over the whole frame by the number of FOV pixels.
    mean = float(image.sum()) / (3 * max(int(roi.sum()), 1))
    offset = 0.0
    if mean > 0.25:
        base = rng.uniform(-0.262, -0.26)
        offset = rng.uniform(base - 0.06 * mean, base - 0.05 * mean)
    kernel_w = odd(int(rng.integers(int(0.55 * diameter), int(0.75 * diameter), endpoint=True)))
    kernel_h = odd(int(rng.integers(int(0.55 * diameter), int(0.75 * diameter), endpoint=True)))
    sigma = 0.8 * max(kernel_w, kernel_h)  # cofe: 2/3 · 1.2 · the larger kernel (before making it odd)
    if offset != 0.0:
        disc = (squared_distance(image.shape[:2], cy * scale, cx * scale)
                <= (int(diameter / 2) * scale) ** 2).astype(np.float32) * np.float32(offset)
        hole = truncated_gaussian_blur(disc, (odd(kernel_h * scale), odd(kernel_w * scale)), sigma * scale)
        image += hole[..., None]
        clip01(image)
    return image, {"center": [cx, cy], "diameter": diameter, "offset": offset, "image_mean": mean,
                   "kernel": [kernel_w, kernel_h], "sigma": sigma}


def _cofe_spots(image, rng, scale):
    """5–10 grey-white spots: small discs of amplitude 0.07–0.20 (growing with their radius), blurred."""
    size = PUBLISHED_SIZE
    spots = []
    for _ in range(int(rng.integers(5, 10, endpoint=True))):
        radius = int(rng.integers(math.ceil(0.01 * size), int(0.05 * size), endpoint=True))
        cx = int(rng.integers(radius + 1, size - radius - 1, endpoint=True))
        cy = int(rng.integers(radius + 1, size - radius - 1, endpoint=True))
        k = 14 / 25 + 1 - radius / 25
        beta = 0.5 + radius / 25
        amplitude = k * (1 - math.exp(-beta * 0.3 * radius / 25))
        sigma = 10 + 1.6 * radius
        kernel_w = odd(int(rng.integers(int(sigma / 5), int(sigma / 4), endpoint=True)))
        kernel_h = odd(int(rng.integers(int(sigma / 5), int(sigma / 4), endpoint=True)))
        disc_radius = int(radius / 2) * scale
        kernel = (odd(kernel_h * scale), odd(kernel_w * scale))

        def spot(shape, y, x, disc_radius=disc_radius, amplitude=amplitude, kernel=kernel, sigma=sigma):
            disc = (squared_distance(shape, y, x) <= disc_radius**2).astype(np.float32) * np.float32(amplitude)
            return truncated_gaussian_blur(disc, kernel, sigma * scale)

        add_local(image, cy * scale, cx * scale, disc_radius + max(kernel) // 2 + 1, spot)
        spots.append({"center": [cx, cy], "radius": radius, "amplitude": amplitude,
                      "kernel": [kernel_w, kernel_h], "sigma": sigma})
    return image, spots


def _cofe_blur(image, rng, scale):
    """σ 5–15 but a kernel of only σ/3–σ/2 taps (1–7 px): cofe's 'blur' is mild, sometimes none."""
    sigma = rng.uniform(5.0, 15.0)
    kernel_w = odd(int(rng.integers(int(sigma / 3), int(sigma / 2), endpoint=True)))
    kernel_h = odd(int(rng.integers(int(sigma / 3), int(sigma / 2), endpoint=True)))
    image = truncated_gaussian_blur(image, (odd(kernel_h * scale), odd(kernel_w * scale)), sigma * scale)
    return clip01(image), {"sigma": sigma, "kernel": [kernel_w, kernel_h]}


# --- cataract haze (ArcNet / GFE-Net) ---------------------------------------------------------------------


def cataract(frame: np.ndarray, roi: np.ndarray, rng: np.random.Generator,
             options: DegradationConfig) -> tuple[np.ndarray, dict]:
    """ArcNet's cataract simulation: a veil that grows with the distance from a random centre, made of
    the inverted blurred image, mixed as ``0.8·blur + β·veil``; then contrast, brightness and colour."""
    size, scale = PUBLISHED_SIZE, frame.shape[0] / PUBLISHED_SIZE
    shift_x = int(rng.integers(int(-0.3 * size), int(0.3 * size), endpoint=True))
    shift_y = int(rng.integers(int(-0.3 * size), int(0.3 * size), endpoint=True))
    kernel = int(rng.choice([1, 3, 5, 7]))
    sigma = int(rng.integers(10, 30, endpoint=True))
    veil_weight = rng.uniform(0.6, 0.8)
    contrast, brightness, colour = rng.uniform(0.9, 1.3), rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.3)

    centre = ((size / 2 + shift_y) * scale, (size / 2 + shift_x) * scale)
    distance = np.sqrt(squared_distance(frame.shape[:2], *centre))
    distance *= roi
    distance *= np.float32(veil_weight / max(float(distance.max()), 1e-6))  # 0 at the centre, β at the far rim
    image = truncated_gaussian_blur(frame, (odd(kernel * scale), odd(kernel * scale)), sigma * scale)
    brightest = np.array([image[..., c].max() for c in range(image.shape[2])], np.float32)  # per channel
    # 0.8·J + β·d·(max − J) = J·(0.8 − β·d) + β·d·max, per channel.
    veil = distance[..., None] * brightest
    image *= (np.float32(0.8) - distance)[..., None]
    image += veil
    clip01(image)
    # PIL's ImageEnhance: contrast towards the frame's mean luma, brightness, colour towards each pixel's luma.
    blend(image, float(grayscale(image).mean()), contrast)
    blend(image, 0.0, brightness)
    blend(image, grayscale(image), colour)
    return image, {"types": ["haze", "blur"] if kernel > 1 else ["haze"], "center_shift": [shift_x, shift_y],
                   "kernel": kernel, "sigma": sigma, "veil_weight": veil_weight, "contrast": contrast,
                   "brightness": brightness, "colour": colour}


# --- the reference paper's contrast set --------------------------------------------------------------------


def contrast(frame: np.ndarray, roi: np.ndarray, rng: np.random.Generator,
             options: DegradationConfig) -> tuple[np.ndarray, dict]:
    """Contrast reduced to ``options.contrast_factor`` (0.25 in the paper) around the FOV's mean luma.
    Deterministic: ``rng`` is not used."""
    mean_luma = masked_mean(grayscale(frame), roi)
    image = blend(frame.copy(), mean_luma, options.contrast_factor)
    return image, {"types": ["contrast"], "factor": options.contrast_factor, "mean_luma": mean_luma}


# --- the corrected default model ---------------------------------------------------------------------------

# How often each part of the default model fires. The mix leans on what a small model can learn to undo
# (illumination, contrast, colour) and keeps blur and noise mild.
DEFAULT_PROBABILITIES = {"illumination": 0.85, "haze": 0.15, "contrast": 0.6, "spots": 0.25, "blur": 0.4,
                         "noise": 0.8, "jpeg": 0.3}
# Tints of the default halo: cofe's two and a warm white.
DEFAULT_HALO_TINTS = (*COFE_HALO_TINTS, (1.0, 0.9, 0.75))


def default(frame: np.ndarray, roi: np.ndarray, rng: np.random.Generator,
            options: DegradationConfig) -> tuple[np.ndarray, dict]:
    """The corrected model: each part fires with its probability (at least one fires); sizes are
    fractions of the FOV diameter; ``options.strength`` scales every effect size."""
    strength = options.strength
    fired = [name for name, p in DEFAULT_PROBABILITIES.items() if rng.random() < p] or ["illumination"]
    image = frame.copy()
    params: dict[str, Any] = {"strength": strength}
    for name in DEFAULT_PROBABILITIES:  # a fixed physical order: scene and optics, then sensor, then file
        if name in fired:
            image, params[name] = _DEFAULT_PARTS[name](image, roi, rng, strength)
    params["types"] = fired
    return image, params


def _towards_one(value: float, strength: float) -> float:
    """``value`` (a factor where 1 means 'no change') with its deviation from 1 scaled by ``strength``."""
    return 1.0 + strength * (value - 1.0)


def _default_illumination(image, roi, rng, strength):
    """Exposure, colour cast, off-centre vignetting, and sometimes a rim halo and a dark centre."""
    side = image.shape[0]
    radius = side / 2
    gain = _towards_one(rng.uniform(0.65, 1.15), strength)
    cast = [_towards_one(g, strength) for g in rng.uniform(0.92, 1.08, size=3)]
    vignetting = strength * rng.uniform(0.1, 0.45)
    vignette_centre = radius + rng.uniform(-0.2, 0.2, size=2) * side
    params = {"gain": gain, "colour_cast": cast, "vignetting": vignetting,
              "vignette_center": (vignette_centre / side).tolist()}

    field = squared_distance(image.shape[:2], *vignette_centre)
    field *= np.float32(-vignetting / radius**2)
    field += 1.0
    np.clip(field, 0.2, None, out=field)
    image *= field[..., None]
    image *= np.float32(gain) * np.asarray(cast, np.float32)

    if rng.random() < 0.35:  # light leaking in at the rim
        amplitude, start, width = strength * rng.uniform(0.05, 0.2), rng.uniform(0.6, 0.9), rng.uniform(0.04, 0.1)
        tint_index = int(rng.integers(len(DEFAULT_HALO_TINTS)))
        rho = np.sqrt(squared_distance(image.shape[:2], radius, radius))
        rho *= np.float32(-1 / (radius * width))
        rho += np.float32(start / width)
        ring = np.float32(amplitude) / (1.0 + np.exp(rho))  # a logistic step up to the rim
        for channel, tint in enumerate(DEFAULT_HALO_TINTS[tint_index]):
            image[..., channel] += np.float32(tint) * ring
        params["halo"] = {"amplitude": amplitude, "start": start, "width": width,
                          "tint": ["cyan", "yellow-green", "warm-white"][tint_index]}
    if rng.random() < 0.35:  # an under-lit centre
        depth, spread = strength * rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.2)
        centre = radius + rng.uniform(-0.15, 0.15, size=2) * side
        # A separable Gaussian: two 1-D profiles instead of an exponential per pixel.
        axis = np.arange(side, dtype=np.float32)
        scale = np.float32(2 * (spread * side) ** 2)
        profile_y, profile_x = np.exp(-((axis - centre[0]) ** 2) / scale), np.exp(-((axis - centre[1]) ** 2) / scale)
        image -= (np.float32(depth) * np.outer(profile_y, profile_x))[..., None]
        params["hole"] = {"depth": depth, "spread": spread, "center": (centre / side).tolist()}
    return clip01(image), params


def _default_haze(image, roi, rng, strength):
    """A mild cataract-like veil: a blend towards a warm airlight, thicker away from a random centre."""
    side = image.shape[0]
    density = strength * rng.uniform(0.08, 0.25)
    airlight = rng.uniform(0.6, 0.85)
    centre = side / 2 + rng.uniform(-0.3, 0.3, size=2) * side
    veil = np.sqrt(squared_distance(image.shape[:2], *centre))
    veil *= np.float32(0.6 * density / max(float(veil[roi].max()) if roi.any() else 1.0, 1e-6))
    veil += np.float32(0.4 * density)  # the veil's opacity: 0.4·density at its centre, density at the far rim
    np.clip(veil, 0.0, 1.0, out=veil)
    light = np.float32(airlight) * np.asarray([1.0, 0.93, 0.8], np.float32)
    image *= (1 - veil)[..., None]
    image += veil[..., None] * light
    return clip01(image), {"density": density, "airlight": airlight, "center": (centre / side).tolist()}


def _default_contrast(image, roi, rng, strength):
    """Washed-out contrast around the FOV's mean luma and changed saturation."""
    factor = max(0.05, 1.0 - strength * rng.uniform(0.15, 0.55))
    saturation = max(0.0, _towards_one(rng.uniform(0.7, 1.1), strength))
    blend(image, masked_mean(grayscale(image), roi), factor)
    blend(image, grayscale(image), saturation)
    return image, {"factor": factor, "saturation": saturation}


def _default_spots(image, roi, rng, strength):
    """2–6 soft coloured spots (dust or reflections on the optics): mostly bright, sometimes dark."""
    side = image.shape[0]
    spots = []
    for _ in range(int(rng.integers(2, 6, endpoint=True))):
        radius = rng.uniform(0.01, 0.035) * side
        # Uniform over a disc of 0.85 FOV radii, where spots show.
        angle, distance = rng.uniform(0, 2 * math.pi), 0.85 * (side / 2) * math.sqrt(rng.random())
        cy, cx = side / 2 + distance * math.sin(angle), side / 2 + distance * math.cos(angle)
        amplitude = strength * rng.uniform(0.04, 0.15) * (1 if rng.random() < 0.75 else -1)
        hue = rng.uniform(0.5, 1.0, size=3)
        colour = np.float32(amplitude) * (hue / hue.max()).astype(np.float32)
        sigma = radius / 2  # blurred disc, kernel ≈ 6σ

        def spot(shape, y, x, radius=radius, sigma=sigma, colour=colour):
            disc = (squared_distance(shape, y, x) <= radius**2).astype(np.float32)
            return gaussian_blur(disc[..., None], sigma) * colour

        add_local(image, cy, cx, radius + 3 * sigma + 1, spot)
        spots.append({"center": [cy / side, cx / side], "radius": radius / side, "amplitude": amplitude,
                      "colour": (hue / hue.max()).tolist()})
    return image, {"spots": spots}


def _default_blur(image, roi, rng, strength):
    """Half the time a Gaussian blur of σ 0.1–0.5 % of the FOV diameter (0.5–2.5 px at 512²), half the time
    defocus, a disc of radius 0.15–0.8 % (0.8–4 px at 512²): the pretext of phase 1 must show a denoiser
    blur of both shapes and of more than one size, or it learns to undo one kernel only."""
    if rng.random() < 0.5:
        relative_sigma = strength * rng.uniform(0.001, 0.005)
        return clip01(gaussian_blur(image, relative_sigma * image.shape[0])), {"sigma": relative_sigma}
    relative_radius = strength * rng.uniform(0.0015, 0.008)
    return clip01(defocus_blur(image, relative_radius * image.shape[0])), {"defocus_radius": relative_radius}


def _default_noise(image, roi, rng, strength):
    """Poisson–Gaussian sensor noise: variance ``shot·x + read²``."""
    shot = strength**2 * rng.uniform(2e-4, 1.5e-3)
    read = strength * rng.uniform(0.003, 0.012)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    std = image * np.float32(shot)
    std += np.float32(read**2)
    noise *= np.sqrt(std, out=std)
    image += noise
    return clip01(image), {"shot": shot, "read": read}


def _default_jpeg(image, roi, rng, strength):
    """JPEG compression at quality 50–90 (lower with more strength)."""
    quality = int(np.clip(round(100 - strength * (100 - int(rng.integers(50, 90, endpoint=True)))), 5, 100))
    return jpeg_roundtrip(image, quality), {"quality": quality}


_DEFAULT_PARTS = {"illumination": _default_illumination, "haze": _default_haze, "contrast": _default_contrast,
                  "spots": _default_spots, "blur": _default_blur, "noise": _default_noise, "jpeg": _default_jpeg}

MODELS: dict[str, Model] = {"default": default, "cofe": cofe, "cataract": cataract, "contrast": contrast}


def json_safe(value: Any) -> Any:
    """Parameters as plain JSON data: numpy scalars and arrays become numbers and lists, floats rounded
    to 6 decimals so logs stay readable."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value
