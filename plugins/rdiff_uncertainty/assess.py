"""Calibrating a run on its validation data, and scoring coverage and hallucinations on held-out pairs.

Both go through :func:`rdiff_uncertainty.sampling.sample_uncertainty`, image by image, exactly as ``rdiff
enhance --uncertainty`` computes a map: what is calibrated is what users see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rdiff.errors import UserError
from rdiff_uncertainty import calibration as cal
from rdiff_uncertainty import hallucination
from rdiff_uncertainty.sampling import DEFAULT_SAMPLES, check_request, sample_uncertainty, sampling_path

DEFAULT_ALPHA = 0.1
#: calibration crops by default: conformal risk control at α = 0.1 needs 9 at the very least and overshoots
#: the target coverage by about 1/(n+1), so 64 keep that within 1.5 points
DEFAULT_PAIRS = 64


def calibration_pairs(modality: Any, config: Any, count: int) -> list:
    """``count`` calibration crops of the phase-1 crop size from the run's *validation* data: crops of the
    last fifth of a ``--pairs`` folder (the images phase 2 validates on and never trains on), or, for pairs
    made on the fly, fresh degradations of the run's images drawn with their own seed."""
    from rdiff.data import degraded_crops, fixed_crops, load_items, load_pair_folder
    from rdiff.training import stable_seed

    train = config.train
    if config.pairs:
        pairs = load_pair_folder(modality, config.pairs, train.resize)
        held = pairs[-min(max(1, len(pairs) // 5), max(len(pairs) - 1, 1)):]
        return fixed_crops(held, train.image_size, count, stable_seed(config.seed, "calibration"))
    items = load_items(modality, config.data, "train", train.resize, train.image_size, train.bad_images)
    return degraded_crops(modality, items, train.image_size, count, stable_seed(config.seed, "calibration"))


def calibrate(run: Any, *, alpha: float = DEFAULT_ALPHA, delta: float | None = None, samples: int = DEFAULT_SAMPLES,
              pairs: int = DEFAULT_PAIRS, path: str | None = None, seed: int = 0, held: list | None = None,
              **settings: Any) -> cal.Calibration:
    """Fit the scale of a loaded, adapted :class:`rdiff.Run` and save it as ``RUN/adapt/calibration.json``:
    on ``pairs`` crops of its validation data (:func:`calibration_pairs`), or on the pairs ``held`` if given."""
    cal.check_levels(alpha, delta)
    if not run.adapted:
        raise UserError(f"run '{run.directory}' has no phase 2 to calibrate; adapt it first (rdiff adapt --from RUN).")
    chosen_path, options = sampling_path(run.backbone, path, run.resolve_path, **settings)
    check_request(run.backbone, chosen_path, samples)
    count = pairs if held is None else len(held)
    if delta is None and count < math.ceil(1 / alpha - 1):  # said before any sampling
        raise UserError(f"{count} calibration image(s) cannot attain a risk of {alpha} (conformal risk control "
                        f"needs at least {math.ceil(1 / alpha - 1)}); give more calibration pairs ("
                        + ("rdiff calibrate --pairs N)." if held is None else "more files in the --folder).")
                        )
    held = calibration_pairs(run.modality, run.config, pairs) if held is None else held
    per_image = []
    for pair in held:
        u = sample_uncertainty(run.backbone, run.modality, pair.lq, roi=pair.roi, path=chosen_path, options=options,
                               samples=samples, seed=seed, tile=run.tile, overlap=run.overlap)
        per_image.append(cal.scores(u.mean, u.spread, pair.hq, pair.roi))
    fitted = fit(per_image, alpha=alpha, delta=delta, samples=samples, path=chosen_path, options=options)
    fitted.save(run.directory)
    return fitted


def fit(per_image: list, *, alpha: float, delta: float | None, samples: int, path: str, options: Any) -> cal.Calibration:
    """The calibration of the sorted scores of each calibration image (:func:`calibration.scores`)."""
    scale = cal.fit_scale(per_image, alpha, delta)
    return cal.Calibration(scale=round(scale, 6), alpha=alpha, delta=delta, samples=samples, path=path,
                           options=cal._options_dict(options), pairs=len(per_image),
                           calibration_coverage=round(1 - cal.mean_risk(per_image, scale), 5))


def assess(backbone: Any, modality: Any, pairs: list, calibration: cal.Calibration | None, *, path: str, options: Any,
           samples: int = DEFAULT_SAMPLES, seed: int = 0, **enhance_options: Any) -> dict[str, Any]:
    """Coverage of the calibrated intervals (when there is a calibration) and the hallucination report of
    the mean output, on held-out ``pairs``: means over images, and the per-image figures under ``images``."""
    sampled = ((pair, sample_uncertainty(backbone, modality, pair.lq, roi=pair.roi, path=path, options=options,
                                         samples=samples, seed=seed, **enhance_options)) for pair in pairs)
    return score(modality, sampled, calibration, samples=samples, path=path)


def score(modality: Any, sampled: Iterable[tuple[Any, Any]], calibration: cal.Calibration | None, *, samples: int,
          path: str) -> dict[str, Any]:
    """:func:`assess` on ``(pair, uncertainty)`` of pairs already sampled (consumed one at a time)."""
    per_image = []
    for index, (pair, u) in enumerate(sampled):
        values = calibration.half_width(u.spread) if calibration else u.spread
        entry: dict[str, Any] = {"image": pair.source or str(index)}
        if calibration is not None:
            entry["coverage"] = round(1 - cal.risk(cal.scores(u.mean, u.spread, pair.hq, pair.roi), calibration.scale), 5)
        entry.update(hallucination.report(modality, u.mean, pair.hq, pair.roi, values))
        entry["mean_map"] = round(float(values[pair.roi].mean()) if pair.roi.any() else 0.0, 5)
        per_image.append(entry)
    numbers = [{k: v for k, v in e.items() if k != "image"} for e in per_image]
    result: dict[str, Any] = {"samples": samples, "path": path, "images": len(per_image), **hallucination.summarise(numbers)}
    if calibration is not None:
        result.update(target_coverage=round(1 - calibration.alpha, 4), alpha=calibration.alpha, delta=calibration.delta,
                      scale=calibration.scale)
    result["per_image"] = per_image
    return result


def format_assessment(result: dict[str, Any]) -> str:
    """The lines ``rdiff evaluate`` prints under its table."""
    lines = [f"uncertainty ({result['samples']} samples of path {result['path']}, {result['images']} held-out images):"]
    if "coverage" in result:
        lines.append(f"  coverage {100 * result['coverage']:.1f} % of roi pixel values inside their interval "
                     f"(target {100 * result['target_coverage']:.0f} %, alpha {result['alpha']}"
                     + ("" if result["delta"] is None else f", delta {result['delta']}") + ")")
    else:
        lines.append("  coverage: not measured, the run holds no calibration (rdiff calibrate --run RUN)")
    lines.append(f"  structure invented {_percent(result['invented'])} of the roi ({_percent(result['invented_flagged'])} "
                 f"of it in the high-uncertainty {100 * hallucination.HIGH_FRACTION:.0f} %), lost "
                 f"{_percent(result['lost'])} ({_percent(result['lost_flagged'])} flagged)")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f} %"


def heldout(run: Any, *, data: str | None = None, pairs: str | None = None, crops: int | None = None) -> list:
    """The held-out pairs ``rdiff evaluate`` scores with the same flags (:meth:`rdiff.Run.evaluate`)."""
    from rdiff.data import degraded_images, load_pair_folder
    from rdiff.evaluation import heldout_pairs
    from rdiff.images import list_images

    cfg = run.config
    if pairs is not None:
        return load_pair_folder(run.modality, pairs, resize=None)
    if data is not None:
        return degraded_images(run.modality, list_images(data, run.modality.suffixes), cfg.train.resize, cfg.eval.seed)
    return heldout_pairs(run.modality, cfg, split="heldout", crops=crops)
