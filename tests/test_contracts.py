"""rdiff.testing's contract mixins applied to every built-in plugin, to the toy plugin (the mixins proven on
a minimal plugin) and to the third-party example in examples/rdiff-histology.

A built-in component that is not registered yet (its plugin fails to import, or a backbone has no ``tiny``
preset yet) is skipped with the reason, so the rest still runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rdiff.plugins import catalogue
from rdiff.plugins import Plugins
from rdiff.testing import AdaptorContract, BackboneContract, ModalityContract

BUILTIN = {"backbone": ("cnn-ae", "dit", "ldm-unet"), "adaptor": ("controlnet", "lora", "residual"),
           "modality": ("fundus", "oct", "photo")}
HISTOLOGY_SRC = Path(__file__).resolve().parents[1] / "examples" / "rdiff-histology" / "src"

_loaded = Plugins(autoload=True)  # the installed plugins, looked at once to decide what to generate


def _why_missing(kind: str, name: str) -> str | None:
    """Why a built-in cannot be checked yet, or None when it can."""
    if name in _loaded.entries[kind]:
        entry = _loaded.entries[kind][name]
        if kind == "backbone" and "tiny" not in entry.presets:
            return f"backbone '{name}' has no 'tiny' preset yet (its plugin.yaml)"
        return None
    plugin = catalogue().get({"backbone": "backbones", "adaptor": "adaptors", "modality": "modalities"}[kind],
                             {}).get(name, {}).get("plugin", name)
    if plugin in _loaded.broken:
        return f"plugin '{plugin}' does not import yet: {_loaded.broken[plugin]}"
    return f"{kind} '{name}' is not registered by any installed plugin"


def _contract(base: type, name: str, missing: str | None, **attributes) -> type:
    cls = type(name, (base,), {"__doc__": f"{base.__name__} on {attributes}", **attributes})
    return pytest.mark.skip(reason=missing)(cls) if missing else cls


for _name in BUILTIN["modality"]:
    _cls = _contract(ModalityContract, f"TestModality_{_name}", _why_missing("modality", _name), modality=_name)
    globals()[_cls.__name__] = _cls

for _name in BUILTIN["backbone"]:
    _cls = _contract(BackboneContract, f"TestBackbone_{_name.replace('-', '_')}", _why_missing("backbone", _name),
                     backbone=_name)
    globals()[_cls.__name__] = _cls

for _backbone in BUILTIN["backbone"]:
    for _adaptor in BUILTIN["adaptor"]:
        _missing = _why_missing("backbone", _backbone) or _why_missing("adaptor", _adaptor)
        if not _missing:
            requires = set(_loaded.entries["adaptor"][_adaptor].requires)
            if not requires <= set(_loaded.entries["backbone"][_backbone].capabilities):
                continue  # an impossible pairing: AdaptorContract checks that it is refused
        _cls = _contract(AdaptorContract, f"TestAdaptor_{_adaptor}_on_{_backbone.replace('-', '_')}", _missing,
                         adaptor=_adaptor, backbone=_backbone)
        globals()[_cls.__name__] = _cls


# --- the same mixins on the toy plugin (tests/toy_plugin.py): only it is loaded ------------------------------


@pytest.mark.usefixtures("toy")
class TestToyModality(ModalityContract):
    modality = "toy"


@pytest.mark.usefixtures("toy")
class TestToyBackbone(BackboneContract):
    backbone = "toy"


@pytest.mark.usefixtures("toy")
class TestToyAdaptor(AdaptorContract):
    adaptor = "toy-adaptor"
    backbone = "toy"


@pytest.mark.usefixtures("toy")
class TestToyAdaptorWithRandomInit(AdaptorContract):
    """An adaptor that does not start as the identity still passes the rest of the contract."""

    adaptor = "toy-adaptor"
    backbone = "toy"
    options = {"zero_init": False}
    identity_at_init = False


# --- the third-party example, loaded from its source tree without installing it ------------------------------


@pytest.fixture
def histology(monkeypatch):
    from rdiff import plugins

    if "histology" not in _loaded.entries["modality"]:  # not pip-installed: load it by module name
        monkeypatch.syspath_prepend(str(HISTOLOGY_SRC))
        monkeypatch.setenv("RDIFF_PLUGINS", "rdiff_histology")
    plugins.reset()
    yield
    plugins.reset()
    for module in [m for m in sys.modules if m == "rdiff_histology" or m.startswith("rdiff_histology.")]:
        del sys.modules[module]  # imported from the source tree for this test only


@pytest.mark.usefixtures("histology")
class TestHistologyExample(ModalityContract):
    modality = "histology"
