"""Options of the ``oct`` modality (a light module: no numpy-heavy or torch imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rdiff.config import check_mix
from rdiff.errors import UserError

DEGRADATIONS = ("speckle", "noise", "low_signal", "falloff", "blur", "motion")


@dataclass
class OctDegradationConfig:
    """How B-scans are degraded. Pixel values are read as a log-compressed display of OCT intensity:
    1 is the top of the display range and 0 lies ``dynamic_range_db`` below it. Speckle, noise, blur and
    fall-off act on the linear intensity underneath, as they do in the instrument. Ranges ``[low, high]``
    are sampled uniformly for every image."""

    name: Literal["default", "speckle", "noise", "low_signal", "falloff", "blur", "motion"] = "default"  # the default mix, or one degradation alone
    dynamic_range_db: float = 40.0  # dB between display value 0 and display value 1
    looks: int = 1  # independent speckle looks per frame (1: fully developed single-look speckle)
    frames: list[int] = field(default_factory=lambda: [2, 6])  # range of frames averaged into one B-scan (more frames, weaker speckle)
    speckle_grain: float = 0.7  # speckle grain size: σ in px of the field's spatial correlation (0: white speckle)
    noise_floor_db: list[float] = field(default_factory=lambda: [-34.0, -28.0])  # additive detection noise, mean intensity relative to the display top
    signal_loss_db: list[float] = field(default_factory=lambda: [6.0, 12.0])  # low_signal: attenuation of the sample signal
    low_signal_frames: list[int] = field(default_factory=lambda: [1, 2])  # low_signal: frames averaged
    falloff_db: list[float] = field(default_factory=lambda: [4.0, 10.0])  # sensitivity roll-off, dB lost per 256 px of depth
    blur_sigma: list[float] = field(default_factory=lambda: [0.6, 1.6])  # Gaussian PSF σ in px, drawn separately along depth and across A-scans
    motion_px: list[float] = field(default_factory=lambda: [1.0, 3.0])  # largest vertical A-scan shift in px
    mix_probability: dict[str, float] = field(default_factory=lambda: {
        "speckle": 1.0, "blur": 0.5, "falloff": 0.4, "noise": 0.4, "motion": 0.25})  # default mix: chance that each degradation is applied (none drawn: speckle)
    mix_strength: float = 0.6  # default mix: blur, fall-off, noise and motion scaled from none (0) to their full ranges (1)

    def __post_init__(self) -> None:
        for key in ("frames", "low_signal_frames", "noise_floor_db", "signal_loss_db", "falloff_db", "blur_sigma", "motion_px"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                raise UserError(f"config key 'degradation.{key}' must be a range [low, high] with low <= high, not {value}.")
        for key in ("frames", "low_signal_frames"):
            if getattr(self, key)[0] < 1:
                raise UserError(f"config key 'degradation.{key}' must count at least 1 frame, not {getattr(self, key)}.")
        for key in ("signal_loss_db", "falloff_db", "blur_sigma", "motion_px"):
            if getattr(self, key)[0] < 0:
                raise UserError(f"config key 'degradation.{key}' cannot be negative, not {getattr(self, key)}.")
        limits = {"looks": (self.looks >= 1, "at least 1"), "dynamic_range_db": (self.dynamic_range_db > 0, "positive"),
                  "speckle_grain": (self.speckle_grain >= 0, "0 or more"),
                  "mix_strength": (0 <= self.mix_strength <= 1, "between 0 and 1")}
        for key, (ok, rule) in limits.items():
            if not ok:
                raise UserError(f"config key 'degradation.{key}' must be {rule}, not {getattr(self, key)}.")
        check_mix(self.mix_probability, DEGRADATIONS)


@dataclass
class OctConfig:
    """Retinal OCT B-scans: single-channel images whose region of interest is the whole image."""

    degradation: OctDegradationConfig = field(default_factory=OctDegradationConfig)  # the degradation simulator
    phantom_height: int = 256  # height (depth) in px of the embedded phantom B-scans
    phantom_width: int = 256  # width (A-scans) in px of the embedded phantom B-scans
    train_images: int = 8  # embedded phantoms in the train split
    heldout_images: int = 4  # embedded phantoms in the heldout split (different seeds)

    def __post_init__(self) -> None:
        for key, smallest in (("phantom_height", 32), ("phantom_width", 32), ("train_images", 1), ("heldout_images", 1)):
            if getattr(self, key) < smallest:
                raise UserError(f"config key '{key}' must be at least {smallest}, not {getattr(self, key)}.")
