"""The field of view (FOV) of a fundus photograph: its mask, its square frame, and the rim metrics leave out.

The mask follows the EyeQ/cofe recipe — grayscale at half resolution, threshold at ``mean/3 − 5`` (0–255
scale), fill holes, opening, largest component, fit a circle — with one correction: the circle is
intersected with the thresholded region, so a photograph whose top or bottom is clipped keeps its clipped
edges instead of being "completed" into a disc. The circle is fitted robustly (RANSAC) to the region's
outline away from the image border, so straight clipped edges and small bright tabs do not bend it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# Smallest outline (in half-resolution pixels) worth fitting a circle to; below it the thresholded region
# alone is the mask (e.g. an image whose content fills the whole frame).
_MIN_OUTLINE_POINTS = 30


@dataclass(frozen=True)
class Circle:
    """A circle in pixel-centre coordinates (row ``cy``, column ``cx``)."""

    cy: float
    cx: float
    radius: float


def fov_mask(image: np.ndarray) -> np.ndarray:
    """The field of view of ``image`` (``H×W×C`` in [0, 1]) as a bool ``H×W`` mask."""
    return fov_mask_and_circle(image)[0]


def fov_mask_and_circle(image: np.ndarray) -> tuple[np.ndarray, Circle | None]:
    """:func:`fov_mask` and the fitted circle at full resolution (``None`` when no rim is visible)."""
    full_shape = image.shape[:2]
    gray = np.asarray(image, dtype=np.float32).mean(axis=2) * 255.0
    half = _half_resolution(gray)

    region = half > half.mean() / 3.0 - 5.0
    region = ndi.binary_fill_holes(region)
    # EyeQ opens with a 20×20 square on photographs ~1000 px wide at half resolution: 2 % of the side.
    size = max(3, round(0.02 * min(half.shape)))
    region = _open_keeping_border(region, size)
    region = _largest_component(region)
    if not region.any():  # nothing brighter than the rest: the whole image is content
        return np.ones(full_shape, dtype=bool), None

    hull = _convex_hull_mask(region, full_shape)
    circle = _fit_circle(region)
    if circle is None:
        return hull, None
    # An FOV is convex (a disc cut by straight edges): the hull keeps clipped edges clipped and stops a
    # dark rim from biting into the mask; the circle removes tabs and glare outside the disc.
    circle = Circle(cy=2.0 * circle.cy + 0.5, cx=2.0 * circle.cx + 0.5, radius=2.0 * circle.radius)
    return hull & disc_mask(full_shape, circle), circle


def disc_mask(shape: tuple[int, int], circle: Circle) -> np.ndarray:
    """Pixels whose centre lies inside ``circle``."""
    rows = (np.arange(shape[0], dtype=np.float32) - circle.cy) ** 2
    cols = (np.arange(shape[1], dtype=np.float32) - circle.cx) ** 2
    return rows[:, None] + cols[None, :] <= circle.radius**2


def fov_radius(roi: np.ndarray) -> float:
    """The FOV's radius estimated from its mask: half the longer side of its bounding box, so a field
    clipped on two opposite sides still gives its full radius."""
    if not roi.any():
        return 0.0
    rows, cols = np.nonzero(roi.any(axis=1))[0], np.nonzero(roi.any(axis=0))[0]
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / 2.0


def erode_rim(roi: np.ndarray, fraction: float) -> np.ndarray:
    """``roi`` without a rim ``fraction`` of the FOV radius wide (at least one pixel when ``fraction`` > 0).

    Only the FOV's own edges are eroded: the array's border counts as inside, so a crop or a clipped
    field is not shaved where it was cut.
    """
    if fraction <= 0 or not roi.any() or roi.all():
        return roi.copy()
    width = max(1.0, fraction * fov_radius(roi))
    pad = int(np.ceil(width)) + 1
    padded = np.pad(roi, pad, mode="constant", constant_values=True)
    inside = ndi.distance_transform_edt(padded) > width
    return inside[pad:-pad, pad:-pad] & roi


@dataclass(frozen=True)
class SquareFrame:
    """The square of side ``side`` centred on the FOV's bounding box, placed at ``(top, left)`` in the image
    (it may reach outside the image when the field is clipped or not square)."""

    top: int
    left: int
    side: int
    image_shape: tuple[int, int]

    @classmethod
    def from_roi(cls, roi: np.ndarray) -> SquareFrame:
        if not roi.any():
            roi = np.ones_like(roi, dtype=bool)
        rows, cols = np.nonzero(roi.any(axis=1))[0], np.nonzero(roi.any(axis=0))[0]
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        side = int(max(height, width))
        return cls(top=int(rows[0] - (side - height) // 2), left=int(cols[0] - (side - width) // 2),
                   side=side, image_shape=tuple(roi.shape[:2]))

    def overlap(self) -> tuple[slice, slice, slice, slice]:
        """Matching slices (image rows, image cols, frame rows, frame cols) of the part inside the image."""
        height, width = self.image_shape
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1, x1 = min(self.top + self.side, height), min(self.left + self.side, width)
        return (slice(y0, y1), slice(x0, x1),
                slice(y0 - self.top, y1 - self.top), slice(x0 - self.left, x1 - self.left))

    def crop(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """The frame's content of ``array`` (``H×W`` or ``H×W×C``), ``fill`` where it leaves the image."""
        out = np.full((self.side, self.side, *array.shape[2:]), fill, dtype=array.dtype)
        rows, cols, frame_rows, frame_cols = self.overlap()
        out[frame_rows, frame_cols] = array[rows, cols]
        return out

    def paste(self, frame: np.ndarray, onto: np.ndarray) -> np.ndarray:
        """A copy of ``onto`` with the frame's content written back where the frame lies in the image."""
        out = onto.copy()
        rows, cols, frame_rows, frame_cols = self.overlap()
        out[rows, cols] = frame[frame_rows, frame_cols]
        return out


# --- helpers -----------------------------------------------------------------------------------------------


def _half_resolution(gray: np.ndarray) -> np.ndarray:
    """2×2 block means (an odd last row or column is repeated)."""
    height, width = gray.shape
    padded = np.pad(gray, ((0, height % 2), (0, width % 2)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))


def _open_keeping_border(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary opening with a ``size``² square that does not shave regions touching the image border."""
    padded = np.pad(mask, size, mode="edge")
    opened = ndi.binary_opening(padded, structure=np.ones((size, size), dtype=bool))
    return opened[size:-size, size:-size]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _convex_hull_mask(region: np.ndarray, full_shape: tuple[int, int]) -> np.ndarray:
    """The convex hull of a half-resolution region, drawn at full resolution (smooth, not 2-px steps)."""
    from scipy.spatial import ConvexHull, QhullError

    outline = region & ~ndi.binary_erosion(region, border_value=0)
    rows, cols = np.nonzero(outline)
    # The four corners of each outline pixel land on full-resolution pixel edges.
    corners = np.concatenate([np.stack([rows + dy, cols + dx], axis=1)
                              for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)]).astype(np.float64)
    try:
        hull = ConvexHull(2.0 * corners + 0.5)
    except QhullError:  # a degenerate (line-like) region
        return np.repeat(np.repeat(region, 2, axis=0), 2, axis=1)[: full_shape[0], : full_shape[1]]
    return _inside_half_planes(hull.equations, full_shape)


def _inside_half_planes(equations: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (row, col) satisfies every ``a·row + b·col + c <= 0``: a convex polygon drawn
    row by row as one column interval per row (far faster than a general point-in-polygon test)."""
    a, b, c = (equations[:, i, None] for i in range(3))
    rows = np.arange(shape[0], dtype=np.float64)[None, :]
    bound = -(a * rows + c)  # b·col <= bound, one row of bounds per half-plane
    eps = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(b > eps, bound / b, np.inf).min(axis=0)
        lower = np.where(b < -eps, bound / b, -np.inf).max(axis=0)
    # Half-planes parallel to the columns exclude whole rows.
    row_ok = np.where(np.abs(b) <= eps, bound >= -eps, True).all(axis=0)
    cols = np.arange(shape[1], dtype=np.float64)[None, :]
    return (cols >= lower[:, None] - eps) & (cols <= upper[:, None] + eps) & row_ok[:, None]


def _fit_circle(region: np.ndarray) -> Circle | None:
    """A robust circle through the region's outline, ignoring outline pixels on the image border (a cut
    edge, not the rim). ``None`` when too little rim is visible or the fit is implausible."""
    from skimage.measure import CircleModel, ransac

    inner = ndi.binary_erosion(region, border_value=1)
    outline = region & ~inner
    outline[[0, -1], :] = False
    outline[:, [0, -1]] = False
    rows, cols = np.nonzero(outline)
    if rows.size < _MIN_OUTLINE_POINTS:
        return None
    points = np.stack([cols, rows], axis=1).astype(np.float64)  # (x, y) as CircleModel expects
    threshold = max(1.0, 0.005 * max(region.shape))
    model, inliers = ransac(points, CircleModel, min_samples=3, residual_threshold=threshold,
                            max_trials=200, rng=0)
    if model is None or inliers is None or inliers.sum() < _MIN_OUTLINE_POINTS:
        return None
    if hasattr(model, "radius"):  # scikit-image >= 0.26
        (cx, cy), radius = (float(v) for v in model.center), float(model.radius)
    else:
        cx, cy, radius = (float(v) for v in model.params)
    if not np.isfinite(radius) or radius < 0.1 * min(region.shape) or radius > 2.0 * max(region.shape):
        return None
    # Outline pixels are the region's last pixels inside: its edge lies half a pixel further out, and
    # half a pixel more keeps the partly covered pixels of an anti-aliased (resized) rim inside.
    return Circle(cy=cy, cx=cx, radius=radius + 1.0)
