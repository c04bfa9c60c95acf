"""Scoring a backbone on a fixed set of degraded/clean pairs, inside the region of interest.

Every path name the backbone offers is scored (``fast``; ldm-unet: ``ddimK`` for each K in ``eval.sample_steps``), plus the
degraded input itself and, when an adaptor is attached, the reconstruction-only model (adaptor off).
Scores are also broken down by degradation type (the ``types`` each degradation reports).
Evaluation runs on the main process only (held-out sets are small next to training); metrics are told not
to synchronise, so the other processes never wait in a collective call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from rdiff.data import Pair, stack
from rdiff.metrics import metric_collection
from rdiff.modality import Modality
from rdiff.errors import UserError
from rdiff.reconstructor import Reconstructor


def sampling_settings(config: Any) -> dict[str, Any]:
    """The run's ``eval`` keys a backbone builds its sampling options from (all but crops, seed, path)."""
    return {k: v for k, v in vars(config.eval).items() if k not in ("crops", "seed", "path")}


def named_paths(backbone: Reconstructor, settings: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Report name -> ``(path, options)`` for every name the backbone scores: ``fast``, ``ddim10``, ..."""
    return {name: backbone.resolve_path(name, **settings) for name in backbone.path_names(**settings)}


def default_name(backbone: Reconstructor, config: Any) -> str:
    """The report name of the run's ``eval.path``: itself when the backbone scores it under that name, else
    the scored name it resolves to (the paper preset's ``sample`` is ``ddim50``), else itself."""
    settings, own = sampling_settings(config), config.eval.path
    paths = named_paths(backbone, settings)
    try:
        resolved = paths.get(own) or backbone.resolve_path(own, **settings)
    except UserError:
        return own
    return own if own in paths else next((n for n, choice in paths.items() if choice == resolved), own)


def heldout_pairs(modality: Modality, config: Any, *, data: str | None = None, split: str = "heldout",
                  crops: int | None = None) -> list[Pair]:
    """The fixed held-out crops a run is scored on: ``crops`` (default ``eval.crops``) crops of the
    ``split`` images of ``data`` (default the run's), degraded with the seed ``eval.seed``."""
    from rdiff.data import degraded_crops, load_items

    train = config.train
    items = load_items(modality, data if data is not None else config.data, split, train.resize, train.image_size,
                       train.bad_images)
    return degraded_crops(modality, items, train.image_size, crops or config.eval.crops, config.eval.seed)


@torch.no_grad()
def score(modality: Modality, pairs: list[Pair], produce: Callable[[torch.Tensor], torch.Tensor],
          device: torch.device, batch_size: int = 16, by_type: bool = True,
          only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Metrics of ``produce(lq)`` against hq over ``pairs``, overall and by degradation type (``only``: the
    modality's metrics of these names alone)."""
    overall = modality.metrics()
    overall = local_metrics((metric_collection({n: overall[n] for n in only}) if only else overall).to(device))
    types: dict[str, Any] = {}
    for chunk in (pairs[start:start + batch_size] for start in range(0, len(pairs), batch_size)):
        batch = {k: v.to(device) for k, v in stack(chunk).items()}
        out = produce(batch["lq"]).float().clamp(0, 1)
        overall.update(out, batch["hq"], batch["roi"])
        for i, pair in enumerate(chunk if by_type else []):
            for kind in pair.params.get("types", []):
                if kind not in types:
                    types[kind] = local_metrics(modality.metrics().to(device))
                types[kind].update(out[i:i + 1], batch["hq"][i:i + 1], batch["roi"][i:i + 1])
    result = {k: round(float(v), 4) for k, v in overall.compute().items()}
    if types:
        result["by_type"] = {kind: {k: round(float(v), 4) for k, v in m.compute().items()} for kind, m in sorted(types.items())}
    return result


def local_metrics(collection: Any) -> Any:
    """Metrics that never synchronise across processes (only the main process evaluates)."""
    for metric in collection.values():
        metric.distributed_available_fn = lambda: False
    return collection


def enhancer(backbone: Reconstructor, choice: tuple[str, Any], device: torch.device, seed: int,
             autocast: Callable[[], Any] = nullcontext) -> Callable[[torch.Tensor], torch.Tensor]:
    """``lq -> backbone.enhance(lq)`` on one ``(path, options)``, its sampling noise seeded once."""
    path, options = choice
    generator = torch.Generator(device=device).manual_seed(seed)

    def produce(lq: torch.Tensor) -> torch.Tensor:
        with autocast():
            return backbone.enhance(lq, path=path, options=options, generator=generator)
    return produce


def evaluate(backbone: Reconstructor, modality: Modality, pairs: list[Pair], *, config: Any, device: torch.device,
             paths: list[str] | None = None, autocast: Callable[[], Any] = nullcontext) -> dict[str, Any]:
    """The ``eval`` section of report.json for a run of configuration ``config``."""
    backbone.eval()
    options = named_paths(backbone, sampling_settings(config))
    if paths:
        options = {name: choice for name, choice in options.items() if name in paths}
    seed = config.eval.seed
    report: dict[str, Any] = {"crops": len(pairs), "input": score(modality, pairs, lambda lq: lq, device)}
    report["paths"] = {name: score(modality, pairs, enhancer(backbone, choice, device, seed, autocast), device)
                       for name, choice in options.items()}
    report = with_default(report, backbone, config)
    if backbone.adaptor is not None:  # zero pairs: the phase-1 model alone on the default path
        with backbone.base_only():
            choice = options.get(report["default_path"]) or backbone.resolve_path(report["default_path"],
                                                                                  **sampling_settings(config))
            report["reconstruct_only"] = score(modality, pairs, enhancer(backbone, choice, device, seed, autocast), device)
        report["reconstruct_only_path"] = report["default_path"]
    return report


def with_default(report: dict[str, Any], backbone: Reconstructor, config: Any) -> dict[str, Any]:
    """``report`` with ``default_path`` and ``enhanced``: the run's ``eval.path`` when it was scored, else the
    first path scored."""
    wanted = default_name(backbone, config)
    chosen = wanted if wanted in report["paths"] else next(iter(report["paths"]))
    report["default_path"], report["enhanced"] = chosen, report["paths"][chosen]
    return report


def validation_psnr(backbone: Reconstructor, modality: Modality, pairs: list[Pair], choice: tuple[str, Any],
                    device: torch.device, seed: int) -> float:
    """Mean PSNR of one ``(path, options)`` on the validation pairs (the early-stopping criterion of phase 2)."""
    backbone.eval()
    # the modality's PSNR alone: its structure metrics (a Frangi vessel map) would add a quarter to every validation
    result = score(modality, pairs, enhancer(backbone, choice, device, seed), device, by_type=False,
                   only=("psnr",))
    backbone.train()
    return float(result["psnr"]) if np.isfinite(result["psnr"]) else float("-inf")
