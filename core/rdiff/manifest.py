"""What a run holds: ``RUN/manifest.json`` lists every final weight file with its size and SHA-256.

Training checkpoints already carry such a manifest (:mod:`rdiff.checkpoints`); the final weights get one
too, so that a deleted, truncated or corrupted weight file is found and named when the run is loaded,
instead of surfacing as a decoder traceback or, worse, as a run that silently enhances without its
adaptor. The layout::

    {"files": {"reconstruct/autoencoder/diffusion_pytorch_model.safetensors": {"bytes": ..., "sha256": ...},
               "adapt/adaptor.safetensors": {...}}}

Paths are relative to the run directory. Runs written before the manifest existed have none; they are
loaded as before (a damaged file is still named, by the loader).
"""

from __future__ import annotations

import json
from pathlib import Path

from rdiff.errors import UserError

MANIFEST = "manifest.json"
ADAPTOR = "adapt/adaptor.safetensors"
_SKIP_DIRS = {"checkpoint", "checkpoint.prev"}


def _weight_files(folder: Path) -> list[Path]:
    """The weight files below ``folder``, training checkpoints and temporary files excluded."""
    found = []
    for path in sorted(folder.rglob("*.safetensors")):
        relative = path.relative_to(folder)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in relative.parts):
            continue
        found.append(path)
    return found


def read(run_dir: str | Path) -> dict[str, dict]:
    """The files recorded for ``run_dir`` (empty when it has no manifest)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("files", {}))
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"'{path}' is damaged ({type(exc).__name__}: {exc}); it lists the run's weight files "
                        f"with their sizes and checksums.") from None


def record(run_dir: str | Path, folder: str | Path) -> None:
    """Record (or re-record) every weight file below ``folder``, a sub-folder of ``run_dir``; entries of
    files no longer there are dropped."""
    from rdiff.checkpoints import _sha256, write_json

    run_dir, folder = Path(run_dir), Path(folder)
    prefix = folder.relative_to(run_dir).as_posix().rstrip("/") + "/"
    files = {k: v for k, v in read(run_dir).items() if not k.startswith(prefix)}
    for path in _weight_files(folder):
        files[path.relative_to(run_dir).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    write_json(run_dir / MANIFEST, {"files": dict(sorted(files.items()))})


def problem(run_dir: Path, relative: str, expected: dict) -> str | None:
    """Why the recorded file ``relative`` is not as recorded, or ``None``."""
    from rdiff.checkpoints import _sha256

    path = run_dir / relative
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected.get("bytes"):
        return f"is damaged: it has {size} bytes, {expected.get('bytes')} were written"
    if _sha256(path) != expected.get("sha256"):
        return "is damaged: its content does not match the checksum recorded when it was written"
    return None


def verify(run_dir: str | Path, under: str, *, hint: str = "") -> None:
    """Refuse, naming the file, when a weight file recorded under ``under`` (e.g. ``reconstruct``) is missing
    or damaged."""
    run_dir = Path(run_dir)
    for relative, expected in read(run_dir).items():
        if not relative.startswith(under.rstrip("/") + "/"):
            continue
        why = problem(run_dir, relative, expected)
        if why:
            raise UserError(f"weight file '{run_dir / relative}' {why} (see '{run_dir / MANIFEST}'){hint}.")


def expects_adaptor(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` finished phase 2: its manifest lists the adaptor, or phase 2's own record
    (``adapt/adaptor.json``) or report says so. Used to refuse enhancing an adapted run without its adaptor."""
    run_dir = Path(run_dir)
    if ADAPTOR in read(run_dir) or (run_dir / "adapt" / "adaptor.json").is_file():
        return True
    report = run_dir / "report.json"
    if report.is_file():
        try:
            return bool(json.loads(report.read_text(encoding="utf-8")).get("adapt"))
        except (OSError, ValueError, AttributeError):
            return False
    return False
