"""The uncertainty map of ``rdiff enhance --uncertainty`` (plugins/rdiff_uncertainty, docs/uncertainty.md):
it points at structure the input has and the clean image has not, or the report says the model reproduced
it; it does not depend on tiling or on anything but the seed; its calibration attains its target where the
truth is known; and a request that cannot give a spread is refused in one sentence.

Backbones are the untrained tiny preset with the residual denoiser's zero-initialised output layer given
small random weights, so samples differ (an untrained residual of zero would make every sample equal).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rdiff
from rdiff.cli import main
from rdiff_uncertainty import calibration as cal
from rdiff_uncertainty import hallucination
from rdiff_uncertainty.sampling import sample_uncertainty

LIMIT = 2 / 255


def photograph(size: int) -> np.ndarray:
    from skimage import data, transform

    return transform.resize(data.retina(), (size, size), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def sampler():
    torch.manual_seed(0)
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny")
    with torch.no_grad():
        backbone.denoiser_output().weight.normal_(0.0, 0.02)
    path, options = backbone.resolve_path("sample")
    return backbone.eval(), rdiff.create_modality("fundus"), path, options


def test_a_segment_pasted_into_the_input_only_is_flagged_or_reported(sampler):
    backbone, modality, path, options = sampler
    clean = photograph(128)
    segment = np.zeros(clean.shape[:2], bool)
    segment[60:63, 40:90] = True  # a dark vessel segment 3 px wide that the clean image does not have
    lq = clean.copy()
    lq[segment] *= 0.4
    u = sample_uncertainty(backbone, modality, lq, path=path, options=options, samples=4, seed=0, tile=1024)
    outside = u.roi & ~segment
    if u.spread[segment].mean() > 1.5 * u.spread[outside].mean():
        return  # the map is higher where the structure was pasted
    # the model reproduced it: the report must say so, as structure invented there and hardly elsewhere
    _, invented, _ = hallucination.structure_change(modality, u.mean, clean, u.roi)
    near = np.zeros_like(segment)
    near[57:66, 37:93] = True
    inside_rate = invented[near].mean()
    elsewhere_rate = invented[u.roi & ~near].mean()
    assert inside_rate > 5 * elsewhere_rate, (inside_rate, elsewhere_rate)
    assert hallucination.report(modality, u.mean, clean, u.roi, u.spread)["invented"] > 0


def test_the_map_does_not_depend_on_the_tiling(sampler):
    # 256 px, not smaller: the default overlap (96 px) must fit between tiles to cover the networks' reach
    backbone, modality, path, options = sampler
    image = photograph(256)
    whole = sample_uncertainty(backbone, modality, image, path=path, options=options, samples=3, seed=5, tile=1024)
    tiled = sample_uncertainty(backbone, modality, image, path=path, options=options, samples=3, seed=5, tile=192)
    assert whole.spread[whole.roi].mean() > 2 * LIMIT  # a map well above the tolerance, so the comparison means something
    assert np.abs(tiled.spread - whole.spread)[whole.roi].max() <= LIMIT
    assert np.abs(tiled.mean - whole.mean)[whole.roi].max() <= LIMIT


def test_the_same_seed_gives_the_same_map_and_another_seed_another(sampler):
    backbone, modality, path, options = sampler
    image = photograph(64)
    first, again, other = (sample_uncertainty(backbone, modality, image, path=path, options=options, samples=2,
                                              seed=seed, tile=1024) for seed in (3, 3, 4))
    assert np.array_equal(first.spread, again.spread) and np.array_equal(first.mean, again.mean)
    assert not np.array_equal(first.spread, other.spread)
    assert (first.spread[~first.roi] == 0).all()


def test_the_samples_share_one_encoding_and_equal_separate_enhancements(sampler, monkeypatch):
    from rdiff.enhance import enhance_image

    backbone, modality, path, options = sampler
    image = photograph(64)
    separate = [enhance_image(backbone, modality, image, path=path, options=options, seed=7 + k, tile=1024)
                for k in range(3)]
    calls = []
    encode = backbone.encode_corrected
    monkeypatch.setattr(backbone, "encode_corrected", lambda x: calls.append(1) or encode(x))
    u = sample_uncertainty(backbone, modality, image, path=path, options=options, samples=3, seed=7, tile=1024)
    assert len(calls) == 1  # corrected and encoded once, not once per sample
    assert np.allclose(u.mean, np.mean(separate, axis=0), atol=1e-6)
    assert np.allclose(u.spread, np.sqrt(np.var(separate, axis=0, ddof=1).mean(axis=2)) * u.roi, atol=1e-6)
    enhance_image(backbone, modality, image, path=path, options=options, seed=7, tile=1024)
    assert len(calls) == 2  # outside the map nothing is kept
    other = image[::-1].copy()
    alone = enhance_image(backbone, modality, other, path=path, options=options, seed=7, tile=1024)
    with backbone.reusing_condition():  # another image is encoded anew, not given the last one's latent
        enhance_image(backbone, modality, image, path=path, options=options, seed=7, tile=1024)
        assert np.array_equal(enhance_image(backbone, modality, other, path=path, options=options, seed=7, tile=1024), alone)


def _synthetic(rng: np.random.Generator, count: int, underestimate: float = 3.0) -> list[np.ndarray]:
    """Scores of images whose clean value is the mean plus Gaussian noise of a known per-pixel sigma, with a
    spread that underestimates sigma ``underestimate``-fold and a noise level that varies between images."""
    out = []
    for _ in range(count):
        sigma = rng.uniform(0.01, 0.1, size=(16, 16)) * rng.uniform(0.5, 1.5)
        mean = rng.random((16, 16, 1))
        clean = mean + rng.normal(size=mean.shape) * sigma[..., None]
        out.append(cal.scores(mean, sigma / underestimate, clean, np.ones((16, 16), bool)))
    return out


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_conformal_risk_control_attains_its_target_where_the_truth_is_known(alpha):
    rng = np.random.default_rng(0)
    risks = []
    for _ in range(40):  # the guarantee is over calibration sets too: average over draws of both
        scale = cal.fit_scale(_synthetic(rng, 50), alpha)
        risks.append(cal.mean_risk(_synthetic(rng, 50), scale))
    assert np.mean(risks) <= alpha + 0.005  # controlled ...
    assert np.mean(risks) >= alpha - 2 / 51 - 0.005  # ... and not by a needlessly wide interval


def test_risk_controlling_sets_hold_with_the_stated_confidence():
    rng = np.random.default_rng(1)
    alpha, delta = 0.1, 0.1
    test = _synthetic(rng, 400)
    failures = [cal.mean_risk(test, cal.fit_scale(_synthetic(rng, 100), alpha, delta)) > alpha for _ in range(20)]
    assert np.mean(failures) <= delta


def test_too_few_calibration_images_are_refused_in_one_sentence():
    with pytest.raises(rdiff.UserError, match="needs at least 9"):
        cal.fit_scale(_synthetic(np.random.default_rng(2), 5), 0.1)


def test_a_backbone_without_a_stochastic_path_is_refused():
    from rdiff_uncertainty.sampling import check_request

    with pytest.raises(rdiff.UserError, match="stochastic sampling path; 'cnn-ae'"):
        check_request(rdiff.create_backbone("cnn-ae", preset="tiny"), "fast", 4)


# --- the commands, on one tiny adapted run ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny adapted ldm-unet run, calibrated by the plugin at the end of phase 2 on as many crops as the run
    evaluates (eval.crops, 12 here, to be quick)."""
    out = tmp_path_factory.mktemp("uncertainty") / "run"
    config = {"backbone": "ldm-unet", "modality": "fundus", "preset": "tiny",
              "train": {"image_size": 32, "resize": 96, "steps": {"autoencoder": 2, "corrector": 2, "denoiser": 2}, "adapt_steps": 2,
                        "pairs": 2, "val_pairs": 1, "batch_size": 2, "adapt_image_size": 32, "val_every": 1},
              "eval": {"crops": 12}}
    report = rdiff.train(config, str(out))
    assert report["calibration"]["pairs"] == 12 and (out / "adapt" / "calibration.json").is_file()
    return out


@pytest.fixture
def eye(tmp_path):
    from PIL import Image

    path = tmp_path / "eye.png"
    Image.fromarray((photograph(64) * 255).astype(np.uint8)).save(path)
    return path


def test_enhance_writes_the_mean_and_both_maps(run_dir, eye, tmp_path):
    from rdiff.images import read_image

    assert main(["enhance", "--run", str(run_dir), str(eye), "--out", str(tmp_path / "out"), "--uncertainty"]) == 0
    heat = read_image(tmp_path / "out" / "eye_uncertainty.png", channels=3)
    raw = read_image(tmp_path / "out" / "eye_uncertainty16.png", channels=1)[..., 0]
    roi = rdiff.create_modality("fundus").roi(read_image(eye, channels=3))
    assert heat.shape == (64, 64, 3) and (heat[~roi] == 0).all() and heat[roi].any()
    assert (raw[~roi] == 0).all() and (raw[roi] > 0).all()  # calibrated: the floor gives every pixel a width
    assert (tmp_path / "out" / "eye.png").is_file()


@pytest.mark.parametrize("extra, message", [(["--uncertainty", "--samples", "1"], "at least 2"),
                                            (["--uncertainty", "--path", "fast"], "'fast' is deterministic"),
                                            (["--samples", "3"], "add --uncertainty")])
def test_bad_requests_end_with_one_sentence_and_exit_2(run_dir, eye, tmp_path, capsys, extra, message):
    assert main(["enhance", "--run", str(run_dir), str(eye), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "o").exists(), err


def test_evaluate_reports_coverage_and_calibrate_refits(run_dir, capsys):
    import json

    assert main(["evaluate", "--run", str(run_dir), "--uncertainty", "--crops", "2", "--json"]) == 0
    section = json.loads(capsys.readouterr().out)["uncertainty"]
    assert 0 <= section["coverage"] <= 1 and section["target_coverage"] == 0.9 and len(section["per_image"]) == 2
    assert {"invented", "lost", "invented_flagged", "lost_flagged"} <= set(section)
    assert main(["calibrate", "--run", str(run_dir), "--alpha", "0.2", "--pairs", "10", "--samples", "2"]) == 0
    fitted = cal.Calibration.load(run_dir)
    assert fitted.alpha == 0.2 and fitted.samples == 2 and fitted.pairs == 10


def test_calibrate_on_a_folder_of_whole_pairs(run_dir, tmp_path, capsys):
    """``rdiff calibrate --folder``: whole held-out pairs, as many as the folder holds; too few for alpha is
    one sentence before any sampling."""
    from PIL import Image

    for part in ("lq", "hq"):
        (tmp_path / "held" / part).mkdir(parents=True)
    for i in range(4):
        clean = np.ascontiguousarray(np.rot90(photograph(48), i))
        for part, image in (("hq", clean), ("lq", np.clip(clean * 0.8 + 0.05, 0, 1))):
            Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "held" / part / f"p{i}.png")
    assert main(["calibrate", "--run", str(run_dir), "--alpha", "0.1", "--samples", "2",
                 "--folder", str(tmp_path / "held")]) == 2
    assert "4 calibration image(s) cannot attain a risk of 0.1" in capsys.readouterr().err
    assert main(["calibrate", "--run", str(run_dir), "--alpha", "0.3", "--samples", "2",
                 "--folder", str(tmp_path / "held")]) == 0
    assert "coverage on the calibration pairs" in capsys.readouterr().out
    assert cal.Calibration.load(run_dir).pairs == 4


def test_the_coverage_benchmark_runs_end_to_end_on_a_tiny_run(run_dir, tmp_path):
    """benchmarks/uncertainty_coverage.py, the measurement docs/uncertainty.md describes, on an untrained run: it
    must run and write its figures (the coverage of an untrained model is not the point here)."""
    import json
    import sys
    from pathlib import Path

    from PIL import Image
    from skimage import data, transform

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import uncertainty_coverage

    folder = tmp_path / "eyes"
    folder.mkdir()
    for i in range(14):  # enough subjects for a split with 2 adaptation pairs and test images
        y, x = np.random.default_rng(i).integers(0, 500, 2)
        crop = transform.resize(data.retina()[y:y + 900, x:x + 900], (96, 96), anti_aliasing=True)
        Image.fromarray((crop * 255).astype(np.uint8)).save(folder / f"eye{i:02d}.png")
    code = uncertainty_coverage.main(["--modality", "fundus", "--data", str(folder), "--phase1", str(run_dir),
                                      "--pairs", "2", "--seeds", "1", "--samples", "2", "--calibration-crops", "12",
                                      "--out", str(tmp_path / "bench")])
    written = json.loads((tmp_path / "bench" / "coverage.json").read_text())
    assert code in (0, 1) and [s["alpha"] for s in written["summary"]] == [0.1, 0.2]
    assert all(0 <= c["coverage"] <= 1 and c["images"] > 0 for c in written["cells"])
    # whole calibration files from the phase-1 part of the split, sampled once for both alphas (same adapted run)
    code = uncertainty_coverage.main(["--modality", "fundus", "--data", str(folder), "--phase1", str(run_dir),
                                      "--pairs", "2", "--seeds", "1", "--samples", "2", "--calibrate-on", "files",
                                      "--calibration-part", "train", "--calibration-files", "9",
                                      "--out", str(tmp_path / "bench")])
    written = json.loads((tmp_path / "bench" / "coverage.json").read_text())
    assert code in (0, 1) and [c["calibration_pairs"] for c in written["cells"]] == [9, 9]
    assert written["cells"][0]["scale"] > written["cells"][1]["scale"]  # alpha 0.1 needs wider intervals than 0.2
