"""The ``photo`` modality: embedded photographs, camera-pipeline degradations and the colour metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rdiff
from rdiff.metrics import PSNR_CAP
from rdiff_photo.config import DEGRADATIONS, PhotoDegradationConfig
from rdiff_photo.degradations import degrade_photo, linear_to_srgb, srgb_to_linear


@pytest.fixture(scope="module")
def photo():
    return rdiff.create_modality("photo")


@pytest.fixture(scope="module")
def crop(photo):
    """A 64×64 crop with texture and colour (the astronaut's flag-bearing shoulder and face)."""
    return photo.sample_images("train")[0][40:104, 120:184].copy()


def batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_embedded_photographs_are_rgb_resized_and_the_splits_differ(photo):
    train, heldout = photo.sample_images("train"), photo.sample_images("heldout")
    assert len(train) == 4 and len(heldout) == 2
    for image in train + heldout:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.float32
        assert max(image.shape[:2]) == 320 and 0.0 <= image.min() and image.max() <= 1.0
    assert not any(a.shape == b.shape and np.allclose(a, b) for a in train for b in heldout)
    again = rdiff.create_modality("photo", longest_side=320).sample_images("heldout")
    assert all(np.array_equal(a, b) for a, b in zip(heldout, again))
    assert photo.channels == 3 and photo.roi(train[0]).all()
    with pytest.raises(rdiff.UserError, match="split 'test'"):
        photo.sample_images("test")


def test_degradation_is_seeded_and_reports_json_parameters(photo, crop):
    roi = np.ones(crop.shape[:2], bool)
    a, params_a = photo.degrade(crop, roi, np.random.default_rng(11))
    b, params_b = photo.degrade(crop, roi, np.random.default_rng(11))
    c, params_c = photo.degrade(crop, roi, np.random.default_rng(12))
    assert np.array_equal(a, b) and params_a == params_b
    assert not np.array_equal(a, c)
    assert a.shape == crop.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    assert json.loads(json.dumps(params_a)) == params_a
    assert params_a["types"] and set(params_a["types"]) <= set(DEGRADATIONS)


def test_sampled_parameters_stay_in_their_ranges(crop):
    config = PhotoDegradationConfig()
    seen: set[str] = set()
    for seed in range(40):
        for name in ("default", *DEGRADATIONS):
            _, p = degrade_photo(crop, PhotoDegradationConfig(name=name), np.random.default_rng(seed))
            seen.update(p["types"])
            full = name != "default"  # the default mix scales noise, blur and JPEG down
            if "exposure" in p:
                assert config.exposure[0] <= p["exposure"] <= config.exposure[1]
                assert config.gamma[0] <= p["gamma"] <= config.gamma[1]
            if "color_gains" in p:
                red, green, blue = p["color_gains"]
                assert abs(np.dot([0.2126, 0.7152, 0.0722], p["color_gains"]) - 1) < 1e-3  # brightness kept
                assert abs(red - blue) / green <= 2 * config.cast / (1 - config.tint) + 1e-3
            if "photons" in p:  # the mix divides the photon count by strength² (noise σ times strength)
                scale = 1.0 if full else config.mix_strength ** -2
                assert config.photons[0] * scale - 0.01 <= p["photons"] <= config.photons[1] * scale + 0.01
            if "blur" in p:
                key, bounds = ("sigma", config.blur_sigma) if p["blur"]["kind"] == "gaussian" else ("radius", config.defocus_radius)
                scale = 1.0 if full else config.mix_strength
                assert bounds[0] * scale - 1e-4 <= p["blur"][key] <= bounds[1] * scale + 1e-4
            if "jpeg_quality" in p:
                if full:
                    assert config.jpeg_quality[0] <= p["jpeg_quality"] <= config.jpeg_quality[1]
                else:
                    assert p["jpeg_quality"] >= 100 - config.mix_strength * (100 - config.jpeg_quality[0])
    assert seen == set(DEGRADATIONS)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_each_degradation_lowers_psnr(name, crop):
    photo = rdiff.create_modality("photo", degradation={"name": name})  # as --set modality_options.degradation.name=...
    out, params = photo.degrade(crop, np.ones(crop.shape[:2], bool), np.random.default_rng(0))
    assert params["types"] == [name]
    assert psnr(out, crop) < 40.0


def test_low_light_darkens_and_a_colour_cast_shifts_colour_not_brightness(crop):
    dark, _ = degrade_photo(crop, PhotoDegradationConfig(name="lowlight"), np.random.default_rng(0))
    assert dark.mean() < 0.8 * crop.mean()
    cast, params = degrade_photo(crop, PhotoDegradationConfig(name="color", cast=0.2), np.random.default_rng(1))
    luminance = np.array([0.2126, 0.7152, 0.0722])
    before, after = srgb_to_linear(crop) @ luminance, srgb_to_linear(cast) @ luminance
    assert abs(after.mean() - before.mean()) < 0.02 * before.mean() + 1e-3
    assert np.abs(cast.mean(axis=(0, 1)) - crop.mean(axis=(0, 1))).max() > 0.01


def test_srgb_transfer_functions_are_inverse():
    values = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(linear_to_srgb(srgb_to_linear(values)) - values).max() < 1e-5


def test_metrics_on_identical_images(photo, crop):
    metrics = photo.metrics()
    x = batch(crop, crop[::-1].copy())
    metrics.update(x, x, torch.ones_like(x[:, :1]))
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert set(scores) == {"psnr", "ssim", "delta_e"}
    assert scores["psnr"] == pytest.approx(PSNR_CAP) and scores["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert scores["delta_e"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["delta_e"].higher_is_better is False


def test_delta_e_grows_with_a_colour_cast_and_counts_only_the_roi(photo, crop):
    def delta_e(image: np.ndarray, roi: np.ndarray | None = None) -> float:
        metrics = photo.metrics()
        metrics.update(batch(image), batch(crop), None if roi is None else torch.from_numpy(roi)[None, None].float())
        return float(metrics.compute()["delta_e"])

    mild, _ = degrade_photo(crop, PhotoDegradationConfig(name="color", cast=0.05, tint=0.0), np.random.default_rng(2))
    strong = np.clip(crop * np.array([1.3, 1.0, 0.7], np.float32), 0, 1)
    assert 0 < delta_e(mild) < delta_e(strong)
    changed = crop.copy()
    changed[:, 32:] = strong[:, 32:]
    left = np.zeros(crop.shape[:2], bool)
    left[:, :32] = True
    assert delta_e(changed, left) == pytest.approx(0.0, abs=1e-6)
