"""The fundus modality: colour photographs of the retina, seen through a circular field of view."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np

from rdiff.errors import UserError
from rdiff.modality import Modality
from rdiff_fundus import degradations
from rdiff_fundus.config import FundusConfig
from rdiff_fundus.fov import SquareFrame, erode_rim, fov_mask

# The embedded photograph is resized to this side: the working scale of the sample data.
SAMPLE_SIDE = 512
# Rows of the resized photograph above this fraction train; the rows below are held out. Both halves
# hold parts of the optic disc, the macula and the vessel arcades.
TRAIN_FRACTION = 0.55


class Fundus(Modality):
    """Colour fundus photographs (RGB): FOV mask robust to clipped fields, cofe-Net-style degradations
    inside the FOV, PSNR/SSIM without the FOV rim and a vessel-structure score."""

    name = "fundus"
    channels = 3

    def __init__(self, config: FundusConfig | None = None):
        super().__init__(config if config is not None else FundusConfig())

    # --- region of interest ---------------------------------------------------------------------------
    def roi(self, image: np.ndarray) -> np.ndarray:
        """The field of view (see :mod:`rdiff_fundus.fov`): clipped fields stay clipped."""
        return fov_mask(self._check(image))

    def metric_roi(self, roi: np.ndarray) -> np.ndarray:
        """Where metrics count: the FOV without a rim ``metric_erosion`` × its radius wide (the metrics
        from :meth:`metrics` already apply this to the rois they are given)."""
        return erode_rim(roi, self.config.metric_erosion)

    # --- geometry -------------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, roi: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """With ``crop_to_fov``: the FOV's bounding box, padded with black to a square centred on it (the
        frame cofe-Net and most fundus models work in), and the inverse that pastes a result of that
        square's size back into a copy of the original image. A result of another size (a resized
        square) is first resized back to the square."""
        if not self.config.crop_to_fov or not roi.any():
            return image, roi, lambda result: result
        frame = SquareFrame.from_roi(roi)

        def inverse(result: np.ndarray) -> np.ndarray:
            result = np.asarray(result, dtype=image.dtype)
            if result.shape[:2] != (frame.side, frame.side):
                from skimage.transform import resize

                result = resize(result, (frame.side, frame.side), order=1, anti_aliasing=True,
                                preserve_range=True).astype(image.dtype)
            return frame.paste(result, image)

        return frame.crop(image), frame.crop(roi, fill=False), inverse

    # --- degradation ----------------------------------------------------------------------------------
    def degrade(self, image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """A degraded copy of ``image`` and its sampled parameters, by the configured model(s) (see
        :class:`rdiff_fundus.config.DegradationConfig`). Only pixels inside ``roi`` change.

        Parameters: ``{"degradation": "cofe+cataract", "types": [...], "cofe": {...}, "cataract": {...}}``
        where ``types`` lists every kind of degradation applied, in order, without repeats.

        Sizes follow the field of view as it appears in ``image`` (its bounding square): degrade whole
        photographs, as ``rdiff degrade`` does, for physically scaled results; a crop lying inside the
        FOV is treated as a small field of its own.
        """
        image = self._check(image)
        options = self.config.degradation
        names = options.names
        params: dict[str, Any] = {"degradation": "+".join(names), "types": []}
        if not roi.any():
            return image.copy(), params
        frame = SquareFrame.from_roi(roi)
        inside = frame.crop(roi, fill=False)
        weight = inside.astype(np.float32)[..., None]  # multiplying by 1/0 is faster than boolean indexing
        work = frame.crop(image.astype(np.float32, copy=False))
        work *= weight  # the models see a black background, as the published ones did
        for index, name in enumerate(names):
            work, step = degradations.MODELS[name](work, inside, rng, options)
            work *= weight  # each published model ends by masking its output with the FOV
            key = name if name not in params else f"{name}#{index + 1}"
            params[key] = step
            params["types"] += [t for t in step["types"] if t not in params["types"]]
        # Background pixels keep their exact value (x·1 + 0), FOV pixels take the result (x·0 + y).
        degraded = image.copy()
        rows, cols, frame_rows, frame_cols = frame.overlap()
        region = degraded[rows, cols]
        region *= 1 - weight[frame_rows, frame_cols]
        region += work[frame_rows, frame_cols]
        return degraded, degradations.json_safe(params)

    # --- embedded data --------------------------------------------------------------------------------
    def sample_images(self, split: str) -> list[np.ndarray]:
        """``skimage.data.retina()`` (a real 1411² fundus photograph shipped with scikit-image), resized
        to 512² with its background set to black: ``train`` is its top 55 % (rows), ``heldout`` the bottom
        45 %. The two never overlap, so held-out crops are never seen in training; each keeps its black
        background outside the (clipped) field of view."""
        photograph = _embedded_photograph()
        split_row = round(TRAIN_FRACTION * photograph.shape[0])
        if split == "train":
            return [photograph[:split_row].copy()]
        if split == "heldout":
            return [photograph[split_row:].copy()]
        raise UserError(f"unknown sample split '{split}'; use 'train' or 'heldout'.")

    # --- metrics --------------------------------------------------------------------------------------
    def metrics(self):
        """``psnr`` and ``ssim`` (rdiff's masked metrics) and ``vessel_dice``, inside the FOV without its
        rim (``metric_erosion``)."""
        from rdiff_fundus.metrics import fundus_metrics

        return fundus_metrics(erosion=self.config.metric_erosion, vessel_sigmas=self.config.vessel_sigmas)

    # --- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _check(image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"a fundus image must be H×W×3 (RGB), got shape {tuple(image.shape)}.")
        return image


@lru_cache(maxsize=1)
def _embedded_photograph() -> np.ndarray:
    """The embedded photograph at the working scale (computed once per process; callers get copies)."""
    from skimage import data
    from skimage.transform import resize

    photograph = data.retina().astype(np.float32) / 255.0
    resized = resize(photograph, (SAMPLE_SIDE, SAMPLE_SIDE), order=1, anti_aliasing=True, preserve_range=True)
    resized = np.clip(resized, 0.0, 1.0).astype(np.float32)
    # The scan's background is not quite black (JPEG residue up to 2/255) and carries a small bright tab
    # outside the disc; the sample keeps a truly black background instead.
    resized *= fov_mask(resized)[..., None]
    resized.setflags(write=False)
    return resized
