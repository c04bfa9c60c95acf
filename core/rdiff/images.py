"""Reading and writing images of any common kind: PNG/JPEG/TIFF, 8 or 16 bit, grey, RGB or RGBA.

Images come back as ``H×W×C`` float32 in [0, 1]; the file's format and bit depth are remembered so an
enhanced image can be written back the way it came in.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rdiff.errors import UserError

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """``H×W×channels`` float32 in [0, 1]. Grey becomes RGB when 3 channels are asked and vice versa;
    alpha is dropped. Raises :class:`UserError` naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file '{path}' does not exist.")
    try:
        array = _read_raw(path)
    except Exception as exc:  # noqa: BLE001 - every decoder error means the same to a user
        raise UserError(f"cannot read image '{path}': {type(exc).__name__}: {exc}".rstrip(".") + ".") from None
    return to_float(array, channels, str(path))


def _read_raw(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:
        return _read_png16(path)
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int32)
        if im.mode not in ("L", "RGB", "RGBA", "LA"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        return np.asarray(im)


def to_float(array: np.ndarray, channels: int = 3, name: str = "image") -> np.ndarray:
    """Any integer or float array (H×W or H×W×C) as ``H×W×channels`` float32 in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or min(array.shape[:2]) < 2:  # 2×2: the smallest image every resize, pad and metric takes
        raise UserError(f"'{name}' is too small or not a 2-D image: images need 2×2 px at least (shape {array.shape}).")
    if array.shape[2] in (2, 4):  # drop alpha
        array = array[..., :-1]
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.integer):
        out = array.astype(np.float32) / max(float(array.max()), 1.0)
    else:
        out = np.clip(array.astype(np.float32), 0.0, 1.0)
    if out.shape[2] == channels:
        return np.ascontiguousarray(out)
    if channels == 1:  # luminance (ITU-R 601)
        return np.ascontiguousarray(out[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if out.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(out, channels, axis=2))
    raise UserError(f"'{name}' has {out.shape[2]} channels; this modality needs {channels}.")


def bit_depth(path: str | Path) -> int:
    """8 or 16: the bit depth of an existing image file."""
    try:
        return 16 if _read_raw(Path(path)).dtype in (np.uint16, np.int32) else 8
    except Exception:  # noqa: BLE001
        return 8


def temp_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """A new temporary file next to ``path`` for an atomic write (write it, then ``os.replace``): an open
    descriptor and its name. It is created as any file is, so the umask sets its permissions (``mkstemp``
    would make it private, and so would be every file written through it)."""
    fd, name = _create_beside(path, suffix, lambda name: os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return fd, str(name)


@contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[str]:
    """Write ``path`` atomically: the block writes the temporary file it is given (a name beside ``path``),
    which then replaces ``path``; if the block fails it is removed and ``path`` is left as it was. Every
    file rdiff writes goes through here (images, volumes, JSON, weights)."""
    fd, tmp = temp_beside(Path(path), suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # a write cut short inside the block (a full disk) names the file it was writing
        exc.filename = exc.filename or str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def temp_dir_beside(path: Path) -> Path:
    """A new temporary folder next to ``path``, created as any folder is (``mkdtemp`` would make it private)."""
    return _create_beside(path, ".tmp", lambda name: os.mkdir(name, 0o777))[1]


def _create_beside(path: Path, suffix: str, create: Callable[[Path], Any], tries: int = 100) -> tuple[Any, Path]:
    """``(create(name), name)`` for the first free hidden name ``.NAME.<12 hex>SUFFIX`` next to ``path``."""
    for _ in range(tries):
        name = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            return create(name), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to '{path}'")


def write_image(path: str | Path, image: np.ndarray, like: str | Path | None = None, bits: int | None = None) -> Path:
    """Write ``H×W×C`` (C = 1 or 3) float image in [0, 1] atomically. The format follows ``path``'s suffix;
    the bit depth follows ``bits``, else ``like``'s file, else 8 (JPEG is always 8 bit)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if bits is None:
        bits = bit_depth(like) if like is not None else 8
    if suffix in (".jpg", ".jpeg", ".bmp"):
        bits = 8
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    scale, dtype = (65535.0, np.uint16) if bits == 16 else (255.0, np.uint8)
    data = np.round(image * scale).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, data)
        elif suffix == ".png" and bits == 16:
            _write_png16(tmp, data)
        else:
            from PIL import Image

            Image.fromarray(data).save(tmp, **({"quality": 95} if suffix in (".jpg", ".jpeg") else {}),
                                       format={".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(suffix, "PNG"))
    return path


def _png_bit_depth(path: Path) -> int:
    """The bit depth in a PNG's IHDR chunk (byte 24), or 8 if the header is not readable."""
    with open(path, "rb") as f:
        header = f.read(26)
    return header[24] if len(header) == 26 and header[:8] == b"\x89PNG\r\n\x1a\n" else 8


# Pillow silently truncates 16-bit colour PNGs to 8 bits; pypng reads and writes every PNG bit depth.
def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return data.reshape(height, width, planes) if planes > 1 else data.reshape(height, width)


def _write_png16(path: str, data: np.ndarray) -> None:
    import png

    height, width = data.shape[:2]
    planes = 1 if data.ndim == 2 else data.shape[2]
    writer = png.Writer(width, height, bitdepth=16, greyscale=planes == 1, alpha=False)
    with open(path, "wb") as f:
        writer.write(f, data.reshape(height, width * planes))


def list_images(folder: str | Path, suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    """Every image below ``folder`` (recursive, sorted); hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder '{folder}' does not exist or is not a folder.")
    found = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))
    if not found:
        raise UserError(f"data folder '{folder}' holds no images ({', '.join(suffixes)}).")
    return found


def pair_files(folder: str | Path, suffixes: tuple[str, ...] = SUFFIXES) -> tuple[dict[str, Path], dict[str, Path]]:
    """The images of a pairs folder's ``lq/`` and ``hq/``, each side by stem (its path inside the side,
    without suffix). Partners are not matched here: the caller says which stems lack one."""
    root = Path(folder)
    sides = (root / "lq", root / "hq")
    for side in sides:
        if not side.is_dir():
            raise UserError(f"pairs folder '{root}' needs the sub-folders lq/ and hq/; '{side}' is missing.")
    lq, hq = ({p.relative_to(side).with_suffix("").as_posix(): p for p in list_images(side, suffixes)}
              for side in sides)
    return lq, hq


def expand_inputs(inputs: list[str], suffixes: tuple[str, ...] = SUFFIXES) -> list[tuple[Path, Path]]:
    """Files, folders (recursive) and glob patterns -> ``(file, path relative to its input)`` pairs, in order,
    without duplicates. An input that matches nothing raises :class:`UserError` naming it."""
    import glob
    import itertools

    out: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found = [(p, p.relative_to(path)) for p in list_images(path, suffixes)]
        elif path.is_file():
            found = [(path, Path(path.name))]
        else:
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            # names stay relative to the pattern's fixed part, so data/*/x.png keeps its sub-folders apart
            fixed = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), Path(spec).parts))
            found = [(m, m.relative_to(fixed) if m.is_relative_to(fixed) else Path(m.name))
                     for m in matches if m.is_file() and m.suffix.lower() in suffixes]
            if not found:
                raise UserError(f"input '{spec}' is not a file, a folder or a pattern that matches images.")
        for file, rel in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                out.append((file, rel))
    return out


def plan_outputs(inputs: list[tuple[Path, Path]], out_dir: str | Path, outputs: Callable[[Path], list[Path]],
                 remedy: str = "choose another output folder (--out)") -> list[tuple[Path, Path, list[Path]]]:
    """The guard of every command that writes files made from input files into a folder (``enhance``, ``degrade``):
    ``(file, relative, [output, ...])`` for each :func:`expand_inputs` pair, outputs ``outputs(relative)`` below
    ``out_dir``; refused before anything is written when one would land outside it, over an input or over another."""
    out_dir, plan, taken = Path(out_dir), [], {file.resolve(): f"the input '{file}'" for file, _ in inputs}
    if out_dir.is_file():
        raise UserError(f"output folder '{out_dir}' is a file; choose another --out.")
    for file, relative in inputs:
        plan.append((file, relative, [out_dir / name for name in outputs(relative)]))
        for output, where in ((output, output.resolve()) for output in plan[-1][2]):
            if not where.is_relative_to(out_dir.resolve()):
                raise UserError(f"'{file}' would be written to '{output}', outside the output folder '{out_dir}'.")
            if where in taken:
                raise UserError(f"writing '{output}' would overwrite {taken[where]}; {remedy}.")
            taken[where] = f"the output of '{file}'"
    return plan
