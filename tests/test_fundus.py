"""The fundus modality: FOV mask, geometry, degradations, metrics and embedded data.

The generic modality contract (shapes, dtypes, JSON parameters, splits) runs in test_contracts.py; these
tests check what is particular to fundus photographs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import rdiff
from rdiff.config import RunConfig, build, parse_set
from rdiff.metrics import PSNR_CAP
from rdiff_fundus.config import COFE_TYPES, FundusConfig
from rdiff_fundus.degradations import TYPES
from rdiff_fundus.fov import erode_rim, fov_mask
from rdiff_fundus.metrics import frangi
from rdiff_fundus.modality import Fundus, _embedded_photograph

MODELS = ["default", "cofe", "cataract", "contrast"]


def fundus(**options) -> Fundus:
    return rdiff.create_modality("fundus", **options)


def small(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized so its longest side is ``side`` px (as the engine resizes)."""
    from rdiff.data import resize_longest

    return resize_longest(image, side)


@pytest.fixture(scope="module")
def photograph() -> np.ndarray:
    """The embedded photograph at full resolution (1411²), as scikit-image ships it."""
    from skimage import data

    return data.retina().astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The held-out sample at 128 px wide (its FOV is clipped at the top) and its FOV; black outside it
    (resizing smears the rim a pixel outwards)."""
    image = small(Fundus().sample_images("heldout")[0], 128)
    roi = Fundus().roi(image)
    return image * roi[..., None], roi


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def reference_fov(image: np.ndarray) -> np.ndarray:
    """An independent, simpler FOV mask (ArcNet's): gray > 10, 8×8 opening, holes filled, largest part."""
    mask = ndi.binary_opening(image.mean(axis=2) * 255 > 10, structure=np.ones((8, 8)))
    labels, _ = ndi.label(ndi.binary_fill_holes(mask))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


# --- configuration -------------------------------------------------------------------------------------------


def test_options_come_from_run_and_degrade_configs():
    run = build(RunConfig, parse_set(["modality_options.degradation.name=cofe",
                                      "modality_options.degradation.extra=[cataract]"]))
    assert fundus(**run.modality_options).config.degradation.names == ["cofe", "cataract"]
    # `rdiff degrade --set degradation.name=cofe` builds the modality's config alone
    config = build(FundusConfig, parse_set(["degradation.name=cofe", "degradation.cofe_types=['011']"]))
    assert config.degradation.name == "cofe" and config.degradation.cofe_types == ["011"]


@pytest.mark.parametrize("options, key", [
    ({"degradation": {"name": "cofee"}}, "degradation.name"),
    ({"degradation": {"cofe_types": ["011", "9"]}}, "degradation.cofe_types"),
    ({"degradation": {"extra": ["blurr"]}}, "degradation.extra"),
    ({"metric_erosion": 0.7}, "metric_erosion"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(rdiff.UserError, match=key.replace(".", r"\.")):
        fundus(**options)


# --- field of view -------------------------------------------------------------------------------------------


def test_fov_of_the_photograph_matches_a_reference(photograph):
    roi = Fundus().roi(photograph)
    assert iou(roi, reference_fov(photograph)) >= 0.97
    assert not any(corner.any() for corner in (roi[:150, :150], roi[:150, -150:], roi[-150:, :150], roi[-150:, -150:]))


def test_fov_of_a_clipped_photograph_stays_clipped(photograph):
    full = Fundus().roi(photograph)
    top, bottom = 170, 1230  # photographs cropped above and below the disc, as many cameras save them
    cut = Fundus().roi(photograph[top:bottom])
    assert iou(cut, full[top:bottom]) >= 0.97
    # the same clipping as a black band inside the frame: the mask must not "complete" the circle
    banded = photograph.copy()
    banded[:top] = 0
    banded[bottom:] = 0
    band_roi = Fundus().roi(banded)
    assert not band_roi[: top - 2].any() and not band_roi[bottom + 2:].any()
    assert iou(band_roi[top:bottom], full[top:bottom]) >= 0.97


def test_fov_at_working_scale_and_of_blank_images():
    image = np.asarray(_embedded_photograph())
    assert iou(fov_mask(image), reference_fov(image)) >= 0.97
    assert fov_mask(np.full((32, 48, 3), 0.4, np.float32)).all()  # no rim anywhere: all content


def test_metric_rim_is_eroded_but_not_at_cut_edges():
    image = np.asarray(_embedded_photograph())
    roi = fov_mask(image)
    eroded = erode_rim(roi, 0.015)
    radius = 256
    lost = (roi.sum() - eroded.sum()) / (2 * math.pi * radius)  # average rim width in pixels
    assert 0.5 * 0.015 * radius <= lost <= 1.5 * 0.015 * radius + 1
    cut = roi[100:300]  # cut rows: only the disc's own edges lose their rim
    eroded_cut = erode_rim(cut, 0.015)
    assert eroded_cut[0].sum() >= cut[0].sum() - 12 and eroded_cut[-1].sum() >= cut[-1].sum() - 12
    assert np.array_equal(Fundus().metric_roi(roi), eroded)


# --- geometry ------------------------------------------------------------------------------------------------


def test_preprocess_crops_to_a_square_and_inverts_exactly(heldout):
    image, roi = heldout
    modality = Fundus()
    square, square_roi, inverse = modality.preprocess(image, roi)
    rows, cols = np.nonzero(roi.any(axis=1))[0], np.nonzero(roi.any(axis=0))[0]
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    assert square.shape == (side, side, 3) and square_roi.shape == (side, side)
    assert square_roi.sum() == roi.sum()  # the whole FOV is inside the square
    assert np.array_equal(inverse(square), image)  # exact round trip
    brighter = inverse(np.clip(square + 0.1, 0, 1))
    assert np.allclose(brighter[roi], np.clip(image[roi] + 0.1, 0, 1))
    assert inverse(small(square, side // 2)).shape == image.shape  # a resized result is put back too
    plain = fundus(crop_to_fov=False).preprocess(image, roi)
    assert plain[0] is image and plain[2](image) is image


# --- degradations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*MODELS, "cofe+cataract"])
def test_degradations_are_seeded_and_keep_the_background_black(name, heldout):
    image, roi = heldout
    first, *extra = name.split("+")
    modality = fundus(degradation={"name": first, "extra": extra})
    assert (image[~roi] == 0).all()
    outputs = []
    for seed in range(4):
        out, params = modality.degrade(image, roi, np.random.default_rng(seed))
        again, params_again = modality.degrade(image, roi, np.random.default_rng(seed))
        assert np.array_equal(out, again) and json.dumps(params) == json.dumps(params_again)
        assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        assert (out[~roi] == 0).all(), "the background outside the FOV changed"
        assert not np.array_equal(out[roi], image[roi])
        assert params["types"] and set(params["types"]) <= set(TYPES)
        assert params["degradation"] == name
        outputs.append(out)
    if name != "contrast":  # the paper's contrast set has no random parameter
        assert not np.array_equal(outputs[0], outputs[1])


def test_degrade_leaves_any_background_untouched(heldout):
    image, roi = heldout
    noisy = image + np.random.default_rng(0).uniform(0, 0.05, image.shape).astype(np.float32) * ~roi[..., None]
    for name in MODELS:
        out, _ = fundus(degradation={"name": name}).degrade(noisy, roi, np.random.default_rng(1))
        assert np.array_equal(out[~roi], noisy[~roi])


def test_contrast_keeps_a_quarter_of_the_contrast(heldout):
    image, roi = heldout
    out, params = fundus(degradation={"name": "contrast"}).degrade(image, roi, np.random.default_rng(0))
    assert params["types"] == ["contrast"] and params["contrast"]["factor"] == 0.25
    spread_in, spread_out = image[roi].std(axis=0), out[roi].std(axis=0)
    assert np.allclose(spread_out, 0.25 * spread_in, rtol=0.02)


def test_cofe_parameters_stay_in_the_published_ranges():
    image = small(np.asarray(_embedded_photograph()), 96)
    modality, roi = fundus(degradation={"name": "cofe"}), fov_mask(image)
    seen_types = set()
    for seed in range(150):
        params = modality.degrade(image, roi, np.random.default_rng(seed))[1]["cofe"]
        code = params["type"]
        seen_types.add(code)
        assert code in COFE_TYPES
        assert params["types"] == [t for t, bit in zip(("illumination", "spots", "blur"), code[::-1]) if bit == "1"]
        if "illumination" in params:
            colour, halo, hole = (params["illumination"][k] for k in ("colour", "halo", "hole"))
            assert 0.7 <= colour["brightness"] <= 1.2 and 0.6 <= colour["contrast"] <= 1.4
            assert 0.6 <= colour["saturation"] <= 1.4
            assert all(192 <= c <= 320 for c in halo["center"])  # ±w/8 around the centre, at 512²
            assert 384 <= halo["inner_diameter"] <= 512 < halo["outer_diameter"]
            assert halo["tint"] in ("cyan", "yellow-green") and halo["kernel"] % 2 == 1
            assert 204 <= hole["diameter"] <= 358
            assert 128 <= hole["center"][0] <= 384 and 192 <= hole["center"][1] <= 320
            mean = hole["image_mean"]
            if mean > 0.25:
                assert -0.262 - 0.06 * mean <= hole["offset"] <= -0.26 - 0.05 * mean
            else:
                assert hole["offset"] == 0
            for kernel in hole["kernel"]:
                assert int(0.55 * hole["diameter"]) <= kernel <= int(0.75 * hole["diameter"]) + 1 and kernel % 2
            assert hole["sigma"] == pytest.approx(0.8 * max(hole["kernel"]))
        if "spots" in params:
            assert 5 <= len(params["spots"]) <= 10
            for spot in params["spots"]:
                r = spot["radius"]
                assert 6 <= r <= 25
                expected = (14 / 25 + 1 - r / 25) * (1 - math.exp(-(0.5 + r / 25) * 0.3 * r / 25))
                assert spot["amplitude"] == pytest.approx(expected, abs=1e-5)
                assert 0.068 <= spot["amplitude"] <= 0.21 and spot["sigma"] == pytest.approx(10 + 1.6 * r)
                assert all(int(spot["sigma"] / 5) <= k <= int(spot["sigma"] / 4) + 1 for k in spot["kernel"])
        if "blur" in params:
            sigma = params["blur"]["sigma"]
            assert 5 <= sigma <= 15
            assert all(int(sigma / 3) <= k <= int(sigma / 2) + 1 and k % 2 and k <= 7 for k in params["blur"]["kernel"])
    assert seen_types == set(COFE_TYPES)


def test_default_model_is_mild_enough_to_undo(heldout):
    """The default mix leans on illumination and contrast, keeps blur and noise mild, and always acts."""
    image, roi = heldout
    modality = fundus()
    counts = dict.fromkeys(TYPES, 0)
    for seed in range(40):
        out, params = modality.degrade(image, roi, np.random.default_rng(seed))
        for t in params["types"]:
            counts[t] += 1
        step = params["default"]
        if "blur" in step:
            # fractions of the FOV diameter: a Gaussian or a defocus disc
            assert step["blur"].get("sigma", 0) <= 0.005 and step["blur"].get("defocus_radius", 0) <= 0.008
        if "noise" in step:
            assert step["noise"]["read"] <= 0.012
    assert counts["illumination"] > counts["blur"] and counts["illumination"] >= 25

    def change(strength: float) -> float:
        modality = fundus(degradation={"strength": strength})
        return float(np.mean([np.abs(modality.degrade(image, roi, np.random.default_rng(seed))[0] - image)[roi].mean()
                              for seed in range(10)]))

    assert change(0.5) < change(1.0) < change(2.0)


# --- metrics -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crops() -> dict[str, torch.Tensor]:
    """Eight 64² crops of the held-out sample at the engine's working scale (256 px), with their rois."""
    image = small(Fundus().sample_images("heldout")[0], 256)
    roi = Fundus().roi(image)
    corners = [(y, x) for y in (10, 40) for x in (20, 60, 100, 140)]
    clean = torch.stack([torch.from_numpy(image[y:y + 64, x:x + 64].transpose(2, 0, 1).copy()) for y, x in corners])
    rois = torch.stack([torch.from_numpy(roi[y:y + 64, x:x + 64][None].astype(np.float32)) for y, x in corners])
    return {"clean": clean, "roi": rois}


def test_metrics_on_identical_images(crops):
    metrics = Fundus().metrics()
    assert set(metrics.keys()) == {"psnr", "ssim", "vessel_dice"}
    metrics.update(crops["clean"], crops["clean"], crops["roi"])
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores["psnr"] == pytest.approx(PSNR_CAP)
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert scores["vessel_dice"] == pytest.approx(1.0)


def test_vessel_dice_falls_when_vessels_are_erased_or_invented(crops):
    clean, roi = crops["clean"], crops["roi"]
    blurred = torch.from_numpy(ndi.gaussian_filter(clean.numpy(), sigma=(0, 0, 3, 3)))
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)

    def dice(output: torch.Tensor) -> float:
        metrics = Fundus().metrics()
        metrics.update(output, clean, roi)
        return float(metrics.compute()["vessel_dice"])

    assert dice(blurred) < 0.3  # erased
    assert dice(noisy) < 0.8  # invented
    assert dice(clean * 0.8) > 0.95  # a darker exposure keeps every vessel


def test_metrics_keep_separate_states(crops):
    """Two updates with different outcomes: each metric keeps its own mean (no merged compute groups)."""
    clean, roi = crops["clean"], crops["roi"]
    metrics = Fundus().metrics()
    metrics.update(clean, clean, roi)
    metrics.update(torch.from_numpy(ndi.gaussian_filter(clean.numpy(), sigma=(0, 0, 3, 3))), clean, roi)
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores["ssim"] != pytest.approx(scores["vessel_dice"], abs=1e-3)
    assert 0.3 < scores["ssim"] < 1 and 0.3 < scores["vessel_dice"] < 1


def test_frangi_agrees_with_scikit_image():
    from skimage.filters import frangi as skimage_frangi

    image = small(np.asarray(_embedded_photograph()), 96)[..., 1]
    image = image / image.mean()
    ours = frangi(image, (1.0, 2.0, 3.0), gamma=0.1)
    theirs = skimage_frangi(image, sigmas=(1.0, 2.0, 3.0), black_ridges=True, gamma=0.1)
    assert np.abs(ours - theirs).max() < 2e-3


# --- embedded data and files ---------------------------------------------------------------------------------


def test_sample_splits_are_disjoint_parts_of_the_photograph():
    modality = Fundus()
    train, heldout = modality.sample_images("train")[0], modality.sample_images("heldout")[0]
    whole = np.asarray(_embedded_photograph())
    assert train.shape[1] == heldout.shape[1] == whole.shape[1] == 512
    assert train.shape[0] + heldout.shape[0] == whole.shape[0]  # no row in both: crops never overlap
    assert np.array_equal(np.concatenate([train, heldout]), whole)
    for image in (train, heldout):
        roi = modality.roi(image)
        assert 0.5 < roi.mean() < 0.9
        assert (image[~ndi.binary_dilation(roi, iterations=2)] == 0).all()  # a black background
    with pytest.raises(rdiff.UserError, match="split"):
        modality.sample_images("test")


def test_reads_common_files_and_names_unreadable_ones(tmp_path):
    import tifffile

    grey16 = (np.linspace(0, 65535, 32 * 40).reshape(32, 40)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "grey16.tif", grey16)
    image = Fundus().read(tmp_path / "grey16.tif")
    assert image.shape == (32, 40, 3) and image.dtype == np.float32 and image.max() == pytest.approx(1.0)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(rdiff.UserError, match="broken.png"):
        Fundus().read(tmp_path / "broken.png")
