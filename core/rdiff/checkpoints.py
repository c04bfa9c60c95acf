"""Weights and resumable training state on disk: safetensors, atomic, verified.

- A network saves in diffusers' layout (``config.json`` + safetensors via ``save_pretrained``) so a
  user can load it straight into diffusers; anything else saves ``model.safetensors``.
- A training checkpoint is a folder with ``manifest.json`` (sizes and SHA-256 of every file). It is
  written to a temporary folder and renamed into place, and the previous one is kept as ``*.prev``: a
  run killed at any moment, or a checkpoint truncated on disk, falls back to the last complete one.
- Optimiser and RNG state are plain tensors and numbers, saved with ``torch.save`` and loaded only with
  ``torch.load(weights_only=True)``. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rdiff.images import atomic_file, temp_dir_beside

MANIFEST = "manifest.json"


# --- atomic folders -----------------------------------------------------------------------------------------


def _swap_into_place(tmp: Path, final: Path, keep_previous: bool) -> None:
    previous = final.with_name(final.name + ".prev")
    if final.exists():
        if keep_previous:
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(final, previous)
        else:
            shutil.rmtree(final)
    os.replace(tmp, final)


def _tmp_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return temp_dir_beside(final)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically (temp file, fsync, rename), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))


def write_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically."""
    from safetensors.torch import save

    write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


# --- networks -----------------------------------------------------------------------------------------------


def save_network(net: nn.Module, directory: Path) -> None:
    tmp = _tmp_dir(directory)
    try:
        if hasattr(net, "save_pretrained"):
            net.save_pretrained(tmp, safe_serialization=True)
        else:
            save_file(_contiguous(net.state_dict()), tmp / "model.safetensors")
        _swap_into_place(tmp, directory, keep_previous=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def network_file(directory: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (directory / name).is_file():
            return directory / name
    from rdiff.errors import UserError

    raise UserError(f"no weights in '{directory}' (expected a .safetensors file saved by rdiff).")


def load_network(net: nn.Module, directory: Path) -> None:
    file = network_file(Path(directory))
    try:
        weights = load_file(file)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own type for truncated or corrupt files
        from rdiff.errors import UserError

        raise UserError(f"weight file '{file}' is damaged ({str(exc).splitlines()[0]}).") from None
    net.load_state_dict(weights, strict=True)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to own each tensor
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


# --- training checkpoints -------------------------------------------------------------------------------------


def save_checkpoint(directory: str | Path, *, tensors: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically.

    ``tensors``: named weight sets (each a state dict) saved as ``<name>.safetensors``;
    ``state``: optimiser/RNG state (tensors, numbers, lists, dicts) saved as ``state.pt``;
    ``info``: JSON-safe facts (phase, stage, step) saved in the manifest.
    """
    directory = Path(directory)
    tmp = _tmp_dir(directory)
    try:
        for name, weights in tensors.items():
            save_file(_contiguous(weights), tmp / f"{name}.safetensors")
        torch.save(state, tmp / "state.pt")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        write_json(tmp / MANIFEST, {"info": info, "files": files})
        _swap_into_place(tmp, directory, keep_previous=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any], Path] | None:
    """The newest complete checkpoint at ``directory`` (or its ``.prev``): ``(tensors, state, info, path)``;
    ``None`` when neither exists or verifies. A damaged one is reported and skipped."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(directory.name + ".prev")):
        if not (candidate / MANIFEST).is_file():
            continue
        problem = verify(candidate)
        if problem:
            import warnings

            warnings.warn(f"checkpoint '{candidate}' is damaged ({problem}); trying an older one", stacklevel=2)
            continue
        manifest = json.loads((candidate / MANIFEST).read_text())
        tensors = {p.stem: load_file(p) for p in candidate.glob("*.safetensors")}
        state = torch.load(candidate / "state.pt", map_location="cpu", weights_only=True)
        return tensors, state, manifest["info"], candidate
    return None


def verify(directory: Path) -> str | None:
    """Why a checkpoint folder is not intact, or ``None`` when it is."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, expected {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
