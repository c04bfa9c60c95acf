"""registry.yaml: the catalogue of built-in plugins and their named presets. Data only, never code."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Any]:
    """The parsed registry.yaml shipped inside the ``rdiff`` package (a link to the repository root's)."""
    text = resources.files("rdiff").joinpath("registry.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}
