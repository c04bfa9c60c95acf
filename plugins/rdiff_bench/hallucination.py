"""The hallucination report of ``rdiff bench``'s adapted rows, next to PSNR and SSIM (docs/benchmarks.md).

For an adapted run whose backbone has a stochastic path (ldm-unet, dit), the bench samples each test image
``--uncertainty-samples K`` times on the run's default sampling path and scores the mean of the samples
with :func:`rdiff_uncertainty.assess.assess`, as ``rdiff evaluate --uncertainty`` does: structure invented
and lost against the clean image (fractions of the roi) and the share of each inside the high-uncertainty
region (the 10 % of the roi where the samples disagree most; :mod:`rdiff_uncertainty.hallucination`). The
spread is used raw: a calibration scales it monotonically, so the region, and every figure here, is the same.

Everything from ``rdiff_uncertainty`` is imported when a report is made: with that plugin blocked or not
loaded the bench runs as before, without these columns, and says so in one line.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_SAMPLES = 4  # --uncertainty-samples: samples per test image (0: no report)
FIGURES = ("invented", "invented_flagged", "lost", "lost_flagged")
_PLUGIN_MODULE = "rdiff_uncertainty"


def unavailable() -> str | None:
    """None when the uncertainty plugin is loaded and importable, else the one-sentence reason it is not."""
    from rdiff.plugins import plugins

    loaded = plugins()
    names = [name for name, info in loaded.info.items() if info.module == _PLUGIN_MODULE]
    if names:
        try:
            import rdiff_uncertainty.assess  # noqa: F401
        except ImportError as exc:
            return f"the uncertainty plugin does not import ({exc})"
        return None
    broken = next((error for name, error in loaded.broken.items() if name in ("uncertainty", _PLUGIN_MODULE)), None)
    return f"the uncertainty plugin is broken ({broken})" if broken else "the uncertainty plugin is blocked or not loaded"


def stochastic(backbone_name: str) -> bool:
    """Whether a registered backbone has a stochastic sampling path (from its registration: nothing is built)."""
    from rdiff.plugins import plugins

    entry = plugins().entries["backbone"].get(backbone_name)
    return entry is not None and "sampling" in entry.capabilities


def check_samples(samples: int) -> None:
    from rdiff.errors import UserError

    if samples == 1:
        raise UserError("--uncertainty-samples must be 0 (no hallucination report) or at least 2 to measure a "
                        "spread, not 1.")


def skipped_line(samples: int, backbones: list[str]) -> str | None:
    """The line the bench says when it will not make a report it otherwise would (None: nothing to say)."""
    if samples < 2 or not any(stochastic(b) for b in backbones):
        return None
    why = unavailable()
    return None if why is None else (f"no hallucination report (structure invented/lost) in the tables: {why} "
                                     f"(RDIFF_BLOCK_PLUGINS, RDIFF_DISABLE_PLUGIN_AUTOLOAD).")


def default_sampling(backbone: Any, config: Any) -> tuple[str, tuple[str, Any]]:
    """``(name, (path, options))`` of the run's default sampling path: its ``eval.path`` when that samples,
    else ``sample`` with the run's settings (as :func:`rdiff_uncertainty.sampling.sampling_path` chooses);
    ``name`` is the bench row's path name that enhances the same way (``ddim10``), else the path itself."""
    from rdiff.evaluation import default_name, named_paths, sampling_settings

    settings = sampling_settings(config)
    paths = named_paths(backbone, settings)
    own = default_name(backbone, config)
    if own in paths and paths[own][0] != "fast":
        return own, paths[own]
    chosen = backbone.resolve_path("sample", **settings)
    return next((name for name, choice in paths.items() if choice == chosen), chosen[0]), chosen


def report(backbone: Any, modality: Any, pairs: list, choice: tuple[str, Any], *, samples: int, seed: int = 0,
           **enhance_options: Any) -> dict[str, Any]:
    """The hallucination report of the mean of ``samples`` samples of ``choice`` on ``pairs``: means over
    the images of :data:`FIGURES` and ``structure`` (None where no image had anything invented or lost)."""
    from rdiff_uncertainty.assess import assess

    path, options = choice
    result = assess(backbone, modality, pairs, None, path=path, options=options, samples=samples, seed=seed,
                    **enhance_options)
    out: dict[str, Any] = {"samples": samples, "images": len(pairs)}
    for key in ("structure", *FIGURES):
        value = result.get(key)
        out[key] = value if value is not None and math.isfinite(value) else None
    return out


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and sample std over seeds of every figure (over the seeds that have it), or None without any."""
    from rdiff_bench.bench import mean_std

    if not per_seed:
        return None
    out: dict[str, Any] = {"samples": per_seed[0]["samples"], "seeds": len(per_seed)}
    for key in ("structure", *FIGURES):
        values = [r[key] for r in per_seed if r.get(key) is not None]
        out[key] = dict(zip(("mean", "std"), mean_std(values))) if values else None
    return out


def cells(summary: dict[str, Any] | None) -> list[str]:
    """The two table cells ``invented (flagged)`` and ``lost (flagged)``: percent of the roi, then the percent
    of those pixels inside the high-uncertainty region; ``—`` without a report."""
    if not summary:
        return ["—", "—"]

    def percent(figure: dict[str, float] | None, digits: int) -> str:
        return "—" if figure is None else f"{100 * figure['mean']:.{digits}f} %"

    return [f"{percent(summary[kind], 2)} ({percent(summary[f'{kind}_flagged'], 0)})" for kind in ("invented", "lost")]


HEADERS = ["invented (flagged)", "lost (flagged)"]


def note(samples: int) -> str:
    """The line results.md explains the two columns with."""
    try:
        from rdiff_uncertainty.hallucination import HIGH_FRACTION
    except ImportError:  # a results.md of an earlier run, rewritten without the plugin
        HIGH_FRACTION = 0.1
    share = f"{100 * HIGH_FRACTION:.0f} %"
    return (f"- `invented (flagged)`, `lost (flagged)`: structure (fundus: vessels; other modalities: bright "
            f"reflectors) in the mean of {samples} samples of the default sampling path that the clean image lacks, "
            f"and clean structure it lacks, as % of the roi (mean over test images and seeds); in parentheses the "
            f"share of those pixels inside the high-uncertainty region (the {share} of the roi where the samples "
            f"disagree most: {share} is chance). Only adapted rows of backbones with a stochastic path, on that "
            "path's row; see docs/uncertainty.md.")
