"""Each built-in plugin declares its components (summary, capabilities, requires, presets) once, in its own
plugin.yaml; registry.yaml is the catalogue generated from what they register, data only, and up to date."""

from __future__ import annotations

import re
from importlib import metadata, resources

import pytest

from rdiff.plugins import catalogue
from rdiff.plugins import plugins
from rdiff.registry import create_backbone

# the built-in plugins that declare components in a plugin.yaml
BUILTIN_PACKAGES = ["rdiff_adaptors", "rdiff_cnn_ae", "rdiff_dit", "rdiff_fundus", "rdiff_ldm_unet", "rdiff_oct",
                    "rdiff_photo"]

PLURAL = {"backbone": "backbones", "adaptor": "adaptors", "modality": "modalities"}


def builtin_plugin_names() -> set[str]:
    return {ep.name for ep in metadata.entry_points(group="rdiff") if ep.dist and ep.dist.name == "rdiff"}


def test_every_builtin_plugin_loads():
    loaded = plugins()
    broken = {n: e for n, e in loaded.broken.items() if n in builtin_plugin_names()}
    assert not broken
    assert builtin_plugin_names() <= set(loaded.info)


@pytest.mark.parametrize("kind", list(PLURAL))
def test_catalogue_equals_registrations(kind):
    loaded = plugins()
    registered = {n: e for n, e in loaded.entries[kind].items() if e.plugin in builtin_plugin_names()}
    listed = catalogue()[PLURAL[kind]]
    assert set(listed) == set(registered)
    for name, entry in registered.items():
        row = listed[name]
        assert row["plugin"] == entry.plugin and row["package"] == "rdiff"
        assert row["summary"] == entry.summary
        if kind == "backbone":
            assert sorted(row["capabilities"]) == sorted(entry.capabilities)
            assert row["presets"] == list(entry.presets) and {"tiny", "base"} <= set(entry.presets)
        if kind == "adaptor":
            assert sorted(row["requires"]) == sorted(entry.requires)


def test_the_catalogue_is_generated_from_the_registrations():
    import docgen

    content = resources.files("rdiff").joinpath("registry.yaml").read_text(encoding="utf-8")
    assert content == docgen.catalogue_yaml(), "registry.yaml is out of date: run `python tools/docgen.py`"


def test_a_backbone_class_offers_what_its_plugin_declares():
    """Capabilities are declared once (plugin.yaml): the class attribute is read from the same declaration."""
    for name, entry in plugins().entries["backbone"].items():
        if entry.plugin in builtin_plugin_names():
            backbone = create_backbone(name, preset="tiny")
            assert sorted(backbone.capabilities) == sorted(entry.capabilities), name


def test_every_preset_is_a_valid_run_configuration():
    from rdiff.registry import resolve_config

    for name, entry in plugins().entries["backbone"].items():
        if entry.plugin not in builtin_plugin_names():
            continue
        for preset in entry.presets:
            config = resolve_config([{"backbone": name, "preset": preset}])
            assert config.backbone == name and config.model  # the model section resolved against its dataclass


@pytest.mark.parametrize("package", ["rdiff", *BUILTIN_PACKAGES])
def test_declarations_hold_no_import_paths(package):
    name = "registry.yaml" if package == "rdiff" else "plugin.yaml"
    content = resources.files(package).joinpath(name).read_text()
    assert not re.search(r"\b[a-z_]+(\.[a-z_]+)+:[A-Za-z_]+\b", content), "looks like module:attribute"
    assert not re.search(r"\brdiff_[a-z_]+\.", content), "names a plugin module"


def test_ldm_unet_paper_preset_matches_the_paper():
    preset = plugins().get("backbone", "ldm-unet").presets["paper"]
    assert preset["train"]["image_size"] == 512


def test_an_adaptor_class_requires_what_its_plugin_declares():
    from rdiff_adaptors.controlnet import ControlNetAdaptor
    from rdiff_adaptors.lora import LoRAAdaptor
    from rdiff_adaptors.residual import ResidualAdaptor

    for cls in (ControlNetAdaptor, LoRAAdaptor, ResidualAdaptor):
        assert sorted(cls.requires) == sorted(plugins().get("adaptor", cls.name).requires), cls.name
