"""K samples of the stochastic enhancement path, their mean and their per-pixel spread, and the files
``rdiff enhance --uncertainty`` writes.

Sample k is :func:`rdiff.enhance.enhance_image` with seed ``seed + k`` (sample 0 *is* ``rdiff enhance
--seed S``'s output), so the map reuses the enhancement's tiling as it is: every sample joins its tiles
without seams, and so do their mean and spread. Only two image-sized arrays are kept whatever K (a
running mean and sum of squares, Welford's update), so memory is that of one enhancement. A latent backbone
corrects and encodes the image once for all K samples (``reusing_condition``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdiff.errors import UserError

DEFAULT_SAMPLES = 4
#: the heat map's colour scale, in intensity units: a half-width (or spread) of this or more is the
#: hottest colour. Fixed, not per image, so two maps read alike.
HEAT_SCALE = 0.1


@dataclass
class Uncertainty:
    """What K samples say about one image (all ``H×W``, the image's native size)."""

    mean: np.ndarray  # H×W×C float32: the mean of the samples (what is written as the enhanced image)
    spread: np.ndarray  # H×W float32: per-pixel standard deviation over samples, root-mean-square over channels
    roi: np.ndarray  # H×W bool: where the image was enhanced (the spread is 0 elsewhere)
    samples: int


def check_request(backbone: Any, path: str, samples: int) -> None:
    """Refuse, in one sentence, what cannot give a spread: a backbone or path without noise, or K < 2."""
    if "sampling" not in backbone.capabilities:
        raise UserError(f"--uncertainty needs a backbone with a stochastic sampling path; "
                        f"'{backbone.registered_name}' has only its one-shot path.")
    if path == "fast":
        raise UserError("--uncertainty needs the sampling path (--path sample or ddimK); 'fast' is deterministic.")
    if samples < 2:
        raise UserError(f"--samples must be at least 2 to measure a spread, not {samples}.")


def sampling_path(backbone: Any, path: str | None, resolve: Any, **settings: Any) -> tuple[str, Any]:
    """``(path, options)`` to sample with: the one asked for, else the run's own when it samples, else
    ``sample`` with the run's settings (``resolve`` is :meth:`rdiff.Run.resolve_path`)."""
    chosen = resolve(path, **settings)
    if path is None and chosen[0] == "fast" and "sampling" in backbone.capabilities:
        chosen = resolve("sample", **settings)
    return chosen


def sample_uncertainty(backbone: Any, modality: Any, image: np.ndarray, *, path: str, options: Any,
                       samples: int = DEFAULT_SAMPLES, seed: int = 0, roi: np.ndarray | None = None,
                       **enhance_options: Any) -> Uncertainty:
    """Mean and spread of ``samples`` enhancements of ``image`` (``H×W×C`` in [0, 1]) by the stochastic
    ``path``; ``enhance_options`` (tile, overlap, batch, device, dtype, ...) as for
    :func:`rdiff.enhance.enhance_image`. The same seed gives the same mean and spread."""
    from rdiff.enhance import enhance_image

    check_request(backbone, path, samples)
    image = np.asarray(image, dtype=np.float32)
    roi = np.asarray(modality.roi(image) if roi is None else roi, dtype=bool)
    # float32 is exact enough for a handful of samples in [0, 1] (Welford's update does not cancel) and keeps
    # the map's extra memory at two image-sized arrays
    mean = np.zeros(image.shape, np.float32)
    squares = np.zeros(image.shape, np.float32)  # sum of squared deviations from the running mean
    # a latent backbone encodes the image once for all K samples (they differ only in the sampler's noise)
    with getattr(backbone, "reusing_condition", contextlib.nullcontext)():
        for k in range(samples):
            out = enhance_image(backbone, modality, image, roi=roi, path=path, options=options, seed=seed + k,
                                **enhance_options)
            delta = out - mean
            mean += delta / (k + 1)
            delta *= out - mean
            squares += delta
    spread = np.sqrt((squares / (samples - 1)).mean(axis=2)).astype(np.float32)
    spread[~roi] = 0.0
    return Uncertainty(mean, spread, roi, samples)


# --- pictures ----------------------------------------------------------------------------------------------

#: a perceptually ordered dark-to-bright map (black, purple, red, orange, pale yellow), used when matplotlib
#: is not installed
_STOPS = np.array([[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]],
                  np.float32)


def heat_map(values: np.ndarray, roi: np.ndarray, scale: float = HEAT_SCALE) -> np.ndarray:
    """``H×W×3`` colours of ``values`` on a fixed scale (0 → dark, ``scale`` or more → bright), black
    outside the roi: the field of view only."""
    level = np.clip(np.asarray(values, np.float32) / scale, 0.0, 1.0)
    try:
        from matplotlib import colormaps

        colours = colormaps["inferno"](level)[..., :3].astype(np.float32)
    except ImportError:
        position = level * (len(_STOPS) - 1)
        low = np.minimum(position.astype(int), len(_STOPS) - 2)
        weight = (position - low)[..., None]
        colours = _STOPS[low] * (1 - weight) + _STOPS[low + 1] * weight
    colours[~np.asarray(roi, bool)] = 0.0
    return colours


def map_names(output: Path) -> list[Path]:
    """Beside the enhanced ``output``: ``<stem>_uncertainty.png`` (the heat map) and ``<stem>_uncertainty16.png``
    (the values themselves in the image's intensity units, as a 16-bit grey PNG: value = pixel / 65535)."""
    return [output.with_name(f"{output.stem}_uncertainty.png"), output.with_name(f"{output.stem}_uncertainty16.png")]


def write_maps(heat: Path, raw: Path, values: np.ndarray, roi: np.ndarray) -> None:
    from rdiff.images import write_image

    write_image(heat, heat_map(values, roi), bits=8)
    write_image(raw, np.clip(values, 0.0, 1.0)[..., None], bits=16)


# --- rdiff enhance --uncertainty --------------------------------------------------------------------------------


def enhance_files_with_uncertainty(args: Any) -> int:
    """``rdiff enhance --uncertainty``: for every input, the mean of ``--samples`` samples written as the
    enhanced file, and its uncertainty map beside it (calibrated half-width when the run holds a calibration
    fitted with the same path, options and K; the raw spread otherwise, with a warning)."""
    import sys
    import warnings

    from rdiff import images
    from rdiff.enhance import check_options
    from rdiff.run import Run
    from rdiff_uncertainty.calibration import Calibration

    run = Run.load(args.run, reconstruct_only=args.reconstruct_only)
    backbone, modality = run.backbone, run.modality
    path, options = sampling_path(backbone, args.path, run.resolve_path, steps=args.steps, eta=args.eta)
    check_request(backbone, path, args.samples)
    if args.compare:
        raise UserError("--compare and --uncertainty cannot be combined; give one of them.")
    tile = run.tile if args.tile is None else args.tile
    overlap = min(run.overlap, tile // 2) if args.overlap is None else args.overlap
    check_options(backbone, tile=tile, overlap=overlap, batch=args.batch)
    calibration = None if args.reconstruct_only else Calibration.load(run.directory)
    if calibration is not None and not calibration.matches(args.samples, path, options):
        warnings.warn(f"the run's calibration was fitted with {calibration.samples} samples of path "
                      f"{calibration.path} {calibration.options}; these maps show the raw spread instead.", stacklevel=2)
        calibration = None
    elif calibration is None:
        warnings.warn("the run holds no calibration (rdiff calibrate --run RUN); the maps show the raw spread, "
                      "which states no risk.", stacklevel=2)

    def outputs(relative: Path) -> list[Path]:  # the enhanced file, then its two maps
        enhanced = relative.parent / f"{relative.stem}{args.suffix or ''}{relative.suffix}"
        return [enhanced, *map_names(enhanced)]

    jobs = images.plan_outputs(images.expand_inputs(list(args.inputs), tuple(modality.suffixes)), Path(args.out), outputs,
                               "choose another output folder (--out) or a suffix for the output names (--suffix)")
    failed = []
    for file, relative, (output, heat, raw) in jobs:
        try:
            stack = modality.read_stack(file)
            results = [sample_uncertainty(backbone, modality, image, path=path, options=options,
                                          samples=args.samples, seed=args.seed, tile=tile, overlap=overlap,
                                          batch=args.batch, device=args.device, dtype=args.dtype,
                                          preserve_color=args.preserve_color) for image in stack]
            modality.write_stack(output, [r.mean for r in results], like=file)
            middle = results[len(results) // 2]  # a volume's middle slice, as --compare shows
            values = calibration.half_width(middle.spread) if calibration else middle.spread
            values[~middle.roi] = 0.0
            write_maps(heat, raw, values, middle.roi)
        except (UserError, OSError) as exc:
            failed.append(str(relative))
            print(f"FAILED {relative}: {exc}", file=sys.stderr)
            continue
        inside = values[middle.roi]
        what = "calibrated half-width" if calibration else "spread"
        print(f"{relative}  {args.samples} samples  {what}: median {np.median(inside) if inside.size else 0:.4f}, "
              f"95th percentile {np.percentile(inside, 95) if inside.size else 0:.4f}")
    print(f"{len(jobs) - len(failed)} enhanced with uncertainty maps, {len(failed)} failed -> {args.out}",
          file=sys.stderr if failed else sys.stdout)
    return 2 if failed else 0
