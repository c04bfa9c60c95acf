"""Options of the ``histology`` modality (a light module: imported when rdiff lists plugins).

Every field has a default and a trailing comment: rdiff's configuration reference is generated from them,
and ``--set modality_options.<field>=...`` (or a YAML file) sets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rdiff import UserError
from rdiff.config import check_mix

DEGRADATIONS = ("stain", "defocus", "noise", "jpeg")


@dataclass
class HistologyDegradationConfig:
    """How slides are degraded, in the order a slide is made and scanned: staining (the amount of each stain
    varies between labs and batches), focus (thick sections and scanner autofocus), sensor noise, then the
    scanner's JPEG compression. Ranges ``[low, high]`` are sampled uniformly for every image."""

    name: Literal["default", "stain", "defocus", "noise", "jpeg"] = "default"  # the default mix, or one degradation alone
    stain_scale: float = 0.3  # stain: largest relative change of each stain's density (haematoxylin, eosin, DAB)
    stain_shift: float = 0.05  # stain: largest added optical density per stain (a tint that reaches the glass too)
    defocus_radius: list[float] = field(default_factory=lambda: [1.0, 2.5])  # defocus: radius in px of the out-of-focus disc
    noise_sigma: list[float] = field(default_factory=lambda: [0.01, 0.04])  # noise: standard deviation of Gaussian sensor noise
    jpeg_quality: list[int] = field(default_factory=lambda: [15, 50])  # jpeg: Pillow quality of the scanner's compression
    mix_probability: dict[str, float] = field(default_factory=lambda: {
        "stain": 0.8, "defocus": 0.5, "noise": 0.4, "jpeg": 0.4})  # default mix: chance that each degradation is applied (none drawn: stain)

    def __post_init__(self) -> None:
        for key in ("defocus_radius", "noise_sigma", "jpeg_quality"):
            value = getattr(self, key)
            if len(value) != 2 or not 0 <= value[0] <= value[1]:
                raise UserError(f"config key 'degradation.{key}' must be a range [low, high] with 0 <= low <= high, "
                                f"not {value}.")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise UserError(f"config key 'degradation.jpeg_quality' must lie within [1, 100], not {self.jpeg_quality}.")
        if not 0 <= self.stain_scale < 1 or self.stain_shift < 0:
            raise UserError("config keys 'degradation.stain_scale' (in [0, 1)) and 'degradation.stain_shift' "
                            f"(0 or more) are out of range: {self.stain_scale}, {self.stain_shift}.")
        check_mix(self.mix_probability, DEGRADATIONS)


@dataclass
class HistologyConfig:
    """Stained tissue slides (RGB). The region of interest is the whole image, or only the stained tissue."""

    degradation: HistologyDegradationConfig = field(default_factory=HistologyDegradationConfig)  # the degradation simulator
    tissue_roi: bool = False  # score and degrade only stained tissue, leaving glass and lumen out (False: the whole image)
    tissue_density: float = 0.25  # tissue_roi: optical density (summed over R, G, B) above which a pixel is tissue

    def __post_init__(self) -> None:
        if self.tissue_density <= 0:
            raise UserError(f"config key 'tissue_density' must be positive, not {self.tissue_density}.")
