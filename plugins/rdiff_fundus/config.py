"""Options of the fundus modality (a light module: no numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rdiff.errors import UserError

#: cofe-Net's degradation types, three bits (blur, spots, illumination): 001 is illumination alone,
#: 110 spots then blur, 111 all three.
COFE_TYPES = ("001", "010", "011", "100", "101", "110", "111")


@dataclass
class DegradationConfig:
    """How ``degrade`` corrupts a clean photograph (inside the field of view only; the background stays).

    Models: ``default`` a realistic mix (uneven illumination and colour, contrast loss, mild haze, coloured
    spots, mild blur, Poisson-Gaussian noise, JPEG) with sizes relative to the field of view; ``cofe`` the
    cofe-Net model with its published parameters (illumination, spots, blur; pixel sizes given at 512²
    and scaled to the field of view); ``cataract`` the ArcNet/GFE-Net cataract haze; ``contrast`` the
    reference paper's contrast reduction. Compose models with ``extra``: ``name: cofe, extra: [cataract]``.
    """

    name: Literal["default", "cofe", "cataract", "contrast"] = "default"  # the degradation model applied first
    extra: list[Literal["default", "cofe", "cataract", "contrast"]] = field(default_factory=list)  # models applied after `name`, in order
    strength: float = 1.0  # scales the `default` model's effects (0.5 milder, 2 harsher); others stay as published
    cofe_types: list[str] = field(default_factory=lambda: list(COFE_TYPES))  # cofe types to draw from: bits blur, spots, illumination (quote in YAML)
    contrast_factor: float = 0.25  # `contrast`: fraction of the contrast kept inside the field of view

    def __post_init__(self) -> None:
        bad = [code for code in self.cofe_types if code not in COFE_TYPES]
        if bad or not self.cofe_types:
            raise UserError(f"config key 'degradation.cofe_types' must list codes among {', '.join(COFE_TYPES)} "
                            f"(quoted in YAML), not {bad[0] if bad else 'nothing'!r}.")
        if self.strength < 0:
            raise UserError(f"config key 'degradation.strength' must be 0 or more, not {self.strength}.")
        if not 0.0 <= self.contrast_factor <= 1.0:
            raise UserError("config key 'degradation.contrast_factor' must be between 0 and 1, "
                            f"not {self.contrast_factor}.")

    @property
    def names(self) -> list[str]:
        """Every model applied, in order."""
        return [self.name, *self.extra]


@dataclass
class FundusConfig:
    """Colour fundus photographs: field-of-view mask, cofe-style degradations, vessel-aware metrics."""

    crop_to_fov: bool = True  # enhance the FOV's bounding box padded to a square, then paste it back
    metric_erosion: float = 0.015  # metrics leave out a rim of the field of view this fraction of its radius wide
    vessel_sigmas: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])  # vessel_dice's Frangi scales, px
    degradation: DegradationConfig = field(default_factory=DegradationConfig)  # what `degrade` does

    def __post_init__(self) -> None:
        if not 0.0 <= self.metric_erosion < 0.5:
            raise UserError(f"config key 'metric_erosion' must be between 0 and 0.5, not {self.metric_erosion}.")
        if not self.vessel_sigmas or min(self.vessel_sigmas) <= 0:
            raise UserError(f"config key 'vessel_sigmas' must list positive scales, not {self.vessel_sigmas}.")
