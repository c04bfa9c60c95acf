"""The ``histology`` modality: stained tissue slides (3 channels)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rdiff import Modality, UserError
from rdiff_histology.config import HistologyConfig
from rdiff_histology.degradations import degrade_slide
from rdiff_histology.stains import optical_density

# scikit-image ships one real slide: an immunohistochemistry (haematoxylin + DAB) image of 512×512 px.
# Its four 256-px quadrants are the embedded data: three to train on, the fourth held out.
QUADRANTS = {"train": ((0, 0), (0, 1), (1, 0)), "heldout": ((1, 1),)}


class Histology(Modality):
    """Stained tissue slides; the region of interest is the whole image or, with ``tissue_roi``, the tissue."""

    name = "histology"
    channels = 3

    def __init__(self, config: HistologyConfig | None = None):
        super().__init__(config if config is not None else HistologyConfig())

    def roi(self, image: np.ndarray) -> np.ndarray:
        """The whole image, or the stained tissue: optical density above ``tissue_density``, cleaned of
        specks and pinholes smaller than about 8×8 px."""
        if not self.config.tissue_roi:
            return np.ones(image.shape[:2], dtype=bool)
        tissue = _without_small_parts(optical_density(image) > self.config.tissue_density, 64)
        return ~_without_small_parts(~tissue, 64)  # fill pinholes: the same cleaning of the background

    def degrade(self, image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        degraded, params = degrade_slide(np.asarray(image, np.float32), self.config.degradation, rng)
        return np.where(roi[..., None], degraded, image).astype(np.float32), params

    def sample_images(self, split: str) -> list[np.ndarray]:
        """Quadrants of ``skimage.data.immunohistochemistry()``: three for ``train``, one for ``heldout``."""
        if split not in QUADRANTS:
            raise UserError(f"unknown split '{split}'; use 'train' or 'heldout'.")
        return [_slide()[256 * row:256 * (row + 1), 256 * col:256 * (col + 1)].copy() for row, col in QUADRANTS[split]]

    def metrics(self):
        """PSNR, SSIM and the stain-density error ``stain_error`` (lower is better), inside the roi."""
        from rdiff.metrics import MaskedPSNR, MaskedSSIM, metric_collection
        from rdiff_histology.metrics import StainError

        return metric_collection({"psnr": MaskedPSNR(), "ssim": MaskedSSIM(), "stain_error": StainError()})


def _without_small_parts(mask: np.ndarray, smallest: int) -> np.ndarray:
    """``mask`` without its connected parts of fewer than ``smallest`` pixels."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= smallest
    keep[0] = False  # label 0 is everything outside the mask
    return keep[labels]


@lru_cache(maxsize=1)
def _slide() -> np.ndarray:
    import skimage.data

    image = skimage.data.immunohistochemistry()  # shipped inside scikit-image: nothing is downloaded
    image = image.astype(np.float32) / 255.0
    image.flags.writeable = False  # shared by every call; sample_images hands out copies
    return image
