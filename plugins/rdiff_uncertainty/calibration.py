"""Turning the sampler's spread into intervals with a stated risk (pure numpy; no torch here).

A pixel's interval is ``[mean − λ·(spread + FLOOR), mean + λ·(spread + FLOOR)]`` for every channel, where
``mean`` and ``spread`` come from K samples (:mod:`rdiff_uncertainty.sampling`). Calibration picks the
scale λ on pairs the model was not trained on so that the *fraction of region-of-interest pixel values
outside their interval* (the risk of one image, between 0 and 1) is controlled:

- ``delta`` not given: **conformal risk control** (Angelopoulos et al., 2022). λ̂ is the smallest λ with
  ``n/(n+1)·R̂(λ) + 1/(n+1) ≤ α``, where R̂ is the mean risk over the n calibration images. Guarantee: the
  expected risk of a new image, exchangeable with the calibration images, is at most α.
- ``delta`` given: **risk-controlling prediction sets** (Bates et al., 2021, as im2im-uq calibrates): λ̂
  is the smallest λ whose Hoeffding–Bentkus upper confidence bound of the mean risk is at most α.
  Guarantee: with probability at least 1 − δ over the calibration images, the expected risk is at most α.

Either way the guarantee is *marginal* and *pixel-wise*: it counts pixels on average over images, it says
nothing about one given pixel, one lesion or one image, and it holds only for images like the calibration
images (same device, same degradation family).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rdiff.errors import UserError

#: added to every pixel's spread: where all K samples agree, the interval still has a width (one 8-bit grey
#: level: quantisation alone is that uncertain), so a pixel the sampler never moves can still be covered
FLOOR = 1.0 / 255.0
CALIBRATION_FILE = "calibration.json"  # in RUN/adapt/


def scores(mean: np.ndarray, spread: np.ndarray, clean: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """The sorted normalised errors ``|clean − mean| / (spread + FLOOR)`` of every roi pixel value (each
    channel counts): a pixel value lies inside its interval exactly when its score is at most λ."""
    inside = np.asarray(roi, dtype=bool)
    error = np.abs(np.asarray(clean, np.float32) - np.asarray(mean, np.float32))[inside]  # P×C
    width = (np.asarray(spread, np.float32)[inside] + FLOOR)[:, None]
    return np.sort((error / width).ravel())


def risk(sorted_scores: np.ndarray, scale: float) -> float:
    """The fraction of one image's roi pixel values outside their interval at ``scale`` (0 for an empty roi)."""
    if sorted_scores.size == 0:
        return 0.0
    return 1.0 - np.searchsorted(sorted_scores, scale, side="right") / sorted_scores.size


def mean_risk(per_image: list[np.ndarray], scale: float) -> float:
    return float(np.mean([risk(s, scale) for s in per_image]))


def hoeffding_bentkus_bound(mean: float, n: int, delta: float) -> float:
    """An upper confidence bound, at level 1 − δ, of the mean of n losses in [0, 1] whose average is
    ``mean``: the largest μ that the smaller of Hoeffding's and Bentkus' tail bounds does not reject."""
    from scipy.optimize import brentq
    from scipy.stats import binom

    def log_tail(mu: float) -> float:  # log P(average ≤ mean) for losses of true mean mu, bounded
        x = min(mean, mu)
        kl = (x * math.log(x / mu) if x > 0 else 0.0) + ((1 - x) * math.log((1 - x) / (1 - mu)) if x < 1 else 0.0)
        bentkus = math.log(max(float(binom.cdf(math.floor(n * mean), n, mu)), 1e-300)) + 1.0
        return min(-n * kl, bentkus) - math.log(delta)

    start, top = max(mean, 1e-12), 1.0 - 1e-10
    if log_tail(top) > 0:  # not even a mean of 1 is rejected
        return 1.0
    if log_tail(start) <= 0:
        return mean
    return float(brentq(log_tail, start, top))


def bound(per_image: list[np.ndarray], scale: float, delta: float | None) -> float:
    """What calibration requires to be at most α at ``scale`` (see the module docstring)."""
    n = len(per_image)
    average = mean_risk(per_image, scale)
    if delta is None:
        return n / (n + 1) * average + 1 / (n + 1)
    return hoeffding_bentkus_bound(average, n, delta)


def fit_scale(per_image: list[np.ndarray], alpha: float, delta: float | None = None) -> float:
    """The smallest λ whose :func:`bound` is at most ``alpha`` (bisection: the risk only falls as λ grows).

    Raises :class:`UserError` when no λ attains it: with an unbounded λ the risk is 0, so conformal risk
    control needs ``1/(n+1) ≤ α``, i.e. at least ``1/α − 1`` calibration images."""
    check_levels(alpha, delta)
    n = len(per_image)
    largest = max((float(s[-1]) for s in per_image if s.size), default=0.0)
    if n == 0 or bound(per_image, largest, delta) > alpha:
        why = (f"conformal risk control needs at least {math.ceil(1 / alpha - 1)}" if delta is None
               else f"at delta {delta} the confidence bound needs more")
        raise UserError(f"{n} calibration image(s) cannot attain a risk of {alpha} ({why}); give more calibration "
                        f"pairs (rdiff calibrate --pairs N).")
    low, high = 0.0, largest
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if bound(per_image, middle, delta) <= alpha else (middle, high)
    return high


def check_levels(alpha: float, delta: float | None) -> None:
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (the tolerated fraction of pixels outside), not {alpha}.")
    if delta is not None and not 0 < delta < 1:
        raise UserError(f"delta must be between 0 and 1 (the tolerated chance that calibration fails), not {delta}.")


@dataclass
class Calibration:
    """What ``RUN/adapt/calibration.json`` holds: the scale and everything it is valid for."""

    scale: float  # λ: interval half-width = scale × (spread + floor)
    alpha: float  # tolerated expected fraction of roi pixel values outside their interval
    delta: float | None  # None: conformal risk control; else the RCPS confidence level 1 − delta
    samples: int  # K the spread was computed from (a spread of another K is another quantity)
    path: str  # the enhancement path and its options the samples came from
    options: dict[str, Any] | None
    pairs: int  # calibration images
    calibration_coverage: float  # 1 − mean risk on the calibration images themselves, at ``scale``
    floor: float = FLOOR
    guarantee: str = field(default="")

    def __post_init__(self) -> None:
        if not self.guarantee:
            self.guarantee = (f"expected fraction of roi pixel values outside [mean ± {self.scale:.3g}·(spread + "
                              f"{self.floor:.3g})] ≤ {self.alpha} for images exchangeable with the {self.pairs} "
                              "calibration pairs" + ("" if self.delta is None else
                                                     f", with probability ≥ {1 - self.delta:g} over them"))

    def half_width(self, spread: np.ndarray) -> np.ndarray:
        """The calibrated interval half-width of each pixel, in intensity units."""
        return (self.scale * (np.asarray(spread, np.float32) + self.floor)).astype(np.float32)

    def matches(self, samples: int, path: str, options: Any) -> bool:
        """Whether a spread of ``samples`` samples of this path and options is what the scale was fitted on."""
        return samples == self.samples and path == self.path and _options_dict(options) == self.options

    def save(self, run_dir: str | Path) -> Path:
        from rdiff.checkpoints import write_json

        path = Path(run_dir) / "adapt" / CALIBRATION_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> Calibration | None:
        """The run's calibration, or None when it has none (a damaged file is named in one sentence)."""
        import json

        path = Path(run_dir) / "adapt" / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise UserError(f"calibration file '{path}' is damaged ({exc}); recalibrate with "
                            f"`rdiff calibrate --run {run_dir}`.") from None


def _options_dict(options: Any) -> dict[str, Any] | None:
    from dataclasses import is_dataclass

    return asdict(options) if is_dataclass(options) else None
