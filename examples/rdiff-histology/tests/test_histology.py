"""The histology plugin: rdiff's modality contract, its own degradations and metric, and a tiny training run.

Run with the plugin installed (``pip install -e .``) so rdiff finds it through its entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rdiff
from rdiff.testing import ModalityContract


class TestHistology(ModalityContract):
    modality = "histology"


class TestHistologyTissueRoi(ModalityContract):
    """With the tissue mask as the roi, glass and lumen must stay untouched by every degradation."""

    modality = "histology"
    options = {"tissue_roi": True}


def test_is_listed_with_its_summary():
    assert "histology" in rdiff.list_modalities()


def test_stain_variation_changes_colour_not_structure():
    from rdiff_histology.stains import DARKEST, to_rgb, to_stains

    histology = rdiff.create_modality("histology", degradation={"name": "stain"})
    clean = histology.sample_images("heldout")[0]
    floored = np.maximum(clean, DARKEST)  # (intensities are floored at 1/255 before the logarithm)
    assert np.abs(to_rgb(to_stains(floored)) - floored).max() < 1e-5  # the deconvolution is exactly invertible
    stained, params = histology.degrade(clean, histology.roi(clean), np.random.default_rng(3))
    assert params["types"] == ["stain"] and len(params["stain"]["scale"]) == 3
    assert np.abs(stained - clean).mean() > 0.005  # the colours moved
    # ... but the tissue's structure did not: the haematoxylin maps stay almost perfectly correlated
    correlation = np.corrcoef(to_stains(stained)[..., 0].ravel(), to_stains(clean)[..., 0].ravel())[0, 1]
    assert correlation > 0.98


def test_stain_error_scores_stain_loss_not_just_pixels():
    import torch

    from rdiff_histology.metrics import StainError

    clean = torch.from_numpy(rdiff.create_modality("histology").sample_images("heldout")[0]).permute(2, 0, 1)[None]
    metric = StainError()
    metric.update(clean, clean)
    assert float(metric.compute()) == 0.0
    metric.reset()
    metric.update((clean * 1.15).clamp(0, 1), clean)  # paler: less stain everywhere
    assert float(metric.compute()) > 0.05


def test_bad_options_are_refused_in_one_sentence():
    with pytest.raises(rdiff.UserError, match="degradation.name"):
        rdiff.create_modality("histology", degradation={"name": "smudge"})
    with pytest.raises(rdiff.UserError, match="mix_probability.blur"):
        rdiff.create_modality("histology", degradation={"mix_probability": {"blur": 0.5}})


@pytest.mark.slow
def test_trains_end_to_end_with_a_built_in_backbone(tmp_path):
    """``rdiff train`` with the plugin's modality and the built-in cnn-ae backbone, a handful of steps."""
    out, log = tmp_path / "run", tmp_path / "runs.jsonl"
    command = [sys.executable, "-m", "rdiff", "train", "--backbone", "cnn-ae", "--modality", "histology",
               "--preset", "tiny", "--out", str(out), "--histology-log", str(log),
               "--set", "train.steps={autoencoder: 4}",
               "--set", "train.adapt_steps=2", "--set", "train.batch_size=4", "--set", "eval.crops=4"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["modality"] == "histology"
    assert {"psnr", "ssim", "stain_error"} <= set(report["eval"]["enhanced"])
    assert (out / "adapt" / "adaptor.safetensors").is_file()
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # the plugin's observers wrote it
    assert len(lines) == 1 and lines[0]["run"] == str(out) and lines[0]["enhanced"] == report["eval"]["enhanced"]
    assert lines[0]["checkpoints"] >= 2 and {"reconstruct:autoencoder", "adapt:adapt"} <= set(lines[0]["final_loss"])


def test_the_log_option_is_added_to_training_commands_and_refused_for_other_modalities(tmp_path):
    from types import SimpleNamespace

    import rdiff_histology
    from rdiff.cli import build_parser

    args = build_parser().parse_args(["train", "--modality", "histology", "--histology-log", str(tmp_path / "l")])
    assert args.histology_log == str(tmp_path / "l")
    with pytest.raises(SystemExit):  # not an option of commands that train nothing
        build_parser().parse_args(["evaluate", "--run", "r", "--histology-log", "l"])
    with pytest.raises(rdiff.UserError, match="histology runs only"):
        rdiff_histology.rdiff_run_started(run_dir=tmp_path, config=SimpleNamespace(modality="fundus"), cli_args=args)
    rdiff_histology.rdiff_run_started(run_dir=tmp_path, config=SimpleNamespace(modality="histology"), cli_args=None)
    rdiff_histology.rdiff_run_finished(run_dir=tmp_path, report={})  # no option given: nothing is written
    assert not (tmp_path / "l").exists()


def test_ships_its_own_pretrained_weights_through_the_hook():
    # a third-party plugin ships phase-1 weights for a built-in backbone: listed, loadable, better than
    # an untrained network on the embedded slide
    from rdiff.data import resize_longest
    from rdiff.enhance import enhance_image
    from rdiff.pretrained import get_pretrained

    checkpoint = get_pretrained("cnn-ae.tiny-histology")
    assert checkpoint.plugin == "histology" and (checkpoint.directory / "MODEL_CARD.md").is_file()
    modality = rdiff.create_modality("histology")
    image = resize_longest(modality.sample_images("heldout")[0], 256)
    roi = np.ones(image.shape[:2], bool)

    def psnr(backbone):
        out = enhance_image(backbone, modality, image, roi=roi, tile=1024)
        return 10 * np.log10(1 / float(np.mean((out - image) ** 2)))

    trained = rdiff.create_backbone("cnn-ae", preset="tiny", pretrained="histology")
    assert psnr(trained) > psnr(rdiff.create_backbone("cnn-ae", preset="tiny")) + 3
    listed = subprocess.run([sys.executable, "-m", "rdiff", "list", "pretrained"], capture_output=True, text=True)
    assert "cnn-ae.tiny-histology" in listed.stdout
