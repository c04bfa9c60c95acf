"""Weights and resumable training state on disk: safetensors, atomic, verified.

- A network saves in diffusers' layout (``config.json`` + safetensors via ``save_pretrained``) so a
  user can load it straight into diffusers; anything else saves ``model.safetensors``.
- A training checkpoint is a folder with ``manifest.json`` (sizes and SHA-256 of every file). It is
  written to a temporary folder and renamed into place, and the previous one is kept as ``*.prev``: a
  run killed at any moment, or a checkpoint truncated on disk, falls back to the last complete one.
- Optimiser and RNG state are plain tensors and numbers, saved with ``torch.save`` and loaded only with
  ``torch.load(weights_only=True)``. Nothing is ever unpickled.
- A run's final weights get such a manifest too, ``RUN/manifest.json`` (:func:`record_weights`), so that a
  damaged or missing weight file is named when the run is loaded (:func:`verify_weights`), not found as a
  decoder traceback or a run silently enhancing without its adaptor. Paths are relative to the run::

      {"files": {"reconstruct/autoencoder/diffusion_pytorch_model.safetensors": {"bytes": ..., "sha256": ...},
                 "adapt/adaptor.safetensors": {...}}}

  Runs written before the manifest existed have none; they load as before (the loader names a damaged file).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from rdiff.errors import UserError
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


@contextmanager
def _writing(final: Path, keep_previous: bool) -> Any:
    """A temporary folder beside ``final`` to fill, swapped into place after the block, removed if it fails; a failed
    write that safetensors reports as its own error (errno in the text) becomes that OSError, naming ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        _swap_into_place(tmp, final, keep_previous=keep_previous)
    except Exception as exc:
        code = None if isinstance(exc, OSError) else re.search(r"os error (\d+)", str(exc))
        raise (OSError(int(code[1]), os.strerror(int(code[1])), str(final)) if code else exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


# --- networks -----------------------------------------------------------------------------------------------


def save_network(net: nn.Module, directory: Path) -> None:
    with _writing(directory, keep_previous=False) as tmp:
        if hasattr(net, "save_pretrained"):
            net.save_pretrained(tmp, safe_serialization=True)
        else:
            save_file(_contiguous(net.state_dict()), tmp / "model.safetensors")


def network_file(directory: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"no weights in '{directory}' (expected a .safetensors file saved by rdiff).")


def load_network(net: nn.Module, directory: Path) -> None:
    file = network_file(Path(directory))
    try:
        weights = load_file(file)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own type for truncated or corrupt files
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
    with _writing(directory, keep_previous=True) as tmp:
        for name, weights in tensors.items():
            save_file(_contiguous(weights), tmp / f"{name}.safetensors")
        torch.save(state, buffer := io.BytesIO())  # to memory: Python's file write says why it failed, torch's not
        write_bytes(tmp / "state.pt", buffer.getvalue())
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        write_json(tmp / MANIFEST, {"info": info, "files": files})
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
        why = _weight_problem(directory / name, expected)  # the same checks as a run's final weights
        if why:
            return f"{name} {why}"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- a run's final weights: RUN/manifest.json -----------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    """The weight files below ``folder``, training checkpoints and temporary files excluded."""
    found = []
    for path in sorted(folder.rglob("*.safetensors")):
        relative = path.relative_to(folder)
        if any(part in ("checkpoint", "checkpoint.prev") or part.startswith(".") for part in relative.parts):
            continue
        found.append(path)
    return found


def recorded_weights(run_dir: str | Path) -> dict[str, dict]:
    """The final weight files recorded for ``run_dir`` (empty when it has no manifest)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("files", {}))
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"'{path}' is damaged ({type(exc).__name__}: {exc}); it lists the run's weight files "
                        f"with their sizes and checksums.") from None


def record_weights(run_dir: str | Path, folder: str | Path) -> None:
    """Record (or re-record) every weight file below ``folder``, a sub-folder of ``run_dir``, in the run's
    manifest; entries of files no longer there are dropped."""
    run_dir, folder = Path(run_dir), Path(folder)
    prefix = folder.relative_to(run_dir).as_posix().rstrip("/") + "/"
    files = {k: v for k, v in recorded_weights(run_dir).items() if not k.startswith(prefix)}
    for path in _weight_files(folder):
        files[path.relative_to(run_dir).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    write_json(run_dir / MANIFEST, {"files": dict(sorted(files.items()))})


def _weight_problem(path: Path, expected: dict) -> str | None:
    """Why the recorded file ``path`` is not as recorded, or ``None``."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected.get("bytes"):
        return f"is damaged: it has {size} bytes, {expected.get('bytes')} were written"
    if _sha256(path) != expected.get("sha256"):
        return "is damaged: its content does not match the checksum recorded when it was written"
    return None


def verify_weights(run_dir: str | Path, under: str, *, hint: str = "") -> None:
    """Refuse, naming the file, when a weight file the run's manifest records under ``under`` (e.g.
    ``reconstruct``) is missing or damaged."""
    run_dir = Path(run_dir)
    for relative, expected in recorded_weights(run_dir).items():
        if not relative.startswith(under.rstrip("/") + "/"):
            continue
        why = _weight_problem(run_dir / relative, expected)
        if why:
            raise UserError(f"weight file '{run_dir / relative}' {why} (see '{run_dir / MANIFEST}'){hint}.")
