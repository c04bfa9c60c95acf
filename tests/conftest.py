from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # toy_plugin and toy_components import as top-level modules
sys.path.insert(0, str(TESTS.parent / "tools"))  # the development scripts (docgen) are not installed

# CPU tests: one thread per process (torchrun tests start several) and never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # several test processes share two cores


@pytest.fixture
def toy(monkeypatch):
    """Only the toy plugin is loaded (no built-ins): core behaviour tested in isolation."""
    from rdiff import plugins

    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def toy_tools(toy, monkeypatch):
    """The toy plugin and the built-in tool plugins that add ``--dry-run`` and ``rdiff degrade``."""
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,rdiff_estimate,rdiff_degrade")


@pytest.fixture(autouse=True)
def _fresh_plugins():
    from rdiff import plugins

    plugins.reset()
    yield
    plugins.reset()
