"""The command line on the toy plugin: train, adapt --from, evaluate, degrade, and exit code 2 on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rdiff.cli import main

TOY = ["--backbone", "toy", "--modality", "toy", "--adaptor", "toy-adaptor", "--preset", "tiny"]


@pytest.fixture
def trained(toy, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TOY, "--out", str(out)]) == 0
    return out


def test_train_then_evaluate(trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["crops"] == 4 and {"psnr", "ssim"} <= set(result["enhanced"])
    assert "reconstruct_only" in result  # adapted runs also score the phase-1 model alone
    assert main(["evaluate", "--run", str(trained), "--crops", "2"]) == 0
    table = capsys.readouterr().out
    assert "input (degraded)" in table and "adapted fast *" in table and "2 held-out crops" in table


def test_evaluate_data_scores_each_image_of_the_folder_whole(trained, tmp_path, capsys, monkeypatch):
    from rdiff.images import write_image
    from rdiff.run import Run

    rng = np.random.default_rng(0)
    folder = tmp_path / "heldout"
    for name, size in (("a.png", (40, 56)), ("b.png", (48, 48))):
        write_image(folder / name, rng.random((*size, 3), dtype=np.float32))
    seen = []
    enhance = Run.enhance
    monkeypatch.setattr(Run, "enhance", lambda self, image, **kw: seen.append(image.shape) or enhance(self, image, **kw))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained), "--data", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and {"psnr", "ssim"} <= set(result["paths"]["fast"])
    assert sorted(seen) == [(40, 56, 3), (48, 48, 3)]  # once per image, whole: no crops
    assert main(["evaluate", "--run", str(trained), "--data", str(tmp_path / "none")]) == 2


def test_an_existing_run_is_never_overwritten(trained, capsys):
    assert main(["train", *TOY, "--out", str(trained)]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


def test_adapt_from_references_phase_one(trained, tmp_path):
    new = tmp_path / "adapted-elsewhere"
    assert main(["adapt", "--from", str(trained), "--out", str(new), "--set", "train.adapt_steps=2"]) == 0
    assert not (new / "reconstruct").exists(), "phase 1 must be referenced, not copied"
    assert (new / "adapt" / "adaptor.safetensors").is_file()
    report = json.loads((new / "report.json").read_text())
    assert report["reconstruct_from"] == str(trained.resolve())
    import rdiff

    run = rdiff.load_run(new)
    assert run.adapted and run.backbone.adaptor is not None


def test_degrade_is_reproducible_per_seed(toy_tools, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    for out in ("one", "two"):
        assert main(["degrade", "--modality", "toy", str(src), "--out", str(tmp_path / out), "--seed", "7"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / o / "a.png")) for o in ("one", "two"))
    assert np.array_equal(a, b)
    params = json.loads((tmp_path / "one" / "a.json").read_text())
    assert params["seed"] == 7 and 0.4 <= params["params"]["gain"] <= 0.7
    assert main(["degrade", "--modality", "toy", str(src), "--out", str(tmp_path / "three"), "--seed", "8"]) == 0
    assert not np.array_equal(a, np.asarray(Image.open(tmp_path / "three" / "a.png")))


@pytest.mark.parametrize("args, culprit", [
    (["train", "--backbone", "nope", "--modality", "toy"], "unknown backbone 'nope'"),
    (["train", *TOY, "--data", "/no/such/folder"], "data folder '/no/such/folder' does not exist"),
    (["train", *TOY, "--set", "train.adapt_stpes=1"], "unknown config key 'train.adapt_stpes'"),
    (["train", *TOY, "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
    (["evaluate", "--run", "/no/such/run"], "'/no/such/run' is not an rdiff run directory"),
    (["adapt", "--from", "/no/such/run"], "--from '/no/such/run' is not an rdiff run directory"),
    (["train", *TOY, "--resume"], "--resume needs --out"),
])
def test_bad_input_exits_2_with_one_sentence(toy, args, culprit, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_empty_and_tiny_data_folders_are_refused(toy, tmp_path, capsys):
    from PIL import Image

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", *TOY, "--data", str(empty), "--out", str(tmp_path / "r1")]) == 2
    assert f"data folder '{empty}' holds no images" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(small / "x.png")
    assert main(["train", *TOY, "--data", str(small), "--out", str(tmp_path / "r2")]) == 2
    assert "x.png' is 20×20 px, smaller than the 32-px training crops" in capsys.readouterr().err


def test_mismatched_pairs_name_the_orphan(toy, tmp_path, capsys):
    from PIL import Image

    for side, names in (("lq", ["a", "b"]), ("hq", ["a"])):
        (tmp_path / "pairs" / side).mkdir(parents=True)
        for n in names:
            Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "pairs" / side / f"{n}.png")
    assert main(["train", *TOY, "--pairs", str(tmp_path / "pairs"), "--out", str(tmp_path / "r")]) == 2
    assert "lq/b.png' has no partner with the stem 'b'" in capsys.readouterr().err


def _folder_with_a_corrupt_image(root):
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_a_corrupt_training_image_stops_or_is_skipped(toy, tmp_path, capsys):
    data = _folder_with_a_corrupt_image(tmp_path / "data")
    assert main(["train", *TOY, "--data", str(data), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "train.bad_images=skip" in err
    with pytest.warns(UserWarning, match="broken.png"):
        assert main(["reconstruct", *TOY, "--data", str(data), "--out", str(tmp_path / "r2"),
                     "--set", "train.bad_images=skip"]) == 0


def test_a_run_directory_of_another_backbone_configuration_is_refused(trained, capsys):
    import yaml

    config = yaml.safe_load((trained / "config.yaml").read_text())
    config["model"]["width"] = 4  # the saved weights are 8 wide
    (trained / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--run", str(trained)]) == 2
    err = capsys.readouterr().err
    assert f"the weights in '{trained / 'reconstruct'}' do not fit the backbone 'toy'" in err


def test_a_blocked_builtin_is_named_with_its_package(monkeypatch, capsys):
    monkeypatch.setenv("RDIFF_BLOCK_PLUGINS", "dit")
    assert main(["train", "--backbone", "dit", "--modality", "fundus"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'dit'" in err and "provided by the 'rdiff' package" in err and "cnn-ae" in err
