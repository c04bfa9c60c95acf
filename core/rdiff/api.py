"""The Python API, mirroring the CLI: create components by name, list them, load runs, train.

This is the top of the import graph: it imports the registry, the engine and the run directory, and no
core module imports it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rdiff.registry import (create_adaptor, create_backbone, create_modality, get_preset, list_adaptors,
                            list_backbones, list_modalities, resolve_config)

if TYPE_CHECKING:
    from rdiff.run import Run

__all__ = ["create_adaptor", "create_backbone", "create_modality", "get_preset", "list_adaptors",
           "list_backbones", "list_modalities", "load_run", "resolve_config", "train"]


def load_run(path: str, *, reconstruct_only: bool = False) -> Run:
    """A finished (or phase-1-only) run directory, ready to enhance and evaluate. An adapted run whose
    adaptor is missing or damaged is refused unless ``reconstruct_only`` asks for the phase-1 model alone."""
    from rdiff.run import Run

    return Run.load(path, reconstruct_only=reconstruct_only)


def train(config: Any, out: str, *, phases: tuple[str, ...] = ("reconstruct", "adapt"), resume: bool = False) -> dict[str, Any] | None:
    """Train a run (as ``rdiff train``) and return report.json's content. ``config`` is a dict of
    configuration keys, resolved on top of the backbone's preset like the CLI's flags, e.g.
    ``{"backbone": "ldm-unet", "modality": "fundus", "train": {"adapt_steps": 100}}``, or a complete
    :class:`rdiff.RunConfig` used as it is."""
    from rdiff.config import RunConfig
    from rdiff.engine import run

    resolved = config if isinstance(config, RunConfig) else resolve_config([config])
    return run(resolved, out, phases=phases, resume=resume)
