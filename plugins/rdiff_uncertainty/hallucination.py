"""Structure invented and structure lost, and how much of each the uncertainty map flags.

Each modality has a *structure map* (bool ``H×W``) of an image, computed the same way on the enhanced
output and on the clean image:

- **fundus**: the Frangi vessel map vessel Dice already uses (:func:`rdiff_fundus.metrics.vessel_maps`);
- **every other modality** (OCT included): *bright reflectors*, the pixels whose intensity, smoothed along
  the layers (1 px in depth, 4 px across), exceeds the clean image's 90th percentile inside the roi. In a
  B-scan these are the nerve fibre layer, the ellipsoid zone and the RPE: a speckle blob the model makes
  into a reflector, or a layer it washes out, changes the map. The threshold comes from the clean image for
  both maps, so a global brightness change shows up as structure invented or lost, as it would to a reader.

A modality of a third-party plugin may define ``structure_map(images, rois)`` (``B×H×W×C`` floats, ``B×H×W``
bools → ``B×H×W`` bools) to supply its own; it is then used for both.

Per image: ``invented`` = pixels of the output's map absent from the clean map, ``lost`` = the reverse, each
as a fraction of the roi, and ``invented_flagged`` / ``lost_flagged`` = the fraction of those pixels that lie
in the *high-uncertainty region*: the :data:`HIGH_FRACTION` of roi pixels with the highest map value. A map
that knew nothing would flag about ``HIGH_FRACTION`` of them; higher means the map points at its errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIGH_FRACTION = 0.1  # the high-uncertainty region: this fraction of the roi, where the map is highest
BRIGHT_QUANTILE = 0.9


def structure_maps(modality: Any, images: np.ndarray, rois: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``B×H×W`` structure maps of ``B×H×W×C`` images (see the module docstring); ``reference`` (the clean
    images) sets the bright-reflector threshold, default the images themselves."""
    images, rois = np.asarray(images, np.float32), np.asarray(rois, bool)
    own = getattr(modality, "structure_map", None)
    if own is not None:
        return np.asarray(own(images, rois), bool) & rois
    if getattr(modality, "name", "") == "fundus":
        from rdiff_fundus.metrics import vessel_maps

        return vessel_maps(images.transpose(0, 3, 1, 2), rois) & rois
    return bright_reflectors(images, rois, images if reference is None else np.asarray(reference, np.float32))


def bright_reflectors(images: np.ndarray, rois: np.ndarray, reference: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    out = np.zeros(rois.shape, bool)
    for i, (image, clean, roi) in enumerate(zip(images, reference, rois)):
        if not roi.any():
            continue
        smooth, smooth_clean = (gaussian_filter(x.mean(axis=2), sigma=(1.0, 4.0), mode="reflect") for x in (image, clean))
        out[i] = (smooth > np.quantile(smooth_clean[roi], BRIGHT_QUANTILE)) & roi
    return out


def high_uncertainty(values: np.ndarray, roi: np.ndarray, fraction: float = HIGH_FRACTION) -> np.ndarray:
    """The ``fraction`` of roi pixels where ``values`` is highest (ties broken by position)."""
    region = np.zeros(roi.shape, bool)
    inside = np.flatnonzero(roi)
    count = int(round(fraction * inside.size))
    if count:
        order = np.argsort(-np.asarray(values).ravel()[inside], kind="stable")
        region.ravel()[inside[order[:count]]] = True
    return region


def structure_change(modality: Any, output: np.ndarray, clean: np.ndarray, roi: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clean image's structure map, and the structure ``output`` invented and lost against it (``H×W`` bools)."""
    roi = np.asarray(roi, bool)
    maps = structure_maps(modality, np.stack([output, clean]), np.stack([roi, roi]), reference=np.stack([clean, clean]))
    made, true = maps[0], maps[1]
    return true, made & ~true, true & ~made


def report(modality: Any, output: np.ndarray, clean: np.ndarray, roi: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """The hallucination report of one image: ``output`` and ``clean`` ``H×W×C``, ``values`` its uncertainty
    map (spread or calibrated half-width)."""
    roi = np.asarray(roi, bool)
    true, invented, lost = structure_change(modality, output, clean, roi)
    flagged = high_uncertainty(values, roi)
    area = max(int(roi.sum()), 1)

    def share(pixels: np.ndarray) -> float:  # of these pixels, the fraction the map flags (nan: none)
        return float((pixels & flagged).sum() / pixels.sum()) if pixels.any() else float("nan")

    return {"structure": round(float(true.sum() / area), 5), "invented": round(float(invented.sum() / area), 5),
            "lost": round(float(lost.sum() / area), 5), "invented_flagged": round(share(invented), 4),
            "lost_flagged": round(share(lost), 4)}


def summarise(reports: list[dict[str, float]]) -> dict[str, float]:
    """Means over images (an image with nothing invented or lost does not count in the ``_flagged`` means)."""
    keys = reports[0].keys() if reports else ()
    return {k: round(float(np.nanmean([r[k] for r in reports])), 5) if any(np.isfinite(r[k]) for r in reports)
            else float("nan") for k in keys}
