"""rdiff: medical image enhancement by reconstruction, then adaptation.

The public API is imported lazily so that ``import rdiff`` (and ``rdiff --help``) stays fast and does not
pull in torch until a model is actually built.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from rdiff.errors import UserError
from rdiff.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "create_backbone": "rdiff.api", "create_adaptor": "rdiff.api", "create_modality": "rdiff.api",
    "list_backbones": "rdiff.api", "list_adaptors": "rdiff.api", "list_modalities": "rdiff.api",
    "load_run": "rdiff.api", "get_preset": "rdiff.api", "train": "rdiff.api", "resolve_config": "rdiff.cli",
    "Modality": "rdiff.modality", "ModalityConfig": "rdiff.modality",
    "Reconstructor": "rdiff.reconstructor", "AdaptationTarget": "rdiff.reconstructor",
    "Adaptor": "rdiff.adaptor",
    "RunConfig": "rdiff.config", "TrainConfig": "rdiff.config", "EvalConfig": "rdiff.config",
    "Run": "rdiff.run",
}

__all__ = ["UserError", "hookimpl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rdiff' has no attribute '{name}'")
