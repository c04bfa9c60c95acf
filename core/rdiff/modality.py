"""The Modality role: a data domain (fundus photographs, OCT B-scans, ...).

Conventions shared by every role:
- an *image* is a numpy array ``H×W×C``, float32 in [0, 1] (C = ``channels``);
- a *roi* (region of interest) is a numpy bool array ``H×W``: where metrics count and enhancement acts
  (the field of view for fundus, the whole image for OCT);
- batched tensors handed to networks and metrics are ``B×C×H×W`` in [0, 1]; rois ``B×1×H×W`` in {0, 1}.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from rdiff import images

if TYPE_CHECKING:
    import torchmetrics


@dataclass
class ModalityConfig:
    """A modality with no options."""


class Modality(ABC):
    """A data domain: how to read it, where its region of interest is, how it degrades, how to score it."""

    name: ClassVar[str] = "modality"
    channels: ClassVar[int] = 3
    suffixes: ClassVar[tuple[str, ...]] = images.SUFFIXES  # file types read from a folder

    def __init__(self, config: Any = None):
        self.config = config if config is not None else ModalityConfig()

    # --- files ----------------------------------------------------------------------------------------
    def read(self, path: str | Path) -> np.ndarray:
        """Read one file as an ``H×W×channels`` float32 image in [0, 1]; raise UserError naming the file."""
        return images.read_image(path, channels=self.channels)

    def write(self, path: str | Path, image: np.ndarray, like: str | Path | None = None) -> Path:
        """Write an image; with ``like`` (the input file) keep its format and bit depth."""
        return images.write_image(path, image, like=like)

    def subject(self, path: str | Path) -> str:
        """Which patient (or eye, or acquisition) a file belongs to, from its name: files of one subject
        always fall in the same split, so a model is never scored on a patient it trained on. Default:
        the file's stem (every file its own subject)."""
        return Path(path).stem

    def read_stack(self, path: str | Path) -> list[np.ndarray]:
        """Read a file that may hold several images (e.g. an OCT volume); default: one image."""
        return [self.read(path)]

    def write_stack(self, path: str | Path, images: list[np.ndarray], like: str | Path | None = None) -> Path:
        """Write what :meth:`read_stack` read, in the same form (``len(images) == 1`` for plain images)."""
        return self.write(path, images[0], like=like)

    def preprocess(self, image: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Geometry applied before enhancement (e.g. crop to the field of view and pad to a square) and
        the function that maps a result back onto the original image. Default: none."""
        return image, roi, lambda result: result

    # --- region of interest ---------------------------------------------------------------------------
    def roi(self, image: np.ndarray) -> np.ndarray:
        """Where the image has content (bool ``H×W``). The default is the whole image."""
        return np.ones(image.shape[:2], dtype=bool)

    # --- degradation ----------------------------------------------------------------------------------
    @abstractmethod
    def degrade(self, image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """A degraded copy of ``image`` and the sampled parameters (JSON-safe). Same rng state, same output.
        Pixels outside ``roi`` must stay as they are."""

    # --- embedded data --------------------------------------------------------------------------------
    @abstractmethod
    def sample_images(self, split: str) -> list[np.ndarray]:
        """Embedded images (no download) for ``split`` ``"train"`` or ``"heldout"``; the two are disjoint."""

    # --- metrics --------------------------------------------------------------------------------------
    def metrics(self) -> torchmetrics.MetricCollection:
        """Full-reference metrics computed inside the roi (``update(preds, target, roi)`` on batches): PSNR and SSIM
        by default; a modality adds its own in a :func:`rdiff.metrics.metric_collection`, so reports keep its order."""
        from rdiff.metrics import MaskedPSNR, MaskedSSIM, metric_collection

        return metric_collection({"psnr": MaskedPSNR(), "ssim": MaskedSSIM()})


def choose_degradations(name: str, probabilities: dict[str, float], kinds: tuple[str, ...], rng: Any,
                        fallback: str) -> list[str]:
    """The degradations applied to one image: ``name`` alone, or for ``name == "default"`` each of ``kinds``
    drawn with its chance in ``probabilities`` (in the order of ``kinds``, one ``rng.random()`` each), and
    ``fallback`` when the draw picks none."""
    if name != "default":
        return [name]
    chosen = [kind for kind in kinds if rng.random() < probabilities.get(kind, 0.0)]
    return chosen or [fallback]
