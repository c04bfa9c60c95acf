"""Enhancement at clinical resolution: whole photographs, tile by tile, in memory bounded by the tile.

Fundus photographs are 2–4k pixels wide while backbones are trained on small crops. :func:`enhance_image`
runs a backbone over overlapping tiles and blends them back without seams:

- **Geometry.** The image is first given to the modality (:meth:`rdiff.Modality.preprocess`, e.g. crop to
  the field of view and pad to a square) and the result is mapped back with the function it returns.
- **Tiles.** Each axis is cut into as few equal tiles of at most ``tile`` px as cover it with ``overlap`` px
  shared (:func:`_plan_axis`); origins and sizes are multiples of the backbone's ``size_multiple``, and a
  tile reaching past the border is reflect-padded there. Images no larger than ``tile`` run in one pass.
- **Blending.** Each tile's output is weighted by a separable window, flat in its middle and ramping over
  what it shares with each neighbour (:func:`_ramp`); the weighted sum is divided by the summed weight.
- **Memory.** Only one float32 output and one float32 weight map of the image's size exist at a time; tiles
  are cut, enhanced and accumulated one batch at a time, so peak memory grows with ``tile`` and ``batch``,
  not with the image.
- **Region of interest.** Tiles with no roi pixel are never computed, and every pixel outside the roi is
  copied bit for bit from the input at the end (the black surround of a fundus photograph stays black).
- **Shared noise.** Sampling paths of latent backbones crop each tile's initial noise from one field drawn
  for the whole image (:func:`_shared_noise`), so overlapping tiles start from the same noise.

:func:`enhance_files` is what ``rdiff enhance`` runs: files, folders or glob patterns in, the same formats
and bit depths out, one failed file reported and skipped without stopping the rest.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from rdiff import images
from rdiff.errors import UserError, describe_os_error, did_you_mean

if TYPE_CHECKING:
    from rdiff.modality import Modality
    from rdiff.reconstructor import Reconstructor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_NAMES = {value: name for name, value in DTYPES.items()}


# --- one image ---------------------------------------------------------------------------------------------


#: the keywords of :func:`enhance_image` besides the path: every other keyword is a sampling setting
IMAGE_OPTIONS = ("roi", "options", "seed", "tile", "overlap", "batch", "device", "dtype", "preserve_color", "progress")


def enhance_image(backbone: Reconstructor, modality: Modality, image: np.ndarray, *, roi: np.ndarray | None = None,
                  path: str = "fast", options: Any = None, seed: int = 0, tile: int = 256,
                  overlap: int | None = None, batch: int = 1, device: str | torch.device | None = None,
                  dtype: str = "float32", preserve_color: bool = False, progress: bool = False,
                  **settings: Any) -> np.ndarray:
    """The enhanced ``image`` (``H×W×C`` float32 in [0, 1]), same shape, at its native resolution.

    Args:
        backbone: a trained :class:`rdiff.Reconstructor` (with its adaptor attached, if any).
        modality: the image's :class:`rdiff.Modality` (region of interest and geometry).
        image: ``H×W×C`` float32 in [0, 1].
        roi: where to enhance (bool ``H×W``); default ``modality.roi(image)``. Pixels outside stay as given.
        path, options: the backbone's enhancement path (or path name, e.g. ``fast``, ``sample``, ``ddim10``)
            and its options object; without ``options`` they are built by
            :meth:`~rdiff.Reconstructor.resolve_path` from ``settings`` (e.g. ``steps=20, eta=0.0``).
        seed: seeds the shared noise field and the sampler's per-step noise: the same seed, tile, overlap
            and batch give the same output (the per-step noise is drawn batch by batch).
        tile, overlap: tile side (rounded down to a multiple of ``backbone.size_multiple``) and the overlap
            between neighbouring tiles (rounded up likewise), in pixels.
        batch: tiles per forward pass.
        device: where to compute; default the backbone's device. A backbone elsewhere is moved there for
            the call and moved back afterwards (:func:`enhance_files` moves it once for all its files).
        dtype: ``float32``, ``bfloat16`` or ``float16`` autocast for the networks (weights stay as they
            are); ``float16`` needs CUDA and falls back to float32 elsewhere with a warning. On CPUs
            without bfloat16 instructions ``bfloat16`` is slower than float32 (4–5× for ldm-unet tiny).
        preserve_color: keep the input's low-frequency colour (see :func:`preserve_low_frequency_color`).
        progress: show a progress bar over tiles.
    """
    if options is None:
        path, options = backbone.resolve_path(path, **settings)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise UserError(f"the image to enhance must be H×W×C, got shape {tuple(image.shape)}.")
    if image.shape[2] != backbone.channels:
        raise UserError(f"the image has {image.shape[2]} channel(s) but the backbone works on {backbone.channels}.")
    overlap = min(int(backbone.tile_overlap), tile // 2) if overlap is None else overlap
    check_options(backbone, tile=tile, overlap=overlap, batch=batch)
    target = resolve_device(backbone, device)
    amp_dtype = resolve_dtype(dtype, target)

    roi = np.asarray(modality.roi(image) if roi is None else roi, dtype=bool)
    if roi.shape != image.shape[:2]:
        raise UserError(f"the roi has shape {roi.shape} but the image is {image.shape[0]}×{image.shape[1]}.")

    work, work_roi, to_original = modality.preprocess(image, roi)
    work = np.asarray(work, dtype=np.float32)
    work_roi = np.asarray(work_roi, dtype=bool)

    with on_device(backbone, target), _eval_mode(backbone), torch.no_grad():
        result = _enhance_tiled(backbone, work, work_roi, path=path, options=options, seed=seed, tile=tile,
                                overlap=overlap, batch=batch, device=target, amp_dtype=amp_dtype, progress=progress)
    if preserve_color:
        result = preserve_low_frequency_color(result, work, work_roi)
    np.copyto(result, work, where=~work_roi[..., None])

    final = np.asarray(to_original(result), dtype=np.float32)
    if final.shape != image.shape:
        raise RuntimeError(f"modality '{modality.name}' mapped the result back to shape {final.shape}, "
                           f"not the input's {image.shape}.")
    if not final.flags.writeable or np.shares_memory(final, image):
        final = final.copy()
    # The contract users rely on: outside the roi the output *is* the input, bit for bit.
    np.copyto(final, image, where=~roi[..., None])
    return final


def check_options(backbone: Reconstructor, *, tile: int, overlap: int, batch: int) -> None:
    """Refuse bad tiling options with one sentence (before any file is read)."""
    multiple = int(backbone.size_multiple)
    if tile < multiple:
        raise UserError(f"tile {tile} is smaller than the backbone's size multiple {multiple}.")
    if not 0 <= overlap < tile:
        raise UserError(f"overlap {overlap} must be at least 0 and smaller than the tile ({tile}).")
    if batch < 1:
        raise UserError(f"batch must be at least 1, not {batch}.")


def resolve_device(backbone: Reconstructor, device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (default: where the backbone is); an unavailable one is a UserError."""
    if device is None:
        return _module_device(backbone)
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device '{device}' is not a device name (e.g. cpu, cuda, cuda:1, mps).") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' is not available: this machine has no CUDA GPU.")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{device}' is not available on this machine.")
    return target


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype; ``float16`` outside CUDA falls back to float32 (CPU half kernels are slow or
    missing and bfloat16 would change results silently), with a warning."""
    if dtype not in DTYPES:
        raise UserError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}{did_you_mean(dtype, DTYPES)}.")
    if dtype == "float16" and device.type != "cuda":
        warnings.warn(f"float16 needs a CUDA device; computing in float32 on {device.type}.", stacklevel=3)
        return torch.float32
    return DTYPES[dtype]


# --- tiling -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    """How one image axis is cut into tiles."""

    length: int  # the image's extent along this axis
    padded: int  # ``length`` rounded up to the size multiple: the extent the tiles cover
    size: int  # every tile's extent along this axis
    starts: tuple[int, ...]  # tile origins (multiples of the size multiple)
    windows: tuple[np.ndarray, ...]  # blending weight profile of each tile, length ``size``


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _ramp(length: int) -> np.ndarray:
    """Weights rising from 0 to 1 across an overlap of ``length`` pixels, with ``ramp + ramp[::-1] == 1``.

    The outer quarter of the overlap is exactly 0 (and the inner quarter exactly 1): a tile's own border
    pixels, where the network saw zero padding instead of the image, never reach the output (overlaps of
    4 px or more). The middle half rises as a raised cosine, whose zero slope at both ends leaves no kink.
    """
    margin = length // 4
    position = (np.arange(length, dtype=np.float64) + 0.5 - margin) / (length - 2 * margin)
    return (0.5 - 0.5 * np.cos(np.pi * np.clip(position, 0.0, 1.0))).astype(np.float32)


def _plan_axis(length: int, tile: int, overlap: int, multiple: int) -> _Axis:
    """Cut one axis into as few tiles of at most ``tile`` px as cover it with ``overlap`` px shared between
    neighbours, all of one size and spread evenly: a 2048-px side with 1024-px tiles becomes three tiles
    of 752 px rather than two whole tiles and a third moved back to the border (50 % more pixels)."""
    padded = _round_up(length, multiple)
    if length <= tile:
        return _Axis(length, padded, padded, (0,), (np.ones(padded, np.float32),))
    largest = tile // multiple * multiple
    overlap = min(_round_up(overlap, multiple), largest - multiple)
    count = -(-(padded - overlap) // (largest - overlap))
    smallest = _round_up(-(-(padded + (count - 1) * overlap) // count), multiple)
    # one multiple of slack when the origins, snapped to the grid, would leave an overlap under ``overlap``
    for size in (min(largest, smallest), min(largest, smallest + multiple)):
        spacing = (padded - size) / (count - 1)
        starts = tuple(sorted({min(padded - size, int(round(i * spacing / multiple)) * multiple)
                               for i in range(count)}))
        if all(a + size - b >= overlap for a, b in zip(starts, starts[1:])):
            break
    return _Axis(length, padded, size, starts, _windows(starts, size))


def _windows(starts: tuple[int, ...], size: int) -> tuple[np.ndarray, ...]:
    """Blending weights of tiles of ``size`` at ``starts``: a ramp over exactly the span shared with each
    neighbour (capped at half a tile), flat elsewhere."""
    windows = []
    for i, start in enumerate(starts):
        window = np.ones(size, np.float32)
        before = starts[i - 1] + size - start if i > 0 else 0
        after = start + size - starts[i + 1] if i + 1 < len(starts) else 0
        before, after = min(before, size // 2), min(after, size // 2)
        if before:
            window[:before] = _ramp(before)
        if after:
            window[size - after:] = _ramp(after)[::-1]
        windows.append(window)
    return tuple(windows)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                multiple: int = 1) -> torch.Tensor:
    """``fn(x)`` for a ``B×C×H×W`` tensor computed on overlapping tiles of at most ``tile`` px and blended
    as :func:`enhance_image` blends image tiles; ``fn`` may change the channels and scale both sides by one
    factor (an encoder, a decoder). ``H`` and ``W`` must be multiples of ``multiple``.

    For backbones whose networks run in several places per image (encoder, denoiser at every sampling
    step, decoder): each network is tiled on its own, so an iterative path works on one whole latent and
    its steps cannot drift apart where tiles overlap (see :meth:`rdiff.Reconstructor.tiles_itself`).

    ``fn`` gets each tile (or the whole ``x``) as a contiguous channels-last tensor, the layout in which
    rdiff's networks normalise (:class:`rdiff_layers.ChannelNorm`): a channels-first input is converted back
    and forth around every norm, 20-25 % slower per pixel for ldm-unet tiny on one CPU thread.
    """
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x.contiguous(memory_format=torch.channels_last))
    rows, cols = _plan_axis(height, tile, overlap, multiple), _plan_axis(width, tile, overlap, multiple)
    out = weight = None
    for i, y in enumerate(rows.starts):
        for j, x0 in enumerate(cols.starts):
            part = x[..., y:y + rows.size, x0:x0 + cols.size].contiguous(memory_format=torch.channels_last)
            piece = fn(part)
            scale = piece.shape[-2] / rows.size
            if out is None:
                # kept in the pieces' (channels-last) layout: adding a piece in needs no transpose, and
                # neither does cutting the next network's tiles from the result
                shape = (*piece.shape[:2], round(height * scale), round(width * scale))
                out = piece.new_zeros(shape).contiguous(memory_format=torch.channels_last)
                weight = piece.new_zeros((1, 1, *out.shape[-2:]))
                size_y, size_x = round(rows.size * scale), round(cols.size * scale)
                starts_y = tuple(round(v * scale) for v in rows.starts)
                starts_x = tuple(round(v * scale) for v in cols.starts)
                win_y = [torch.from_numpy(w).to(piece) for w in _windows(starts_y, size_y)]
                win_x = [torch.from_numpy(w).to(piece) for w in _windows(starts_x, size_x)]
            window = torch.outer(win_y[i], win_x[j])
            ys, xs = starts_y[i], starts_x[j]
            out[..., ys:ys + size_y, xs:xs + size_x] += piece * window
            weight[..., ys:ys + size_y, xs:xs + size_x] += window
    return out.div_(weight)


def _cut_tile(image: np.ndarray, y: int, x: int, height: int, width: int) -> np.ndarray:
    """``image[y:y+height, x:x+width]``, reflect-padded where it reaches past the bottom/right border."""
    crop = image[y:y + height, x:x + width]
    missing_h, missing_w = height - crop.shape[0], width - crop.shape[1]
    if missing_h or missing_w:
        crop = np.pad(crop, ((0, missing_h), (0, missing_w), (0, 0)), mode="reflect")
    return crop


def _enhance_tiled(backbone: Reconstructor, image: np.ndarray, roi: np.ndarray, *, path: str, options: Any,
                   seed: int, tile: int, overlap: int, batch: int, device: torch.device,
                   amp_dtype: torch.dtype, progress: bool) -> np.ndarray:
    """Blend of the enhanced tiles of ``image``; pixels no computed tile covers are the input's."""
    from tqdm.auto import tqdm

    height, width, _ = image.shape
    multiple = int(backbone.size_multiple)
    rows, cols = _plan_axis(height, tile, overlap, multiple), _plan_axis(width, tile, overlap, multiple)
    todo = [(i, j) for i, y in enumerate(rows.starts) for j, x in enumerate(cols.starts)
            if roi[y:y + rows.size, x:x + cols.size].any()]

    noise_crop = _shared_noise(backbone, path, seed, rows, cols)
    generator = torch.Generator(device=device).manual_seed(seed)  # the sampler's per-step noise
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype != torch.float32
                else contextlib.nullcontext())
    if backbone.tiles_itself(path):
        # one call on the whole (padded) image: the backbone tiles each of its networks itself
        whole = _cut_tile(image, 0, 0, rows.padded, cols.padded).transpose(2, 0, 1)[None]
        noise = noise_crop(0, 0, rows.padded, cols.padded)[None].to(device) if noise_crop is not None else None
        with autocast:
            out = backbone.enhance(torch.from_numpy(np.ascontiguousarray(whole)).to(device), path=path,
                                   options=options, generator=generator, noise=noise, tile=tile, overlap=overlap)
        out = out.detach().float().cpu()[0].permute(1, 2, 0).numpy()[:height, :width]
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    total = np.zeros(image.shape, np.float32)
    weight = np.zeros(image.shape[:2], np.float32)
    with tqdm(total=len(todo), unit="tile", disable=not progress, leave=False) as bar:
        for first in range(0, len(todo), batch):
            chunk = todo[first:first + batch]
            origins = [(rows.starts[i], cols.starts[j]) for i, j in chunk]
            tiles = np.stack([_cut_tile(image, y, x, rows.size, cols.size).transpose(2, 0, 1) for y, x in origins])
            lq = torch.from_numpy(tiles).to(device)  # B×C×H×W, contiguous as networks expect
            noise = (torch.stack([noise_crop(y, x) for y, x in origins]).to(device)
                     if noise_crop is not None else None)
            with autocast:
                out = backbone.enhance(lq, path=path, options=options, generator=generator, noise=noise)
            out = out.detach().float().cpu().permute(0, 2, 3, 1).numpy()
            for (i, j), (y, x), enhanced in zip(chunk, origins, out):
                h, w = min(rows.size, height - y), min(cols.size, width - x)
                window = np.outer(rows.windows[i][:h], cols.windows[j][:w])
                total[y:y + h, x:x + w] += np.clip(enhanced[:h, :w], 0.0, 1.0) * window[..., None]
                weight[y:y + h, x:x + w] += window
            bar.update(len(chunk))

    covered = weight > 0
    np.divide(total, weight[..., None], out=total, where=covered[..., None])
    np.copyto(total, image, where=~covered[..., None])
    return total


def _shared_noise(backbone: Reconstructor, path: str, seed: int, rows: _Axis, cols: _Axis):
    """For sampling paths of latent backbones: a function ``(y, x) -> that tile's crop`` of one noise field
    drawn from ``seed`` for the whole padded image (on the CPU, so a seed means the same on every device)."""
    if path == "fast" or "latent" not in backbone.capabilities or not hasattr(backbone, "latent_shape"):
        return None
    field = torch.randn(tuple(backbone.latent_shape(rows.padded, cols.padded)),
                        generator=torch.Generator().manual_seed(seed))
    factor_y, factor_x = rows.padded // field.shape[-2], cols.padded // field.shape[-1]
    _, tile_h, tile_w = backbone.latent_shape(rows.size, cols.size)

    def crop(y: int, x: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        if y % factor_y or x % factor_x:
            raise RuntimeError(f"tile origin ({y}, {x}) does not fall on the latent grid of "
                               f"'{backbone.registered_name}' (size_multiple must be a multiple of its "
                               f"latent downsampling {factor_y}×{factor_x}).")
        h = height // factor_y if height else tile_h
        w = width // factor_x if width else tile_w
        return field[:, y // factor_y:y // factor_y + h, x // factor_x:x // factor_x + w]

    return crop


# --- colour --------------------------------------------------------------------------------------------------


def preserve_low_frequency_color(result: np.ndarray, reference: np.ndarray, roi: np.ndarray,
                                 sigma: float | None = None) -> np.ndarray:
    """``result`` with the low-frequency chroma of ``reference``; its luminance is left as enhanced.

    Why this and not a per-channel mean/std match: enhancement is *meant* to change brightness, contrast
    and illumination (a std match would undo the contrast gain), while the colour shift generative models
    are known for is a slow drift of hue. So the image is split into luminance and two colour differences
    (Y, B−Y, R−Y as in BT.601); in the colour differences only, the result's low frequencies (Gaussian,
    ``sigma`` default 1/64 of the longer side) are replaced by the reference's: enhanced vessels and
    lesions keep their local colour, the overall tint is the input's. The low-pass is computed inside the
    roi only (normalised convolution), so a black surround does not bleed into the rim of the field of
    view. ``result`` is changed in place and returned. Grey images have no colour: returned unchanged.
    """
    if result.shape[2] != 3:
        return result
    height, width = result.shape[:2]
    sigma = max(height, width) / 64 if sigma is None else sigma
    lowpass = _MaskedLowpass(roi, sigma)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    y_out, y_ref = result @ luma, reference @ luma
    for channel in (2, 0):  # B−Y, then R−Y; Y is kept, so the correction of B−Y is the correction of B
        low_ref = lowpass.small(reference[..., channel] - y_ref)
        low_out = lowpass.small(result[..., channel] - y_out)
        result[..., channel] += lowpass.upsample(low_ref - low_out)
    # G follows from Y = 0.299 R + 0.587 G + 0.114 B with the new R and B.
    result[..., 1] = (y_out - luma[0] * result[..., 0] - luma[2] * result[..., 2]) / luma[1]
    return np.clip(result, 0.0, 1.0, out=result)


class _MaskedLowpass:
    """Gaussian low-pass over a mask only (normalised convolution), computed at reduced resolution — a
    low-pass loses nothing there — and interpolated back: a 4k image costs no float64 and no full-size
    stacks, and the mask's own low-pass is computed once for every plane."""

    def __init__(self, mask: np.ndarray, sigma: float):
        self.mask = mask.astype(np.float32)
        self.shape = mask.shape
        self.factor = max(1, int(sigma // 2))
        self.sigma = sigma / self.factor
        self.mask_low = np.maximum(self._blur(self._shrink(self.mask)), 1e-6)

    def _shrink(self, plane: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        small = (-(-self.shape[0] // self.factor), -(-self.shape[1] // self.factor))
        return F.interpolate(torch.from_numpy(plane)[None, None], size=small, mode="area")[0, 0].numpy()

    def _blur(self, plane: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(plane, self.sigma, mode="nearest")

    def small(self, plane: np.ndarray) -> np.ndarray:
        """The low-pass of ``plane`` inside the mask, at reduced resolution."""
        return self._blur(self._shrink(plane * self.mask)) / self.mask_low

    def upsample(self, small: np.ndarray) -> np.ndarray:
        """A reduced-resolution plane back at full resolution (bilinear)."""
        import torch.nn.functional as F

        planes = torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None, None]
        return F.interpolate(planes, size=self.shape, mode="bilinear", align_corners=False)[0, 0].numpy()


# --- devices and modes -----------------------------------------------------------------------------------------


def _parts(backbone: Reconstructor) -> list[torch.nn.Module]:
    """The backbone and its attached adaptor (which is deliberately not a submodule of it)."""
    return [backbone] + ([backbone.adaptor] if getattr(backbone, "adaptor", None) is not None else [])


def _module_device(backbone: Reconstructor) -> torch.device:
    for module in _parts(backbone):
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def on_device(backbone: Reconstructor, device: torch.device) -> Iterator[None]:
    """The backbone (and adaptor) on ``device`` inside the block, back where it was afterwards."""
    original = _module_device(backbone)
    if original == device:
        yield
        return
    for module in _parts(backbone):
        module.to(device)
    try:
        yield
    finally:
        for module in _parts(backbone):
            module.to(original)


@contextlib.contextmanager
def _eval_mode(backbone: Reconstructor) -> Iterator[None]:
    """Evaluation mode inside the block; every module's own train/eval flag restored afterwards (the
    engine enhances held-out images in the middle of training)."""
    modes = [(module, module.training) for part in _parts(backbone) for module in part.modules()]
    for part in _parts(backbone):
        part.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --- files -----------------------------------------------------------------------------------------------------


def _output_names(relative: Path, suffix: str | None, compare: bool) -> list[Path]:
    """The enhanced file of an input and, with ``compare``, its side-by-side image, relative to ``--out``."""
    stem = f"{relative.stem}{suffix or ''}"
    return [relative.parent / (stem + relative.suffix)] + [relative.parent / (stem + "_compare.png")] * compare


def _side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    gap = np.ones((before.shape[0], max(4, before.shape[1] // 100), before.shape[2]), np.float32)
    return np.concatenate([before, gap, after], axis=1)


def enhance_files(run: Any, inputs: list[str], out_dir: str | Path, *, path: str | None = None, seed: int = 0,
                  tile: int | None = None, overlap: int | None = None, batch: int = 1,
                  device: str | torch.device | None = None, dtype: str = "float32", preserve_color: bool = False,
                  compare: bool = False, suffix: str | None = None, **settings: Any) -> int:
    """Enhance every file named by ``inputs`` into ``out_dir``; ``rdiff enhance`` in a function.

    ``run`` provides ``backbone``, ``modality``, ``tile``, ``overlap`` and ``resolve_path`` (a loaded
    :class:`rdiff.Run`), which makes the path and its options from ``path`` and the sampling ``settings``
    (``steps``, ``eta``, ...). ``inputs`` are files, folders (recursive, the modality's suffixes) or glob
    patterns (:func:`rdiff.images.expand_inputs`). Files keep their names relative to the folder they were
    found in, their format and bit depth; ``suffix`` is appended to each stem (``a.png`` → ``a_enh.png``).
    ``compare`` also writes ``<stem>_compare.png``: input and enhanced side by side (the middle slice of a
    volume). Defaults: the run's path, options, tile and overlap, and the GPU when there is one (else
    wherever the backbone is); the backbone is moved there once for all files and moved back after.

    A file that cannot be read or written is reported by name and skipped. Returns the exit code, 0 or 2
    when any file failed; bad options or missing inputs raise :class:`UserError` before any work is done."""
    from tqdm.auto import tqdm

    from rdiff.training import progress

    backbone, modality = run.backbone, run.modality
    path, options = run.resolve_path(path, **settings)
    tile = int(run.tile) if tile is None else tile
    overlap = min(int(run.overlap), tile // 2) if overlap is None else overlap
    check_options(backbone, tile=tile, overlap=overlap, batch=batch)
    if device is None and torch.cuda.is_available():
        device = "cuda"
    target = resolve_device(backbone, device)
    dtype = _DTYPE_NAMES[resolve_dtype(dtype, target)]  # refused or warned about once, not once per file

    out_dir = Path(out_dir)
    jobs = images.plan_outputs(images.expand_inputs(list(inputs), tuple(modality.suffixes)), out_dir,
                               lambda rel: _output_names(rel, suffix, compare),
                               "choose another output folder (--out) or a suffix for the output names (--suffix)")
    failed: list[str] = []
    started = time.perf_counter()
    with on_device(backbone, target), progress(jobs, unit="image", disable=None) as bar:
        for file, relative, (output, *side_by_side) in bar:
            bar.set_postfix_str(str(relative), refresh=False)
            began = time.perf_counter()
            try:
                stack = modality.read_stack(file)
                results = [enhance_image(backbone, modality, image, path=path, options=options, seed=seed,
                                         tile=tile, overlap=overlap, batch=batch, device=target, dtype=dtype,
                                         preserve_color=preserve_color, progress=not bar.disable)
                           for image in stack]
                if not all(np.isfinite(result).all() for result in results):  # written, NaN would turn black
                    raise UserError(f"enhancing '{file}' gave NaN or infinite values, so it was not written.")
                modality.write_stack(output, results, like=file)
                for middle, name in ((len(stack) // 2, name) for name in side_by_side):
                    images.write_image(name, _side_by_side(stack[middle], results[middle]), bits=8)
            except (UserError, OSError) as exc:  # disk full, read-only folder: reported and skipped like a bad file
                failed.append(str(relative))
                tqdm.write(f"FAILED {relative}: {describe_os_error(exc) if isinstance(exc, OSError) else exc}",
                           file=sys.stderr)
                continue
            height, width = stack[0].shape[:2]
            size = f"{width}×{height}" + (f"×{len(stack)}" if len(stack) > 1 else "")
            tqdm.write(f"{relative}  {size}  {time.perf_counter() - began:.1f} s")

    seconds = time.perf_counter() - started
    summary = f"{len(jobs) - len(failed)} enhanced, {len(failed)} failed, {seconds:.1f} s -> {out_dir}"
    if failed:
        summary += f" (failed: {', '.join(failed)})"
    print(summary, file=sys.stderr if failed else sys.stdout)
    return 2 if failed else 0
