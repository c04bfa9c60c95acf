"""The evaluation-only simulators of benchmarks/unseen_degradation.py (the held-out protocol of
docs/benchmarks.md): seeded, inside the region of interest only, and a family apart from the modalities' own
(defocus of a disc, not a Gaussian; speckle at its own dynamic range)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "unseen_degradation", Path(__file__).resolve().parents[1] / "benchmarks" / "unseen_degradation.py")
unseen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(unseen)


def fundus_like(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size] / size
    roi = np.hypot(y - 0.5, x - 0.5) < 0.45
    image = np.stack([0.7 + 0.2 * np.sin(20 * x), 0.4 + 0.1 * np.cos(25 * y), 0.2 + 0.0 * x], -1) * roi[..., None]
    return image.astype(np.float32), roi


def test_the_fundus_simulator_is_seeded_and_leaves_the_background_alone():
    image, roi = fundus_like()
    first, params = unseen.fundus_unseen(image, roi, np.random.default_rng(0))
    again, _ = unseen.fundus_unseen(image, roi, np.random.default_rng(0))
    other, _ = unseen.fundus_unseen(image, roi, np.random.default_rng(1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.shape == image.shape and first.dtype == np.float32 and 0 <= first.min() and first.max() <= 1
    assert np.array_equal(first[~roi], image[~roi])  # the black surround stays black
    assert np.abs(first[roi] - image[roi]).mean() > 0.02
    assert 0.004 <= params["defocus_radius"] <= 0.010


@pytest.mark.parametrize("radius", [0.8, 2.5, 6.0])
def test_the_defocus_kernel_is_a_normalised_disc(radius):
    kernel = unseen.disc_kernel(radius)
    assert kernel.sum() == pytest.approx(1.0)
    centre = kernel.shape[0] // 2
    assert kernel[centre, centre] == kernel.max()
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1])


def test_the_oct_simulator_speckles_and_blurs():
    rng = np.random.default_rng(0)
    layers = np.repeat(np.linspace(0.2, 0.9, 64)[:, None], 80, axis=1)[..., None].astype(np.float32)
    out, params = unseen.oct_unseen(layers, np.ones((64, 80), bool), rng)
    assert out.shape == layers.shape and 0 <= out.min() and out.max() <= 1
    # speckle: each row of the smooth input now varies across its A-scans
    assert out[:, :, 0].std(axis=1).mean() > 5 * layers[:, :, 0].std(axis=1).mean() + 0.01
    assert 35 <= params["dynamic_range_db"] <= 50
