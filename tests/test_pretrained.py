"""Shipped phase-1 weights: listed, loadable the timm way, refused clearly when they do not fit, inside the
wheel, and good enough on an image they never saw."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import rdiff
from rdiff.pretrained import get_pretrained, list_pretrained

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"ldm-unet.tiny-fundus", "ldm-unet.tiny-oct"}
# D(E(x)) of an image none of them trained on (the embedded samples), at the working scale, inside the roi
FLOOR_DB = {"fundus": 30.0, "oct": 28.0}


def rdiff_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdiff", *args], capture_output=True, text=True, cwd=cwd)


def test_every_shipped_checkpoint_is_listed_with_its_card_and_the_total_stays_small():
    listed = {p.name: p for p in list_pretrained()}
    assert SHIPPED <= set(listed)
    for name in SHIPPED:
        checkpoint = listed[name]
        assert (checkpoint.directory / "MODEL_CARD.md").is_file()
        card = (checkpoint.directory / "MODEL_CARD.md").read_text()
        assert "CC BY 4.0" in card and "tools/pretrain.py" in card
        assert checkpoint.ceiling["phase1"]["psnr"] >= 30.0  # measured on held-out images when it was made
    assert sum(listed[n].size_bytes for n in SHIPPED) <= 30e6


def test_the_shipped_weights_come_through_the_rdiff_register_pretrained_hook():
    import rdiff_ldm_unet
    from rdiff.pretrained import RegisterPretrained

    table: dict = {}
    rdiff_ldm_unet.rdiff_register_pretrained(register=RegisterPretrained(table, "ldm-unet"))
    assert set(table) == SHIPPED and all(p.plugin == "ldm-unet" for p in table.values())


def test_list_pretrained_json_names_backbone_preset_modality_size_and_ceiling():
    result = rdiff_cli("list", "pretrained", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    row = rows["ldm-unet.tiny-fundus"]
    assert (row["backbone"], row["preset"], row["modality"]) == ("ldm-unet", "tiny", "fundus")
    assert 0 < row["size_mb"] < 30 and row["ceiling"]["psnr"] >= 30.0


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_reconstruct_an_image_they_never_saw(name):
    checkpoint = get_pretrained(name)
    modality = rdiff.create_modality(checkpoint.modality)
    backbone = rdiff.create_backbone(checkpoint.backbone, preset=checkpoint.preset, channels=modality.channels,
                                     pretrained=checkpoint.modality)
    from rdiff.data import resize_longest
    from rdiff.enhance import enhance_image

    image = resize_longest(modality.sample_images("heldout")[0], checkpoint.config["train"]["resize"])
    roi = modality.roi(image)
    if getattr(backbone, "corrector", None) is not None:
        # the autoencoder's fidelity, without the corrector's colour prior (which moves a clean photograph of
        # another camera towards the training photographs' colours: docs/pretrained.md)
        side = backbone.size_multiple
        height, width = image.shape[0] // side * side, image.shape[1] // side * side
        image, roi = image[:height, :width], roi[:height, :width]
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
            out = backbone.decode(backbone.encode_corrected(x)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    else:
        out = enhance_image(backbone, modality, image, roi=roi, path="fast", tile=1024)
    mse = float(np.mean((out - image)[roi] ** 2))
    assert 10 * np.log10(1 / mse) >= FLOOR_DB[checkpoint.modality]


def test_the_spellings_of_pretrained_agree():
    by_modality = rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="fundus")
    by_name = rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="ldm-unet.tiny-fundus")
    for a, b in zip(by_modality.state_dict().values(), by_name.state_dict().values()):
        assert torch.equal(a, b)
    untrained = rdiff.create_backbone("ldm-unet", preset="tiny")
    assert not all(torch.equal(a, b) for a, b in zip(untrained.state_dict().values(), by_name.state_dict().values()))


def test_pretrained_that_cannot_be_meant_is_one_clear_sentence():
    with pytest.raises(rdiff.UserError, match="ambiguous.*pretrained='fundus'"):
        rdiff.create_backbone("ldm-unet", preset="tiny", pretrained=True)
    with pytest.raises(rdiff.UserError, match="no pretrained weights 'ldm-unet.tiny-retina'.*shipped"):
        rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="retina")
    with pytest.raises(rdiff.UserError, match="trained with model.latent_channels=6, not 8"):
        rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="fundus", latent_channels=8)


def test_a_checkpoint_is_built_with_its_own_model_section_not_its_presets(tmp_path, monkeypatch):
    """A preset may move on (a new phase-1 loss weight) after a checkpoint was made; the checkpoint still
    loads as it was trained, in Python and with ``rdiff train --pretrained``, and a changed key is refused."""
    import shutil

    from rdiff import pretrained as shipped
    from rdiff.cli import build_parser, train_config
    from rdiff.pretrained import Pretrained

    folder = tmp_path / "tiny-fundus"
    shutil.copytree(get_pretrained("ldm-unet.tiny-fundus").directory, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["ssim_weight"] = 0.5  # what the preset does not say
    config["model"]["detail_loss_weight"] = 7.0  # a phase-2 key: adapting takes the preset's, not the checkpoint's
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    older = Pretrained("ldm-unet.tiny-fundus", "ldm-unet", "tiny", "fundus", folder, "ldm-unet")
    monkeypatch.setattr(shipped, "_registered", lambda: {older.name: older})

    preset_detail = rdiff.get_preset("ldm-unet", "tiny")["model"].get("detail_loss_weight", 0.0)
    built = rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="fundus").config
    assert built.ssim_weight == 0.5 and built.detail_loss_weight == preset_detail != 7.0
    args = build_parser().parse_args(["train", "--backbone", "ldm-unet", "--modality", "fundus", "--preset",
                                      "tiny", "--pretrained"])
    resolved, phases = train_config(args)
    assert resolved.model["ssim_weight"] == 0.5 and phases == ("adapt",)
    assert resolved.model["detail_loss_weight"] == preset_detail
    assert resolved.reconstruct_from == str(folder)
    with pytest.raises(rdiff.UserError, match="trained with model.ssim_weight=0.5, not 0.2"):
        rdiff.create_backbone("ldm-unet", preset="tiny", pretrained="fundus", ssim_weight=0.2)


def test_adapt_from_pretrained_on_the_command_line(tmp_path):
    out = tmp_path / "adapted"
    result = rdiff_cli("adapt", "--from", "pretrained:ldm-unet.tiny-fundus", "--out", str(out),
                       "--set", "train.adapt_steps=2", "--set", "eval.crops=2", "--set", "eval.sample_steps=[1]")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["enhanced"]["psnr"] > 0
    assert rdiff.load_run(out).adapted
    # adapted as `rdiff train --pretrained` adapts: with the phase-2 settings of the preset in use now
    used, preset = yaml.safe_load((out / "config.yaml").read_text()), rdiff.get_preset("ldm-unet", "tiny")
    assert used["train"]["adapt_lr"] == preset["train"]["adapt_lr"]
    assert used["model"]["detail_loss_weight"] == preset["model"].get("detail_loss_weight", 0.0)
    missing = rdiff_cli("adapt", "--from", "pretrained:ldm-unet.tiny-nothing", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "no pretrained weights" in missing.stderr and "Traceback" not in missing.stderr


def test_the_wheel_carries_every_shipped_checkpoint(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("rdiff-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for checkpoint in list_pretrained():
        if checkpoint.name not in SHIPPED:
            continue
        package_root = checkpoint.directory.parents[2]  # .../plugins/<package>/pretrained/<name>
        for path in checkpoint.directory.rglob("*"):
            if path.is_file():
                assert path.relative_to(package_root).as_posix() in names, f"{path} is not in the wheel"


def test_adapting_shipped_weights_with_another_model_key_names_the_key(tmp_path, capsys):
    from rdiff.cli import main

    out = tmp_path / "adapted"
    assert main(["adapt", "--from", "pretrained:ldm-unet.tiny-fundus", "--out", str(out),
                 "--set", "model.latent_channels=4"]) == 2
    err = capsys.readouterr().err
    assert "pretrained 'ldm-unet.tiny-fundus' was trained with model.latent_channels=6, not 4" in err, err
    assert "state_dict" not in err and not out.exists()


def test_rebuilding_keeps_shipped_stages_and_builds_the_others_with_the_keys_set(tmp_path):
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_tool", ROOT / "tools" / "pretrain.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shipped = get_pretrained("ldm-unet.tiny-fundus").directory
    args = argparse.Namespace(backbone="ldm-unet", preset="tiny", keep=["autoencoder", "corrector"], warm=[],
                              set=["model.unet_channels=[16,48,64]", "train.lr=1e-4"])
    assert tool.model_keys(args) == {"unet_channels": [16, 48, 64]}
    reconstruct = tmp_path / "reconstruct"
    tool.keep_shipped_stages(args, 3, shipped, reconstruct)
    assert json.loads((reconstruct / "stages.json").read_text()) == {"done": ["autoencoder", "corrector"]}
    for kept in ("autoencoder", "corrector"):  # the shipped networks, byte for byte
        for file in (shipped / "reconstruct" / kept).iterdir():
            assert (reconstruct / kept / file.name).read_bytes() == file.read_bytes()
    denoiser = json.loads(next((reconstruct / "denoiser").glob("config.json")).read_text())
    assert list(denoiser["block_out_channels"]) == [16, 48, 64]  # a fresh denoiser of the width asked for
