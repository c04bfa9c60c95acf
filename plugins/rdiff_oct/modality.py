"""The ``oct`` modality: single-channel retinal OCT B-scans."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from rdiff import Modality, UserError
from rdiff.images import SUFFIXES, atomic_file, read_image, write_image
from rdiff_oct.config import OctConfig
from rdiff_oct.degradations import degrade_bscan
from rdiff_oct.phantom import bscan_phantom

# seeds of the embedded phantoms: the splits never share a seed, so they never share a phantom
_SPLIT_SEEDS = {"train": 1000, "heldout": 2000}


class Oct(Modality):
    """Retinal OCT B-scans (one channel, display values of a log-compressed scan).

    Files: PNG/TIFF/JPEG (8 or 16 bit, colour is converted to grey) and NumPy ``.npy`` arrays, either one
    B-scan (``H×W``) or a volume of B-scans (``N×H×W``, depth along H). ``uint8`` and ``uint16`` values
    are scaled by their full range; float arrays already in [0, 1] are taken as they are, other float
    or integer arrays are mapped from their own minimum–maximum. Enhanced volumes are written back with
    the input's dtype and value scale.
    """

    name = "oct"
    channels = 1
    suffixes = (*SUFFIXES, ".npy")

    def __init__(self, config: OctConfig | None = None):
        super().__init__(config if config is not None else OctConfig())

    # --- files ----------------------------------------------------------------------------------------
    def read(self, path: str | Path) -> np.ndarray:
        if Path(path).suffix.lower() != ".npy":
            return read_image(path, channels=1)
        scans = self.read_stack(path)
        if len(scans) != 1:
            raise UserError(f"'{path}' holds a volume of {len(scans)} B-scans where one image was expected; "
                            "save one B-scan per file (an H×W array).")
        return scans[0]

    def write(self, path: str | Path, image: np.ndarray, like: str | Path | None = None) -> Path:
        if Path(path).suffix.lower() == ".npy":
            return self.write_stack(path, [image], like=like)
        return write_image(path, image, like=like)

    def subject(self, path: str | Path) -> str:
        """The patient of a Kermany-style name ``CLASS-PATIENT-N`` (e.g. ``DME-1081406-3`` → ``1081406``), so
        one patient's B-scans never straddle a split; any other name is its own subject."""
        parts = Path(path).stem.split("-")
        return parts[1] if len(parts) == 3 and parts[1].isdigit() else Path(path).stem

    def read_stack(self, path: str | Path) -> list[np.ndarray]:
        """Every B-scan of a ``.npy`` file as an ``H×W×1`` float32 image in [0, 1] (other files: one image)."""
        if Path(path).suffix.lower() != ".npy":
            return [self.read(path)]
        volume = _load_npy(Path(path))
        low, high = _value_range(volume)
        scans = (volume.astype(np.float64) - low) / (high - low)
        return [np.clip(s, 0.0, 1.0).astype(np.float32)[..., None] for s in scans.reshape(-1, *volume.shape[-2:])]

    def write_stack(self, path: str | Path, images: list[np.ndarray], like: str | Path | None = None) -> Path:
        """Write B-scans to a ``.npy`` file with ``like``'s dtype, value scale and dimensionality (without
        ``like``: float32 in [0, 1], ``H×W`` for one image, ``N×H×W`` for several). Other suffixes hold
        one image only."""
        path = Path(path)
        if path.suffix.lower() != ".npy":
            if len(images) != 1:
                raise UserError(f"'{path}' can hold one image, not {len(images)}; write volumes as .npy.")
            return super().write(path, images[0], like=like)
        dtype, (low, high), single = np.dtype(np.float32), (0.0, 1.0), len(images) == 1
        if like is not None and Path(like).suffix.lower() == ".npy":
            reference = _load_npy(Path(like))
            dtype, (low, high) = reference.dtype, _value_range(reference)
            single = reference.ndim == 2 and len(images) == 1
        volume = np.stack([np.clip(np.asarray(im, np.float64).reshape(im.shape[0], im.shape[1]), 0.0, 1.0)
                           for im in images])
        volume = volume * (high - low) + low
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            volume = np.clip(np.round(volume), info.min, info.max)
        data = volume[0] if single else volume
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, ".npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, data.astype(dtype))  # a file object: np.save appends no second suffix
        return path

    # --- degradation ----------------------------------------------------------------------------------
    def degrade(self, image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        degraded, params = degrade_bscan(np.asarray(image, np.float32)[..., 0], self.config.degradation, rng)
        out = np.where(roi[..., None], degraded[..., None], image).astype(np.float32)
        return out, params

    # --- embedded data --------------------------------------------------------------------------------
    def sample_images(self, split: str) -> list[np.ndarray]:
        """Seeded phantom B-scans: ``train_images`` for ``train``, ``heldout_images`` for ``heldout``."""
        if split not in _SPLIT_SEEDS:
            raise UserError(f"unknown split '{split}'; use 'train' or 'heldout'.")
        count = self.config.train_images if split == "train" else self.config.heldout_images
        return [image.copy() for image in _phantoms(_SPLIT_SEEDS[split], count,
                                                    self.config.phantom_height, self.config.phantom_width)]

    # --- metrics --------------------------------------------------------------------------------------
    def metrics(self):
        """PSNR and SSIM against the clean scan, plus the no-reference SNR, CNR and ENL of the output
        (see :mod:`rdiff_oct.metrics` for how their regions are found)."""
        from rdiff.metrics import MaskedPSNR, MaskedSSIM, metric_collection
        from rdiff_oct.metrics import OctCNR, OctENL, OctSNR

        return metric_collection({"psnr": MaskedPSNR(), "ssim": MaskedSSIM(), "snr": OctSNR(), "cnr": OctCNR(),
                                  "enl": OctENL()})


@lru_cache(maxsize=8)
def _phantoms(first_seed: int, count: int, height: int, width: int) -> tuple[np.ndarray, ...]:
    return tuple(bscan_phantom(first_seed + i, height, width).image for i in range(count))


def _load_npy(path: Path) -> np.ndarray:
    """A B-scan (``H×W``) or volume (``N×H×W``) of finite numbers; UserError naming the file otherwise."""
    if not path.is_file():
        raise UserError(f"OCT file '{path}' does not exist.")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle what a user hands us
    except Exception as exc:  # noqa: BLE001 - every loader error means the same to a user
        raise UserError(f"cannot read OCT file '{path}' as a NumPy array: {type(exc).__name__}: {exc}".rstrip(".") + ".") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3) or min(array.shape[-2:]) < 2 or array.size == 0:
        shape = getattr(array, "shape", "?")
        raise UserError(f"OCT file '{path}' has shape {tuple(shape) if shape != '?' else shape}; expected one "
                        "B-scan (H×W) or a volume of B-scans (N×H×W).")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) or array.dtype == np.bool_:
        raise UserError(f"OCT file '{path}' holds {array.dtype} values; expected integers or floats.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise UserError(f"OCT file '{path}' contains NaN or infinite values.")
    return array


def _value_range(array: np.ndarray) -> tuple[float, float]:
    """The values that map to 0 and 1: the full range of uint8/uint16, [0, 1] for floats already inside
    it, else the array's own minimum and maximum."""
    if array.dtype == np.uint8:
        return 0.0, 255.0
    if array.dtype == np.uint16:
        return 0.0, 65535.0
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return (low, high) if high > low else (low, low + 1.0)
