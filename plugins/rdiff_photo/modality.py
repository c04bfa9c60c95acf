"""The ``photo`` modality: natural RGB photographs, a non-medical domain to test generality on."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rdiff import Modality, UserError
from rdiff_photo.config import PhotoConfig
from rdiff_photo.degradations import degrade_photo

# Photographs that ship inside scikit-image (nothing is downloaded). The splits share no photograph.
# camera is greyscale and becomes RGB with equal channels.
SPLITS = {
    "train": ("astronaut", "coffee", "rocket", "camera"),
    "heldout": ("chelsea", "motorcycle"),
}


class Photo(Modality):
    """Natural RGB photographs (3 channels); the region of interest is the whole image."""

    name = "photo"
    channels = 3

    def __init__(self, config: PhotoConfig | None = None):
        super().__init__(config if config is not None else PhotoConfig())

    def degrade(self, image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        degraded, params = degrade_photo(np.asarray(image, np.float32), self.config.degradation, rng)
        return np.where(roi[..., None], degraded, image).astype(np.float32), params

    def sample_images(self, split: str) -> list[np.ndarray]:
        """scikit-image's photographs, resized to ``longest_side``: 4 for ``train``, 2 for ``heldout``."""
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; use 'train' or 'heldout'.")
        return [image.copy() for image in _photographs(split, self.config.longest_side)]

    def metrics(self):
        """PSNR and SSIM against the clean photograph, and the mean CIEDE2000 colour difference
        ``delta_e`` (lower is better)."""
        from rdiff.metrics import MaskedPSNR, MaskedSSIM, metric_collection
        from rdiff_photo.metrics import MeanDeltaE

        return metric_collection({"psnr": MaskedPSNR(), "ssim": MaskedSSIM(), "delta_e": MeanDeltaE()})


def _load(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]  # the left view of the stereo pair
    else:
        image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3].astype(np.float32) / 255.0


@lru_cache(maxsize=4)
def _photographs(split: str, longest_side: int) -> tuple[np.ndarray, ...]:
    from skimage.transform import resize

    out = []
    for name in SPLITS[split]:
        image = _load(name)
        scale = longest_side / max(image.shape[:2])
        shape = (round(image.shape[0] * scale), round(image.shape[1] * scale), 3)
        resized = resize(image, shape, anti_aliasing=scale < 1, preserve_range=True)
        out.append(np.clip(resized, 0.0, 1.0).astype(np.float32))
    return tuple(out)
