"""Scoring a backbone on a fixed set of degraded/clean pairs, inside the region of interest.

Every path the backbone offers is scored (``fast``, ``ddimK`` for each K in ``eval.sample_steps``), plus the
degraded input itself and, when an adaptor is attached, the reconstruction-only model (adaptor off).
Scores are also broken down by degradation type (the ``types`` each degradation reports).
Evaluation runs on the main process only (held-out sets are small next to training); metrics are told not
to synchronise, so the other processes never wait in a collective call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from rdiff.data import Pair, stack
from rdiff.modality import Modality
from rdiff.reconstructor import Reconstructor


def path_options(backbone: Reconstructor, sample_steps: list[int], eta: float) -> dict[str, dict[str, Any]]:
    """Report name -> enhance() keywords for every path of ``backbone``: ``fast``, ``ddim10``, ..."""
    options: dict[str, dict[str, Any]] = {}
    for path in backbone.paths():
        if path == "sample":
            for k in sample_steps:
                options[f"ddim{k}"] = {"path": "sample", "steps": int(k), "eta": eta}
        else:
            options[path] = {"path": path}
    return options


def path_name(path: str, sample_steps: list[int]) -> str:
    """The report name of ``eval.path``: ``sample`` is the sampling path at the first of ``eval.sample_steps``
    (``ddimK``, the steps ``rdiff enhance --path sample`` takes by default); other names are kept."""
    return f"ddim{int(sample_steps[0])}" if path == "sample" and sample_steps else path


def heldout_pairs(modality: Modality, config: Any, *, data: str | None = None, split: str = "heldout",
                  crops: int | None = None) -> list[Pair]:
    """The fixed held-out crops a run is scored on: ``crops`` (default ``eval.crops``) crops of the
    ``split`` images of ``data`` (default the run's), degraded with the seed ``eval.seed``."""
    from rdiff.data import degraded_crops, load_items

    train = config.train
    items = load_items(modality, data if data is not None else config.data, split, train.resize, train.image_size,
                       train.bad_images)
    return degraded_crops(modality, items, train.image_size, crops or config.eval.crops, config.eval.seed)


def _batches(items: list[Pair], size: int) -> Iterator[list[Pair]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def score(modality: Modality, pairs: list[Pair], produce: Callable[[torch.Tensor], torch.Tensor],
          device: torch.device, batch_size: int = 16, by_type: bool = True) -> dict[str, Any]:
    """Metrics of ``produce(lq)`` against hq over ``pairs``, overall and by degradation type."""
    overall = local_metrics(modality.metrics().to(device))
    types: dict[str, Any] = {}
    for chunk in _batches(pairs, batch_size):
        batch = {k: v.to(device) for k, v in stack(chunk).items()}
        out = produce(batch["lq"]).float().clamp(0, 1)
        overall.update(out, batch["hq"], batch["roi"])
        for i, pair in enumerate(chunk if by_type else []):
            for kind in pair.params.get("types", []):
                if kind not in types:
                    types[kind] = local_metrics(modality.metrics().to(device))
                types[kind].update(out[i:i + 1], batch["hq"][i:i + 1], batch["roi"][i:i + 1])
    result = {k: _number(v) for k, v in overall.compute().items()}
    if types:
        result["by_type"] = {kind: {k: _number(v) for k, v in m.compute().items()} for kind, m in sorted(types.items())}
    return result


def local_metrics(collection: Any) -> Any:
    """Metrics that never synchronise across processes (only the main process evaluates)."""
    for metric in collection.values():
        metric.distributed_available_fn = _never
    return collection


def _never() -> bool:
    return False


def _number(value: torch.Tensor) -> float:
    return round(float(value), 4)


def evaluate(backbone: Reconstructor, modality: Modality, pairs: list[Pair], *, default_path: str,
             sample_steps: list[int], eta: float, seed: int, device: torch.device,
             paths: list[str] | None = None, autocast: Callable[[], Any] = nullcontext) -> dict[str, Any]:
    """The ``eval`` section of report.json."""
    backbone.eval()
    options = path_options(backbone, sample_steps, eta)
    if paths:
        options = {name: opts for name, opts in options.items() if name in paths}

    def run_path(opts: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(seed)

        def produce(lq: torch.Tensor) -> torch.Tensor:
            with autocast():
                return backbone.enhance(lq, generator=generator, **opts)
        return produce

    report: dict[str, Any] = {"crops": len(pairs), "input": score(modality, pairs, lambda lq: lq, device)}
    report["paths"] = {name: score(modality, pairs, run_path(opts), device) for name, opts in options.items()}
    if backbone.adaptor is not None and "fast" in options:
        with backbone.base_only():
            report["reconstruct_only"] = score(modality, pairs, run_path(options["fast"]), device)
    default_path = path_name(default_path, sample_steps)
    chosen = default_path if default_path in report["paths"] else next(iter(report["paths"]))
    report["default_path"] = chosen
    report["enhanced"] = report["paths"][chosen]
    return report


def validation_psnr(backbone: Reconstructor, modality: Modality, pairs: list[Pair], opts: dict[str, Any],
                    device: torch.device, seed: int) -> float:
    """Mean PSNR of one path on the validation pairs (the early-stopping criterion of phase 2)."""
    backbone.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    result = score(modality, pairs, lambda lq: backbone.enhance(lq, generator=generator, **opts), device, by_type=False)
    backbone.train()
    return float(result["psnr"]) if np.isfinite(result["psnr"]) else float("-inf")
