"""The Python API, mirroring the CLI: create components by name, list them, load runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rdiff.config import build, merge
from rdiff.errors import UserError, did_you_mean
from rdiff.plugins import plugins

if TYPE_CHECKING:
    from rdiff.adaptor import Adaptor
    from rdiff.modality import Modality
    from rdiff.reconstructor import Reconstructor
    from rdiff.run import Run


def list_backbones() -> list[str]:
    return sorted(plugins().entries["backbone"])


def list_adaptors() -> list[str]:
    return sorted(plugins().entries["adaptor"])


def list_modalities() -> list[str]:
    return sorted(plugins().entries["modality"])


def get_preset(backbone: str, name: str) -> dict[str, Any]:
    """The named preset of a backbone: a partial run configuration (``model``, ``train``, ``eval``)."""
    entry = plugins().get("backbone", backbone)
    presets = plugins().presets(entry)
    if name not in presets:
        raise UserError(f"backbone '{backbone}' has no preset '{name}'{did_you_mean(name, presets)}; "
                        f"presets: {', '.join(presets) or 'none'}.")
    return presets[name] or {}


def _config(entry, values: dict[str, Any], where: str) -> Any:
    if entry.config is None:
        if values:
            raise UserError(f"{entry.kind} '{entry.name}' takes no options, got '{where}.{next(iter(values))}'.")
        return None
    return build(entry.config, values, where)


def create_backbone(name: str, preset: str | None = "tiny", channels: int = 3, **overrides: Any) -> Reconstructor:
    """A backbone built from a preset's ``model`` section with ``overrides`` on top.

    >>> rdiff.create_backbone("ldm-unet", preset="paper")  # doctest: +SKIP
    """
    entry = plugins().get("backbone", name)
    values = merge(get_preset(name, preset).get("model", {}) if preset else {}, overrides)
    backbone = entry.build(_config(entry, values, "model"), channels)
    backbone.registered_name = name
    return backbone


def create_adaptor(name: str, backbone: Reconstructor, **overrides: Any) -> Adaptor:
    """An adaptor attached to (and only to) ``backbone``, whose own parameters are frozen."""
    entry = plugins().get("adaptor", name)
    missing = sorted(set(entry.requires) - set(backbone.capabilities))
    if missing:
        raise UserError(f"adaptor '{name}' needs a backbone with {', '.join(missing)}; "
                        f"'{backbone.registered_name}' offers {', '.join(sorted(backbone.capabilities)) or 'nothing'}.")
    backbone.requires_grad_(False)
    return entry.build(_config(entry, overrides, "adaptor_options"), backbone)


def create_modality(name: str, **overrides: Any) -> Modality:
    entry = plugins().get("modality", name)
    return entry.build(_config(entry, overrides, "modality_options"))


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
    from rdiff.cli import resolve_config
    from rdiff.config import RunConfig
    from rdiff.engine import run

    resolved = config if isinstance(config, RunConfig) else resolve_config([config])
    return run(resolved, out, phases=phases, resume=resume)
