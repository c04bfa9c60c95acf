"""Small, fast image operations the degradation models share (numpy/scipy only, float32 throughout)."""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage as ndi

# ITU-R 601 luma weights, as torchvision's and PIL's grayscale conversions use.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Kernels longer than this are applied on a downsampled grid (a blur that wide only keeps low frequencies).
_LONGEST_DIRECT_KERNEL = 31


def grayscale(image: np.ndarray) -> np.ndarray:
    """``H×W`` luma of an ``H×W×3`` image."""
    return image @ LUMA


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of an ``H×W`` map over a bool mask (0 for an empty mask), without gathering the pixels."""
    count = int(mask.sum())
    return float(np.dot(values.ravel(), mask.ravel().astype(values.dtype))) / count if count else 0.0


def clip01(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0, out=image)


def odd(size: float) -> int:
    """The nearest odd kernel size, at least 1 (OpenCV's Gaussian kernels must be odd)."""
    size = max(1, int(round(size)))
    return size if size % 2 else size + 1


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of ``size`` taps (OpenCV's ``getGaussianKernel``)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(offsets**2) / (2.0 * max(sigma, 1e-6) ** 2))
    return (weights / weights.sum()).astype(np.float32)


def truncated_gaussian_blur(array: np.ndarray, size_yx: tuple[int, int], sigma: float) -> np.ndarray:
    """Separable Gaussian blur with an explicit kernel size, as ``cv2.GaussianBlur(ksize, sigma)``: the
    kernel may be far shorter than the Gaussian (cofe-Net's blurs are). Mirror borders, like OpenCV.

    Works on ``H×W`` or ``H×W×C`` and always returns a new array; kernels longer than ~31 taps run on a
    downsampled grid.
    """
    if max(size_yx) > _LONGEST_DIRECT_KERNEL:
        factor = min(max(size_yx) // 32, min(array.shape[:2]) // 2)
        if factor >= 2:
            return _wide_blur(array, size_yx, sigma, factor)
    out = np.asarray(array, dtype=np.float32)
    for axis, size in enumerate(size_yx):
        if size > 1:
            out = ndi.correlate1d(out, gaussian_kernel(size, sigma), axis=axis, mode="mirror")
    return out.copy() if out is array else out  # a 1×1 kernel changes nothing


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an ``H×W×C`` image with a kernel of about 6σ (±3σ)."""
    if sigma <= 0:
        return image
    return ndi.gaussian_filter(image, sigma=(sigma, sigma, 0), truncate=3.0, mode="mirror")


def defocus_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Defocus of an ``H×W×C`` image: convolution with a disc of ``radius`` px (its rim antialiased by 4×
    supersampling), mirrored at the borders."""
    if radius <= 0.3:
        return image
    half = int(np.ceil(radius))
    fine = (np.arange(-half * 4, half * 4 + 4) + 0.5) / 4 - 0.5
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2 <= radius**2).astype(np.float32)
    disc = inside.reshape(2 * half + 1, 4, 2 * half + 1, 4).mean(axis=(1, 3))
    return ndi.convolve(image, (disc / disc.sum())[..., None], mode="mirror")


def _wide_blur(array: np.ndarray, size_yx: tuple[int, int], sigma: float, factor: int) -> np.ndarray:
    """A wide blur computed on a grid ``factor`` times coarser and interpolated back: its result is
    smooth at the scale of the kernel, so the coarse grid loses nothing visible and saves ~factor² work."""
    height, width = array.shape[:2]
    pad = ((0, -height % factor), (0, -width % factor)) + ((0, 0),) * (array.ndim - 2)
    padded = np.pad(np.asarray(array, dtype=np.float32), pad, mode="reflect")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, *padded.shape[2:])
    coarse = blocks.sum(axis=3).sum(axis=1) / np.float32(factor * factor)  # two single-axis sums: faster
    coarse = truncated_gaussian_blur(coarse, tuple(odd(s / factor) for s in size_yx), sigma / factor)
    return upsample_linear(coarse, factor, (height, width))


def upsample_linear(coarse: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a grid of ``factor``×``factor`` block means back to ``shape`` (pixel areas
    aligned; edges held), as two 1-D interpolations (several times faster than ``ndimage.zoom``)."""
    rows0, rows1, row_weight = _linear_taps(shape[0], coarse.shape[0], factor)
    cols0, cols1, col_weight = _linear_taps(shape[1], coarse.shape[1], factor)
    extra = (None,) * (coarse.ndim - 2)
    rows = coarse[rows0] * (1 - row_weight)[(slice(None), None, *extra)]
    rows += coarse[rows1] * row_weight[(slice(None), None, *extra)]
    out = rows[:, cols0]
    out *= (1 - col_weight)[(None, slice(None), *extra)]
    out += rows[:, cols1] * col_weight[(None, slice(None), *extra)]
    return out


def _linear_taps(size: int, coarse_size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    position = np.clip((np.arange(size) + 0.5) / factor - 0.5, 0, coarse_size - 1)
    lower = np.floor(position).astype(np.intp)
    return lower, np.minimum(lower + 1, coarse_size - 1), (position - lower).astype(np.float32)


def blend(image: np.ndarray, towards, keep: float) -> np.ndarray:
    """``keep·image + (1 − keep)·towards`` in place, clipped to [0, 1]: torchvision's and PIL's
    brightness/contrast/saturation adjustments. ``towards`` is a number or an ``H×W`` map."""
    image *= np.float32(keep)
    if np.ndim(towards) == 2:
        image += (np.float32(1 - keep) * towards)[..., None]
    else:
        image += np.float32((1 - keep) * towards)
    return clip01(image)


def squared_distance(shape: tuple[int, int], cy: float, cx: float) -> np.ndarray:
    """Squared distance of every pixel centre to ``(cy, cx)``."""
    rows = (np.arange(shape[0], dtype=np.float32) - cy) ** 2
    cols = (np.arange(shape[1], dtype=np.float32) - cx) ** 2
    return rows[:, None] + cols[None, :]


def add_local(image: np.ndarray, cy: float, cx: float, reach: float, make) -> None:
    """Add ``make(window_shape, cy_local, cx_local)`` (an ``h×w`` or ``h×w×C`` field) to the window of
    ``image`` within ``reach`` pixels of ``(cy, cx)``, in place, clipping to [0, 1]. Spots are small: this
    keeps their cost proportional to their size, not the image's."""
    height, width = image.shape[:2]
    y0, y1 = max(0, int(np.floor(cy - reach))), min(height, int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(np.floor(cx - reach))), min(width, int(np.ceil(cx + reach)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    field = make((y1 - y0, x1 - x0), cy - y0, cx - x0)
    window = image[y0:y1, x0:x1]
    window += field if field.ndim == 3 else field[..., None]
    clip01(window)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` compressed as JPEG at ``quality`` and decoded again (Pillow, 4:2:0 chroma)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="JPEG",
                                                                                 quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded, dtype=np.float32) / 255.0
