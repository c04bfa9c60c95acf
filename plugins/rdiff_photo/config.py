"""Options of the ``photo`` modality (a light module: no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rdiff.config import check_mix
from rdiff.errors import UserError

DEGRADATIONS = ("lowlight", "color", "noise", "blur", "jpeg")


@dataclass
class PhotoDegradationConfig:
    """How photographs are degraded, in the order of a camera: optics (blur), exposure (low light), white
    balance (colour cast), sensor (Poisson–Gaussian noise), tone curve, then JPEG. Ranges ``[low, high]``
    are sampled uniformly for every image."""

    name: Literal["default", "lowlight", "color", "noise", "blur", "jpeg"] = "default"  # the default mix, or one degradation alone
    exposure: list[float] = field(default_factory=lambda: [0.2, 0.6])  # lowlight: factor on the linear light (0.25 is two stops under)
    gamma: list[float] = field(default_factory=lambda: [1.0, 1.3])  # lowlight: extra tone-curve exponent (>1 darkens mid-tones)
    cast: float = 0.25  # color: largest white-balance error, as a relative gain between red and blue
    tint: float = 0.1  # color: largest green–magenta gain error
    photons: list[float] = field(default_factory=lambda: [40.0, 400.0])  # noise: photons at full scale per pixel (fewer, noisier)
    read_noise: list[float] = field(default_factory=lambda: [0.002, 0.01])  # noise: read-noise σ in linear units
    blur_sigma: list[float] = field(default_factory=lambda: [0.8, 2.0])  # blur: Gaussian σ in px
    defocus_radius: list[float] = field(default_factory=lambda: [1.0, 3.0])  # blur: radius in px of a defocus disc (used half the time)
    jpeg_quality: list[int] = field(default_factory=lambda: [10, 40])  # jpeg: Pillow quality
    mix_probability: dict[str, float] = field(default_factory=lambda: {
        "lowlight": 0.8, "color": 0.6, "noise": 0.5, "blur": 0.3, "jpeg": 0.2})  # default mix: chance that each degradation is applied (none drawn: lowlight)
    mix_strength: float = 0.5  # default mix: noise, blur and JPEG scaled from none (0) to their full ranges (1)

    def __post_init__(self) -> None:
        for key in ("exposure", "gamma", "photons", "read_noise", "blur_sigma", "defocus_radius", "jpeg_quality"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1] or value[0] < 0:
                raise UserError(f"config key 'degradation.{key}' must be a range [low, high] with 0 <= low <= high, not {value}.")
        checks = {"exposure": (0 < self.exposure[0] and self.exposure[1] <= 1, "within (0, 1]"),
                  "gamma": (self.gamma[0] > 0, "positive"), "photons": (self.photons[0] > 0, "positive"),
                  "jpeg_quality": (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100, "within [1, 100]"),
                  "cast": (0 <= self.cast < 1, "in [0, 1)"), "tint": (0 <= self.tint < 1, "in [0, 1)"),
                  "mix_strength": (0 <= self.mix_strength <= 1, "between 0 and 1")}
        for key, (ok, rule) in checks.items():
            if not ok:
                raise UserError(f"config key 'degradation.{key}' must be {rule}, not {getattr(self, key)}.")
        check_mix(self.mix_probability, DEGRADATIONS)


@dataclass
class PhotoConfig:
    """Natural RGB photographs shipped with scikit-image; the region of interest is the whole image."""

    degradation: PhotoDegradationConfig = field(default_factory=PhotoDegradationConfig)  # the degradation simulator
    longest_side: int = 320  # embedded photographs are resized so their longest side is this many px

    def __post_init__(self) -> None:
        if self.longest_side < 64:
            raise UserError(f"config key 'longest_side' must be at least 64 px, not {self.longest_side}.")
