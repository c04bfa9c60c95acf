"""Data for both phases, model-agnostic: unpaired crops, pairs, and the fixed held-out set.

Every random choice is seeded by ``(seed, index)``: item ``i`` of a dataset is the same crop in every run,
on every process, before and after a resume. That is what lets a killed run continue at the exact data
position and lets several processes shard the same stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from rdiff.errors import UserError
from rdiff.images import list_images, pair_files
from rdiff.modality import Modality
from rdiff.training import stable_seed


@dataclass
class Item:
    """One image with its region of interest, and where it came from (for messages)."""

    image: np.ndarray
    roi: np.ndarray
    source: str


@dataclass
class Pair:
    lq: np.ndarray
    hq: np.ndarray
    roi: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# --- loading -------------------------------------------------------------------------------------------------


def load_items(modality: Modality, data: str | None, split: str, resize: int | None, min_size: int,
               bad_images: str = "stop") -> list[Item]:
    """Images of ``split`` (``train``, ``heldout`` or ``all``): the modality's embedded samples, or a folder.

    A folder is split by file (every 8th file is held out, at least one) when it has several; a single file is
    split by area (its right quarter is held out) so the held-out crops never overlap the training crops.
    An unreadable file stops with its name, or with ``bad_images="skip"`` is left out with a warning.
    """
    if data is None:
        splits = ("train", "heldout") if split == "all" else (split,)
        raw = [(img, f"embedded {modality.name} {s} sample {i}")
               for s in splits for i, img in enumerate(modality.sample_images(s))]
    else:
        raw = []
        for path in list_images(data, modality.suffixes):
            try:
                images = modality.read_stack(path)
            except UserError as exc:
                if bad_images != "skip":
                    raise UserError(f"{exc} (set train.bad_images=skip to leave unreadable files out)") from None
                warnings.warn(f"skipped: {exc}", stacklevel=2)
                continue
            raw += [(img, str(path) if k == 0 else f"{path}[{k}]") for k, img in enumerate(images)]
        if not raw:
            raise UserError(f"data folder '{data}' holds no readable images.")
    raw = [(resize_longest(img, resize), name) for img, name in raw]
    for img, name in raw:
        if min(img.shape[:2]) < min_size:
            if data is None:  # say which data the preset needs, not only what is wrong
                raise UserError(f"image '{name}' is {img.shape[1]}×{img.shape[0]} px, smaller than the "
                                f"{min_size}-px training crops of this preset: the embedded {modality.name} "
                                f"sample serves smaller presets only; give --data FOLDER with images of at least "
                                f"{min_size} px on their short side (after resizing the long side to "
                                f"train.resize={resize}), or set train.image_size lower.")
            raise UserError(f"image '{name}' is {img.shape[1]}×{img.shape[0]} px, smaller than the "
                            f"{min_size}-px training crops of this preset (set train.image_size lower).")
    if data is not None and split != "all":
        if len(raw) >= 2:
            held = {i for i in range(len(raw)) if i % 8 == 7} or {len(raw) - 1}
            raw = [r for i, r in enumerate(raw) if (i in held) == (split == "heldout")]
        else:
            img, name = raw[0]
            cut = img.shape[1] * 3 // 4
            if min(cut, img.shape[1] - cut) < min_size:
                raise UserError(f"'{name}' is the only image and too narrow to hold a quarter out for evaluation "
                                f"with {min_size}-px crops; add more images or set train.image_size lower.")
            raw = [(img[:, cut:] if split == "heldout" else img[:, :cut], name)]
    return [Item(img, modality.roi(img), name) for img, name in raw]


SPLITS = ("train", "pairs", "test")


def split_by_subject(modality: Modality, paths: list[Path], *, test: float = 0.2, pairs: float = 0.15,
                     salt: str = "rdiff") -> dict[str, list[Path]]:
    """Split files three ways by subject (:meth:`rdiff.Modality.subject`), never by crops of one image:
    ``train`` (phase 1, unpaired), ``pairs`` (adaptation) and ``test`` (scoring).

    Subjects are ordered by a hash of their name (with ``salt``), so the split depends on names only —
    not on file order, sizes or the machine — and the first ``test`` and next ``pairs`` fractions of
    subjects (at least one each when there are three or more) are held out. Files keep their sorted order.
    """
    import hashlib

    subjects = sorted({modality.subject(p) for p in paths},
                      key=lambda name: hashlib.sha256(f"{salt}:{name}".encode()).hexdigest())
    count = len(subjects)
    n_test = max(1, round(test * count)) if count >= 3 else 0
    n_pairs = max(1, round(pairs * count)) if count >= 3 else 0
    where = {name: "test" if i < n_test else "pairs" if i < n_test + n_pairs else "train"
             for i, name in enumerate(subjects)}
    split: dict[str, list[Path]] = {name: [] for name in SPLITS}
    for path in sorted(paths):
        split[where[modality.subject(path)]].append(path)
    return split


def resize_longest(image: np.ndarray, longest: int | None) -> np.ndarray:
    """Downscale (never upscale) so the longest side is ``longest`` px; anti-aliased."""
    if not longest or max(image.shape[:2]) <= longest:
        return image
    from skimage.transform import resize

    scale = longest / max(image.shape[:2])
    shape = (round(image.shape[0] * scale), round(image.shape[1] * scale), image.shape[2])
    return resize(image, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def load_pair_folder(modality: Modality, folder: str, resize: int | None) -> list[Pair]:
    """``folder/lq/*`` and ``folder/hq/*`` matched by file stem; a stem on one side only is an error."""
    root = Path(folder)
    lq, hq = pair_files(root, modality.suffixes)
    for stem in sorted(lq.keys() ^ hq.keys()):
        have, missing = (lq[stem], root / "hq") if stem in lq else (hq[stem], root / "lq")
        raise UserError(f"'{have}' has no partner with the stem '{stem}' in '{missing}'.")
    pairs = []
    for stem in sorted(lq):
        lq_images, hq_images = modality.read_stack(lq[stem]), modality.read_stack(hq[stem])  # volumes: per slice
        if len(lq_images) != len(hq_images):
            raise UserError(f"'{lq[stem]}' holds {len(lq_images)} images but '{hq[stem]}' holds {len(hq_images)}.")
        for k, (a, b) in enumerate(zip(lq_images, hq_images)):
            if a.shape != b.shape:
                raise UserError(f"'{lq[stem]}' is {a.shape[1]}×{a.shape[0]} px but '{hq[stem]}' is "
                                f"{b.shape[1]}×{b.shape[0]} px; pairs must have the same size.")
            a, b = resize_longest(a, resize), resize_longest(b, resize)
            pairs.append(Pair(a, b, modality.roi(b), {"source": stem, "slice": k}, str(lq[stem])))
    return pairs


def degraded_images(modality: Modality, files: list[Path], resize: int | None, seed: int) -> list[Pair]:
    """Each file's images at the working scale ``resize``, whole, degraded by the modality's simulator with
    the seed ``(seed, index)`` (the same files and seed give the same test set); the degradation's
    parameters (and their ``types``) are kept."""
    pairs, index = [], 0
    for path in files:
        for k, image in enumerate(modality.read_stack(path)):
            clean = resize_longest(image, resize).astype(np.float32)
            roi = modality.roi(clean)
            degraded, params = modality.degrade(clean, roi, np.random.default_rng([seed, index]))
            pairs.append(Pair(np.clip(degraded, 0, 1).astype(np.float32), clean, roi, params,
                              str(path) if k == 0 else f"{path}[{k}]"))
            index += 1
    return pairs


# --- cropping ------------------------------------------------------------------------------------------------


def random_crop(rng: np.random.Generator, image: np.ndarray, roi: np.ndarray, size: int,
                min_roi: float = 0.5, tries: int = 20) -> tuple[int, int]:
    """Top-left corner of a ``size``-px crop that is at least ``min_roi`` inside the roi (best of ``tries``)."""
    h, w = roi.shape
    best, best_frac = (0, 0), -1.0
    for _ in range(tries):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        frac = float(roi[y:y + size, x:x + size].mean())
        if frac >= min_roi:
            return y, x
        if frac > best_frac:
            best, best_frac = (y, x), frac
    return best


def augment(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flip and quarter-turn for every array."""
    k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×C (or H×W bool roi) numpy -> C×H×W float tensor."""
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def _pick(rng: np.random.Generator, items: list) -> Any:
    # larger images are picked more often, so every pixel is about equally likely to be seen
    area = np.array([getattr(it, "roi").sum() + 1.0 for it in items])
    return items[int(rng.choice(len(items), p=area / area.sum()))]


class CleanCrops(Dataset):
    """Phase 1: ``length`` random augmented crops of clean images (optionally with a degraded copy)."""

    def __init__(self, items: list[Item], size: int, length: int, seed: int, modality: Modality | None = None):
        self.items, self.size, self.length, self.seed = items, size, length, seed
        self.modality = modality  # set when the backbone's stage wants degraded copies

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        item = _pick(rng, self.items)
        whole = self.size >= min(item.image.shape[:2])  # the whole image, on a canvas (see on_canvas)
        y, x = (0, 0) if whole else random_crop(rng, item.image, item.roi, self.size)
        # the whole image is degraded, then cropped: sizes (blur, illumination) are fractions of the field
        images = [item.image, item.roi] + ([self.modality.degrade(item.image, item.roi, rng)[0]] if self.modality else [])
        image, roi, *degraded = augment(rng, *(on_canvas(a, self.size)[y:y + self.size, x:x + self.size] for a in images))
        return {"clean": to_tensor(image), "roi": to_tensor(roi)} | ({"degraded": to_tensor(degraded[0])} if degraded else {})


class PairCrops(Dataset):
    """Phase 2: ``length`` random augmented crops taken at the same place from both images of a pair."""

    def __init__(self, pairs: list[Pair], size: int, length: int, seed: int):
        self.pairs, self.size, self.length, self.seed = pairs, size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        pair = self.pairs[index % len(self.pairs)]
        y, x = random_crop(rng, pair.hq, pair.roi, self.size)
        s = (slice(y, y + self.size), slice(x, x + self.size))
        lq, hq, roi = augment(rng, pair.lq[s], pair.hq[s], pair.roi[s])
        return {"lq": to_tensor(lq), "hq": to_tensor(hq), "roi": to_tensor(roi)}


def degraded_crops(modality: Modality, items: list[Item], size: int, count: int, seed: int) -> list[Pair]:
    """``count`` fixed crops, each cut at the same place from a clean image and from a copy of the *whole*
    image degraded by the modality (seeded): the on-the-fly pairs and the held-out evaluation set.

    Degrading the whole image first keeps degradations whose sizes depend on the field of view (halos,
    vignetting, blur relative to the FOV diameter) as they are meant, instead of treating each crop as a
    small field of its own."""
    pairs = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        item = _pick(rng, items)
        whole = size > min(item.image.shape[:2])  # the whole image, on a canvas (see adaptation_size)
        y, x = (0, 0) if whole else random_crop(rng, item.image, item.roi, size)
        degraded, params = modality.degrade(item.image, item.roi, rng)
        s = (slice(y, y + size), slice(x, x + size))
        lq, hq, roi = (on_canvas(a, size)[s].copy() for a in (degraded.astype(np.float32), item.image, item.roi))
        pairs.append(Pair(lq, hq, roi, params, item.source if whole else f"{item.source} crop {y},{x}"))
    return pairs


def fixed_crops(pairs: list[Pair], size: int, count: int, seed: int) -> list[Pair]:
    """``count`` fixed crops of given pairs (validation and evaluation on user pairs)."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        pair = pairs[i % len(pairs)]
        y, x = random_crop(rng, pair.hq, pair.roi, size)
        s = (slice(y, y + size), slice(x, x + size))
        out.append(Pair(pair.lq[s].copy(), pair.hq[s].copy(), pair.roi[s].copy(), pair.params, pair.source))
    return out


def stack(pairs: list[Pair]) -> dict[str, torch.Tensor]:
    """A batch of pairs as tensors."""
    return {"lq": torch.stack([to_tensor(p.lq) for p in pairs]),
            "hq": torch.stack([to_tensor(p.hq) for p in pairs]),
            "roi": torch.stack([to_tensor(p.roi) for p in pairs])}


def adaptation_size(train: Any, images: list[np.ndarray]) -> int:
    """The side of phase-2 crops: ``train.adapt_image_size`` (default: the phase-1 crop), never below the
    phase-1 crop. At least the longest side of every image means whole images, each on a square black
    canvas of that side (:func:`on_canvas`); otherwise no larger than the smallest image's short side
    (both rounded to a multiple of 16)."""
    wanted = train.adapt_image_size or train.image_size
    if wanted <= train.image_size:
        return wanted
    longest = max(max(image.shape[:2]) for image in images)
    if wanted >= longest:
        return -(-longest // 16) * 16
    fits = min(min(image.shape[:2]) for image in images) // 16 * 16
    return max(train.image_size, min(wanted, fits))


def on_canvas(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` (an image or its roi) at the top left of at least a ``size``-px square of zeros: background,
    which the roi leaves out of every loss, so a whole image of any shape batches with the others."""
    pad = [(0, max(0, size - side)) for side in array.shape[:2]] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad)


def adaptation_pairs(modality: Modality, config: Any) -> tuple[list[Pair], list[Pair], int]:
    """Phase 2's training and validation pairs and their crop side: a user's folder (the last fifth
    validates), or crops of the training images degraded on the fly (seeded)."""
    cfg, train = config, config.train
    if cfg.pairs:
        all_pairs = load_pair_folder(modality, cfg.pairs, train.resize)
        if len(all_pairs) < 2:
            raise UserError(f"pairs folder '{cfg.pairs}' holds {len(all_pairs)} pair; at least 2 are needed "
                            f"(one to train, one to validate).")
        size = adaptation_size(train, [p.hq for p in all_pairs])
        # whole images (when size exceeds one's side) on one canvas
        all_pairs = [Pair(*(on_canvas(a, size) for a in (p.lq, p.hq, p.roi)), p.params, p.source) for p in all_pairs]
        n_val = min(max(1, len(all_pairs) // 5), len(all_pairs) - 1)
        val = fixed_crops(all_pairs[-n_val:], size, max(train.val_pairs, n_val), cfg.seed + 1)
        return all_pairs[:-n_val], val, size
    items = load_items(modality, cfg.data, "train", train.resize, train.image_size, train.bad_images)
    size = adaptation_size(train, [item.image for item in items])
    made = degraded_crops(modality, items, size, train.pairs + train.val_pairs, stable_seed(cfg.seed, "pairs"))
    return made[:train.pairs], made[train.pairs:], size
