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
    "create_backbone": "rdiff.registry", "create_adaptor": "rdiff.registry", "create_modality": "rdiff.registry",
    "list_backbones": "rdiff.registry", "list_adaptors": "rdiff.registry", "list_modalities": "rdiff.registry",
    "get_preset": "rdiff.registry", "resolve_config": "rdiff.registry",
    "load_run": "rdiff.api", "train": "rdiff.api",
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
