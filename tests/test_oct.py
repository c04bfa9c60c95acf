"""The ``oct`` modality: phantoms, speckle physics, degradations, no-reference metrics and .npy volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rdiff
from rdiff.metrics import PSNR_CAP
from rdiff_oct.config import DEGRADATIONS, OctDegradationConfig
from rdiff_oct.degradations import degrade_bscan, speckle_field
from rdiff_oct.metrics import OctENL, OctSNR
from rdiff_oct.phantom import bscan_phantom


@pytest.fixture(scope="module")
def oct_modality():
    return rdiff.create_modality("oct")


@pytest.fixture(scope="module")
def phantom():
    return bscan_phantom(seed=7, height=256, width=256)


def batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def enl(images: list[np.ndarray]) -> float:
    metric = OctENL()
    metric.update(batch(*images), batch(*images))
    return float(metric.compute())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_embedded_phantoms_are_deterministic_and_the_splits_differ(oct_modality):
    train, heldout = oct_modality.sample_images("train"), oct_modality.sample_images("heldout")
    assert len(train) == 8 and len(heldout) == 4
    assert all(im.shape == (256, 256, 1) and im.dtype == np.float32 for im in train + heldout)
    assert all(0.0 <= im.min() and im.max() <= 1.0 for im in train + heldout)
    again = rdiff.create_modality("oct").sample_images("train")
    assert all(np.array_equal(a, b) for a, b in zip(train, again))
    assert not any(np.allclose(a, b) for a in train for b in heldout)
    assert oct_modality.channels == 1 and ".npy" in oct_modality.suffixes
    assert oct_modality.roi(train[0]).all()  # the whole B-scan counts


def test_phantom_layers_are_in_anatomical_order(phantom):
    image = phantom.image[..., 0]
    order = ["nfl", "gcl", "ipl", "inl", "opl", "onl", "elm", "inner_segments", "ellipsoid_zone",
             "outer_segments", "interdigitation", "rpe", "choroid", "sclera"]
    tops = np.stack([phantom.boundaries[name] for name in order])
    assert (np.diff(tops, axis=0) >= 0).all()  # every boundary lies below the previous one, in every column

    # flatten on Bruch's membrane (as OCT software does) and average the A-scans away from the fovea
    columns = [c for c in range(image.shape[1]) if abs(c - phantom.fovea_column) > 40]
    offsets = np.arange(-120, 40)
    profile = np.mean([np.interp(phantom.boundaries["choroid"][c] + offsets, np.arange(image.shape[0]), image[:, c])
                       for c in columns], axis=0)
    brightest = offsets[np.argmax(profile)]
    assert -10 <= brightest < 0  # the RPE band sits just above Bruch's membrane
    onl = profile[(offsets > -45) & (offsets < -30)].mean()  # the outer nuclear layer, well above the RPE
    assert onl < 0.5 * profile.max()
    vitreous = image[:int(tops[0].min()) - 3].mean()
    assert vitreous < onl < profile[offsets == brightest][0]

    # without annotations: in most A-scans the brightest pixel belongs to the RPE / ellipsoid-zone complex
    peak = np.argmax(image, axis=0)
    in_band = (peak >= phantom.boundaries["ellipsoid_zone"] - 1) & (peak <= phantom.boundaries["choroid"] + 1)
    assert in_band.mean() > 0.9


def test_the_foveal_pit_thins_the_inner_retina(phantom):
    fovea = int(round(phantom.fovea_column))
    parafovea = fovea + (50 if fovea < 128 else -50)
    inner = phantom.boundaries["onl"] - phantom.boundaries["nfl"]
    assert inner[fovea] < 0.25 * inner[parafovea]


@pytest.mark.parametrize("looks", [1, 4])
@pytest.mark.parametrize("grain", [0.0, 0.7])
def test_speckle_has_the_equivalent_number_of_looks_it_was_made_with(looks, grain):
    """Fully developed speckle of L looks is Gamma(L, 1/L): mean²/variance of a homogeneous region = L."""
    region = 0.3 * speckle_field((256, 256), looks, np.random.default_rng(looks), grain)
    measured = region.mean() ** 2 / region.var()
    assert abs(measured - looks) < 0.15 * looks
    assert abs(region.mean() - 0.3) < 0.03


def test_speckle_lowers_enl_and_averaging_frames_raises_it(oct_modality):
    clean = oct_modality.sample_images("heldout")[:2]

    def speckled(frames: int) -> list[np.ndarray]:
        config = OctDegradationConfig(name="speckle", frames=[frames, frames])
        return [degrade_bscan(im[..., 0], config, np.random.default_rng(i))[0][..., None] for i, im in enumerate(clean)]

    one, three, nine = enl(speckled(1)), enl(speckled(3)), enl(speckled(9))
    assert one < three < nine < enl(clean)


def test_degradation_is_seeded_and_reports_json_parameters(oct_modality, phantom):
    image, roi = phantom.image, np.ones(phantom.image.shape[:2], bool)
    a, params_a = oct_modality.degrade(image, roi, np.random.default_rng(3))
    b, params_b = oct_modality.degrade(image, roi, np.random.default_rng(3))
    c, _ = oct_modality.degrade(image, roi, np.random.default_rng(4))
    assert np.array_equal(a, b) and params_a == params_b and not np.array_equal(a, c)
    assert a.shape == image.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert json.loads(json.dumps(params_a)) == params_a
    assert "speckle" in params_a["types"] and set(params_a["types"]) <= set(DEGRADATIONS)


def test_pixels_outside_the_roi_are_left_alone(oct_modality, phantom):
    roi = np.zeros(phantom.image.shape[:2], bool)
    roi[:, :100] = True
    out, _ = oct_modality.degrade(phantom.image, roi, np.random.default_rng(0))
    assert np.array_equal(out[:, 100:], phantom.image[:, 100:]) and not np.array_equal(out[:, :100], phantom.image[:, :100])


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_each_named_degradation_runs_alone_and_lowers_psnr(name, phantom):
    modality = rdiff.create_modality("oct", degradation={"name": name})  # as --set modality_options.degradation.name=...
    out, params = modality.degrade(phantom.image, np.ones(phantom.image.shape[:2], bool), np.random.default_rng(1))
    assert params["types"] == [name]
    assert psnr(out, phantom.image) < 40.0


def test_falloff_darkens_deep_rows_and_motion_moves_a_scans_vertically(phantom):
    image = phantom.image[..., 0]
    darker, _ = degrade_bscan(image, OctDegradationConfig(name="falloff", falloff_db=[10, 10]), np.random.default_rng(0))
    loss = image - darker
    assert loss[200:].mean() > loss[20:60].mean() >= 0
    moved, params = degrade_bscan(image, OctDegradationConfig(name="motion", motion_px=[3, 3]), np.random.default_rng(0))
    assert params["motion_px"] == 3
    # each column is still the same A-scan, moved up or down by at most 3 px
    candidates = np.arange(-5, 6)
    best = [candidates[np.argmin([np.abs(np.roll(image[:, c], s) - moved[:, c])[8:-8].sum() for s in candidates])]
            for c in range(image.shape[1])]
    assert np.abs(best).max() <= 3 and np.abs(best).max() >= 2


def test_metrics_on_identical_images(oct_modality, phantom):
    metrics = oct_modality.metrics()
    x = batch(phantom.image, bscan_phantom(8).image)
    metrics.update(x, x, torch.ones_like(x))
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores["psnr"] == pytest.approx(PSNR_CAP) and scores["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert set(scores) == {"psnr", "ssim", "snr", "cnr", "enl"}
    assert all(np.isfinite(v) for v in scores.values())


def test_each_metric_keeps_its_own_value_after_a_batch_where_two_agree(oct_modality, phantom):
    """PSNR and SNR are both capped at 100 dB on identical images; later batches must not merge them."""
    metrics = oct_modality.metrics()
    clean = batch(phantom.image)
    metrics.update(clean, clean)
    noisy, _ = degrade_bscan(phantom.image[..., 0], OctDegradationConfig(name="speckle"), np.random.default_rng(0))
    metrics.update(batch(noisy[..., None]), clean)
    alone = OctSNR()
    alone.update(clean, clean)
    alone.update(batch(noisy[..., None]), clean)
    assert float(metrics.compute()["snr"]) == pytest.approx(float(alone.compute()))


def test_no_reference_metrics_favour_the_clean_scan(oct_modality, phantom):
    noisy, _ = degrade_bscan(phantom.image[..., 0], OctDegradationConfig(name="low_signal"), np.random.default_rng(0))

    def score(image: np.ndarray) -> dict[str, float]:
        metrics = oct_modality.metrics()
        metrics.update(batch(image), batch(phantom.image))  # the target plays no part in snr, cnr, enl
        return {k: float(v) for k, v in metrics.compute().items()}

    clean, degraded = score(phantom.image), score(noisy[..., None])
    for key in ("snr", "cnr", "enl"):
        assert degraded[key] < clean[key], key


@pytest.mark.parametrize("dtype, scale", [(np.uint16, 65535.0), (np.float32, 1.0), (np.float64, 80.0)])
def test_npy_volume_round_trip_keeps_dtype_and_value_scale(oct_modality, tmp_path, dtype, scale):
    rng = np.random.default_rng(0)
    volume = rng.random((3, 40, 50)) * scale
    volume = np.round(volume).astype(dtype) if dtype == np.uint16 else volume.astype(dtype)
    source = tmp_path / "volume.npy"
    np.save(source, volume)
    scans = oct_modality.read_stack(source)
    assert len(scans) == 3 and all(s.shape == (40, 50, 1) and s.dtype == np.float32 for s in scans)
    assert 0.0 <= min(s.min() for s in scans) and max(s.max() for s in scans) <= 1.0
    written = oct_modality.write_stack(tmp_path / "out" / "volume.npy", scans, like=source)
    back = np.load(written)
    assert back.dtype == volume.dtype and back.shape == volume.shape
    tolerance = 0 if dtype == np.uint16 else 1e-5 * scale
    assert np.abs(back.astype(np.float64) - volume).max() <= tolerance


def test_a_single_bscan_npy_reads_as_one_image_and_writes_back_2d(oct_modality, tmp_path):
    source = tmp_path / "scan.npy"
    np.save(source, (np.arange(64 * 48).reshape(64, 48) % 256).astype(np.uint8))
    assert [s.shape for s in oct_modality.read_stack(source)] == [(64, 48, 1)]
    image = oct_modality.read(source)
    back = np.load(oct_modality.write(tmp_path / "copy.npy", image, like=source))
    assert back.dtype == np.uint8 and np.array_equal(back, np.load(source))
    volume = tmp_path / "volume.npy"
    np.save(volume, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(rdiff.UserError, match="volume.npy"):
        oct_modality.read(volume)  # one image was asked for, two B-scans are there


@pytest.mark.parametrize("content", ["text", "1d", "4d", "strings", "nan"])
def test_a_bad_npy_file_is_a_user_error_naming_it(oct_modality, tmp_path, content):
    path = tmp_path / f"bad_{content}.npy"
    if content == "text":
        path.write_text("not a numpy file")
    else:
        array = {"1d": np.zeros(10), "4d": np.zeros((2, 3, 8, 8)), "strings": np.array([["a", "b"], ["c", "d"]]),
                 "nan": np.full((8, 8), np.nan)}[content]
        np.save(path, array)
    with pytest.raises(rdiff.UserError, match=f"bad_{content}.npy"):
        oct_modality.read_stack(path)


def test_bad_degradation_options_are_refused_with_their_key():
    with pytest.raises(rdiff.UserError, match="degradation.name"):
        rdiff.create_modality("oct", degradation={"name": "specle"})
    with pytest.raises(rdiff.UserError, match="degradation.frames"):
        rdiff.create_modality("oct", degradation={"frames": [4, 2]})
