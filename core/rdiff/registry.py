"""The component registry, timm-style: create components by name, list them, their presets, and the
resolution of a run's configuration onto a backbone's preset.

cli, engine and run import this module; it imports none of them (tests/test_layout.py checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rdiff.config import RunConfig, build, merge, to_dict
from rdiff.errors import UserError, did_you_mean
from rdiff.plugins import catalogue, plugins

if TYPE_CHECKING:
    from rdiff.adaptor import Adaptor
    from rdiff.modality import Modality
    from rdiff.reconstructor import Reconstructor


def list_backbones() -> list[str]:
    return sorted(plugins().entries["backbone"])


def list_adaptors() -> list[str]:
    return sorted(plugins().entries["adaptor"])


def list_modalities() -> list[str]:
    return sorted(plugins().entries["modality"])


def get_preset(backbone: str, name: str) -> dict[str, Any]:
    """The named preset of a backbone: a partial run configuration (``model``, ``train``, ``eval``)."""
    entry = plugins().get("backbone", backbone)
    presets = entry.presets
    if name not in presets:
        raise UserError(f"backbone '{backbone}' has no preset '{name}'{did_you_mean(name, presets)}; "
                        f"presets: {', '.join(presets) or 'none'}.")
    return presets[name] or {}


def _config(entry, values: dict[str, Any], where: str) -> Any:
    if entry.config is None:
        if values:
            raise UserError(f"{entry.kind} '{entry.name}' takes no options, got '{where}.{next(iter(values))}'.")
        return None
    try:
        return build(entry.config, values, where)
    except UserError as exc:  # keys written for the built-in whose name another plugin now holds: say so
        origin = getattr(plugins().info.get(entry.plugin), "distribution", None)
        if origin == "rdiff" or not str(exc).startswith("unknown config key") or entry.name not in catalogue().get(
                {"backbone": "backbones", "adaptor": "adaptors"}.get(entry.kind, "modalities"), {}):
            raise
        raise UserError(f"{str(exc)[:-1]}; {entry.kind} '{entry.name}' now comes from plugin '{entry.plugin}' "
                        f"({plugins().origin(entry.plugin)}), not from rdiff's built-in, which is blocked or not "
                        f"loaded, and takes other keys.") from None


def create_backbone(name: str, preset: str | None = "tiny", channels: int = 3, *,
                    pretrained: bool | str | None = None, **overrides: Any) -> Reconstructor:
    """A backbone built from a preset's ``model`` section with ``overrides`` on top; with ``pretrained``,
    loaded with shipped phase-1 weights (``True``, a modality such as ``"fundus"``, or a full name such as
    ``"ldm-unet.tiny-fundus"``; see :mod:`rdiff.pretrained`).

    >>> rdiff.create_backbone("ldm-unet", preset="paper")  # doctest: +SKIP
    >>> rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="fundus")  # doctest: +SKIP
    """
    entry = plugins().get("backbone", name)
    values = merge(get_preset(name, preset).get("model", {}) if preset else {}, overrides)
    checkpoint = None
    if pretrained:
        from rdiff import pretrained as shipped

        # the checkpoint's own phase-1 model section, which may differ from its preset's in phase-1 loss weights
        checkpoint = shipped.find(name, preset, pretrained)
        values = merge(merge(values, shipped.phase1_model(checkpoint)), overrides)
        shipped.check_model(checkpoint, to_dict(_config(entry, values, "model")) if entry.config else values)
    backbone = entry.build(_config(entry, values, "model"), channels)
    backbone.registered_name = name
    if checkpoint is not None:
        shipped.load_into(backbone, checkpoint)
    return backbone


def create_adaptor(name: str, backbone: Reconstructor, **overrides: Any) -> Adaptor:
    """An adaptor attached to (and only to) ``backbone``, whose own parameters are frozen."""
    from rdiff.adaptor import check_requires  # torch: loaded by now, since the backbone exists

    entry = plugins().get("adaptor", name)
    check_requires(name, entry.requires, backbone)
    backbone.requires_grad_(False)
    return entry.build(_config(entry, overrides, "adaptor_options"), backbone)


def create_modality(name: str, **overrides: Any) -> Modality:
    entry = plugins().get("modality", name)
    return entry.build(_config(entry, overrides, "modality_options"))


def resolve_config(layers: list[dict[str, Any]]) -> Any:
    """Merge configuration layers over the backbone's preset and the modality's and adaptor's ``train`` defaults.

    The plugin sections (model, adaptor_options, modality_options) are validated against the dataclass
    each plugin registered and stored fully resolved, so config.yaml says everything that was used."""
    top: dict[str, Any] = {}
    for layer in layers:
        top = merge(top, layer)
    chosen = build(RunConfig, {k: v for k, v in top.items() if k in ("backbone", "preset", "adaptor", "modality")})
    preset = get_preset(chosen.backbone, chosen.preset)  # first, so that an unknown backbone is what is reported
    own = merge(plugins().get("modality", chosen.modality).train, plugins().get("adaptor", chosen.adaptor).train)
    config = build(RunConfig, merge(merge(preset, {"train": own}), top))
    for kind, name, section in (("backbone", config.backbone, "model"), ("adaptor", config.adaptor, "adaptor_options"),
                                ("modality", config.modality, "modality_options")):
        built = _config(plugins().get(kind, name), getattr(config, section), section)
        setattr(config, section, to_dict(built) if built is not None else {})
    return config


def create_components(config: Any) -> tuple[Modality, Reconstructor]:
    """The modality and the (untrained) backbone of a resolved run configuration: the one place a run's
    components are assembled, for training (engine) and for loading (run)."""
    modality = create_modality(config.modality, **config.modality_options)
    backbone = create_backbone(config.backbone, preset=None, channels=modality.channels, **config.model)
    return modality, backbone
