"""Phase-1 weights that ship inside plugin packages, timm-style: ``<backbone>.<preset>-<modality>``.

A checkpoint is a folder in the installed package, laid out like a run's phase 1::

    tiny-fundus/config.yaml       the resolved configuration it was trained with (backbone, preset, model, ...)
    tiny-fundus/reconstruct/      the phase-1 networks (diffusers layout) and stages.json
    tiny-fundus/MODEL_CARD.md     data and licence, the command that rebuilds it, steps, time, ceiling
    tiny-fundus/ceiling.json      its fidelity measured on held-out images (optional)

A plugin declares its folders with the ``rdiff_register_pretrained`` hook; rdiff never downloads anything.
``rdiff adapt --from pretrained:NAME``, ``rdiff train --pretrained`` and
``rdiff.create_backbone(name, preset, pretrained=...)`` use them; ``rdiff list pretrained`` lists them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rdiff.config import load_yaml
from rdiff.errors import UserError, did_you_mean
from rdiff.plugins import plugins

PREFIX = "pretrained:"


@dataclass(frozen=True)
class Pretrained:
    """One shipped phase-1 checkpoint."""

    name: str  # "<backbone>.<preset>-<modality>"
    backbone: str
    preset: str
    modality: str
    directory: Path
    plugin: str

    @property
    def config(self) -> dict[str, Any]:
        return load_yaml(self.directory / "config.yaml")

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.directory / "reconstruct").rglob("*.safetensors"))

    @property
    def ceiling(self) -> dict[str, Any]:
        """The fidelity measured on held-out images when the checkpoint was made (empty if not shipped)."""
        path = self.directory / "ceiling.json"
        return json.loads(path.read_text()) if path.is_file() else {}


class RegisterPretrained:
    """The callable ``rdiff_register_pretrained`` receives: ``register(directory)`` for each checkpoint
    folder; its name comes from the backbone, preset and modality in its config.yaml."""

    def __init__(self, table: dict[str, Pretrained], plugin: str):
        self._table, self._plugin = table, plugin

    def __call__(self, directory: str | Path) -> None:
        directory = Path(directory)
        config_file = directory / "config.yaml"
        if not config_file.is_file() or not (directory / "reconstruct").is_dir():
            raise ValueError(f"pretrained folder '{directory}' needs config.yaml and reconstruct/")
        config = load_yaml(config_file)
        backbone, preset, modality = config.get("backbone"), config.get("preset"), config.get("modality")
        if not (backbone and preset and modality):
            raise ValueError(f"'{config_file}' must name its backbone, preset and modality")
        name = f"{backbone}.{preset}-{modality}"
        if name in self._table:
            raise ValueError(f"pretrained '{name}' is already registered by plugin '{self._table[name].plugin}'")
        self._table[name] = Pretrained(name, backbone, preset, modality, directory.resolve(), self._plugin)


@lru_cache(maxsize=1)
def _registered() -> dict[str, Pretrained]:
    loaded = plugins()
    table: dict[str, Pretrained] = {}
    for impl in loaded.pm.hook.rdiff_register_pretrained.get_hookimpls():
        name = loaded.pm.get_name(impl.plugin)
        try:
            impl.function(register=RegisterPretrained(table, name))
        except Exception as exc:  # noqa: BLE001 - one plugin's bad folder must not hide the others
            loaded.broken[name] = f"{type(exc).__name__} while registering pretrained weights: {exc}"
    return table


def list_pretrained() -> list[Pretrained]:
    return [_registered()[name] for name in sorted(_registered())]


def get_pretrained(name: str) -> Pretrained:
    """The checkpoint called ``name`` (``pretrained:`` prefix allowed); a UserError lists the others."""
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    table = _registered()
    if name not in table:
        known = ", ".join(table) or "none"
        raise UserError(f"no pretrained weights '{name}'{did_you_mean(name, table)}; shipped: {known} "
                        f"(see `rdiff list pretrained`).")
    return table[name]


def find(backbone: str, preset: str | None, pretrained: bool | str) -> Pretrained:
    """What ``create_backbone(backbone, preset, pretrained=...)`` means: ``True`` — the only checkpoint of
    that backbone and preset; a modality (``"fundus"``); a preset-modality tag (``"tiny-fundus"``); or a
    full name (``"ldm-unet.tiny-fundus"``)."""
    if isinstance(pretrained, str):
        if "." in pretrained:
            return get_pretrained(pretrained)
        tag = pretrained if "-" in pretrained and preset and pretrained.startswith(f"{preset}-") else f"{preset}-{pretrained}"
        return get_pretrained(f"{backbone}.{tag}")
    choices = [p for p in list_pretrained() if p.backbone == backbone and (preset is None or p.preset == preset)]
    if len(choices) != 1:
        names = ", ".join(p.name for p in choices) or "none"
        raise UserError(f"pretrained=True is ambiguous for backbone '{backbone}' preset '{preset}': name the "
                        f"modality, e.g. pretrained='fundus' (shipped for it: {names}).")
    return choices[0]


def model_hash(model: dict[str, Any]) -> str:
    """A short hash of a model section: equal hashes, equal networks."""
    return hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode()).hexdigest()[:12]


def phase1_model(checkpoint: Pretrained, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """``model`` (default: the checkpoint's model section) without the keys that steer phase 2 only: the
    networks as they were trained, adapted with the phase-2 losses of the preset in use now."""
    from rdiff.plugins import plugins  # the backbone config's ADAPTATION_KEYS steer phase 2 only

    free = frozenset(getattr(plugins().get("backbone", checkpoint.backbone).config, "ADAPTATION_KEYS", ()))
    return {k: v for k, v in (checkpoint.config.get("model", {}) if model is None else model).items() if k not in free}


def check_model(checkpoint: Pretrained, model: dict[str, Any]) -> None:
    """Refuse, in one sentence, a model configuration the checkpoint was not trained with (keys that steer
    phase 2 only may differ)."""
    trained, model = phase1_model(checkpoint), phase1_model(checkpoint, model)
    if model_hash(trained) == model_hash(model):
        return
    differing = sorted(k for k in set(trained) | set(model) if trained.get(k) != model.get(k))
    key = differing[0]
    raise UserError(f"pretrained '{checkpoint.name}' was trained with model.{key}={trained.get(key)!r}, not "
                    f"{model.get(key)!r} ({len(differing)} model key(s) differ); drop the override or train "
                    f"phase 1 yourself.")


def load_into(backbone: Any, checkpoint: Pretrained) -> None:
    """Load the checkpoint's phase-1 networks into ``backbone``, naming the checkpoint if they do not fit."""
    try:
        backbone.load(checkpoint.directory / "reconstruct")
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"pretrained '{checkpoint.name}' does not fit backbone '{checkpoint.backbone}' as built "
                        f"here ({str(exc).splitlines()[0]}).") from None
