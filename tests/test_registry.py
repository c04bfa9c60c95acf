"""registry.yaml is data only and says exactly what the built-in plugins register."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from rdiff.catalogue import catalogue
from rdiff.plugins import plugins

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
            assert {"tiny", "base"} <= set(row["presets"])
        if kind == "adaptor":
            assert sorted(row["requires"]) == sorted(entry.requires)


def test_every_preset_is_a_valid_run_configuration():
    from rdiff.cli import resolve_config

    for name, row in catalogue()["backbones"].items():
        for preset in row["presets"]:
            config = resolve_config([{"backbone": name, "preset": preset}])
            assert config.backbone == name and config.model  # the model section resolved against its dataclass


def test_registry_holds_no_import_paths():
    from importlib import resources

    content = resources.files("rdiff").joinpath("registry.yaml").read_text()
    assert not re.search(r"\b[a-z_]+(\.[a-z_]+)+:[A-Za-z_]+\b", content), "looks like module:attribute"
    assert not re.search(r"\brdiff_[a-z_]+\.", content), "names a plugin module"


def test_ldm_unet_paper_preset_matches_the_paper():
    preset = catalogue()["backbones"]["ldm-unet"]["presets"]["paper"]
    assert preset["train"]["image_size"] == 512
