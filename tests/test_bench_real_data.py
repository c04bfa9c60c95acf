"""``rdiff bench --data DIR`` (rdiff_bench.real_data): the split by subject, whole-image scoring at the working
scale, the colour-regression baseline, the command end to end, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rdiff.cli import main
from rdiff.data import degraded_images
from rdiff.images import write_image
from rdiff_bench import real_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = ["--reconstruct-steps", "2", "--adapt-steps", "2", "--batch-size", "2",
        "--set", "train.resize=96", "--set", "train.val_pairs=2", "--set", "train.pairs=4"]


def _photos(folder: Path, count: int, size: tuple[int, int] = (80, 100)) -> list[Path]:
    """``count`` small colour photographs cut from scikit-image's, each a different place and tint."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    source = skimage.data.astronaut().astype(np.float32) / 255.0
    paths = []
    for i in range(count):
        y, x = 20 * i, 15 * i
        image = source[y:y + 2 * size[0]:2, x:x + 2 * size[1]:2] * (0.8 + 0.04 * i)
        paths.append(write_image(folder / f"photo{i:02d}.png", np.clip(image, 0, 1)))
    return paths


def _touch_oct(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        write_image(folder / name, rng.random((32, 40, 1)).astype(np.float32))


# --- the split ----------------------------------------------------------------------------------------------------


def test_split_is_by_file_and_by_patient(tmp_path):
    import rdiff

    oct_names = [f"{c}-{p}-{n}.png" for c, p, k in (("CNV", 101, 4), ("DME", 102, 3), ("DRUSEN", 103, 1),
                                                   ("NORMAL", 104, 2), ("CNV", 105, 5), ("DME", 106, 2),
                                                   ("NORMAL", 107, 3), ("DRUSEN", 108, 2))
                 for n in range(1, k + 1)]
    _touch_oct(tmp_path / "oct", oct_names)
    oct_modality = rdiff.create_modality("oct")
    split = real_data.split_folder(oct_modality, tmp_path / "oct")
    files = [p.name for part in split.values() for p in part]
    assert sorted(files) == sorted(oct_names)  # every file once
    patients = {name: {oct_modality.subject(p) for p in part} for name, part in split.items()}
    assert all(patients.values())
    assert not patients["train"] & patients["pairs"] and not patients["train"] & patients["test"] \
        and not patients["pairs"] & patients["test"]
    # all B-scans of one patient in one part
    for name, part in split.items():
        for p in part:
            assert all(q.name in {r.name for r in part} for q in (tmp_path / "oct").iterdir()
                       if oct_modality.subject(q) == oct_modality.subject(p))

    _photos(tmp_path / "photos", 10)
    split = real_data.split_folder(rdiff.create_modality("photo"), tmp_path / "photos")
    names = [{p.name for p in part} for part in split.values()]
    assert sum(len(n) for n in names) == 10 and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(split["test"]) == 2 and len(split["pairs"]) == 2  # 20 % and 15 % of 10 subjects


# --- whole images, the regression ---------------------------------------------------------------------------------


def test_test_images_are_scored_whole_at_the_working_scale(tmp_path):
    import rdiff

    modality = rdiff.create_modality("photo")
    files = _photos(tmp_path, 3, size=(150, 200))
    tests = degraded_images(modality, files, 96, seed=7)
    seen = []

    def produce(pair):
        seen.append(pair.lq.shape)
        return pair.hq

    result, kept = real_data.score_whole(modality, tests, produce, keep=2)
    assert seen == [(72, 96, 3)] * 3  # each image once, whole, longest side 96
    assert result["images"] == 3 and result["sizes"] == [[72, 96]] and len(kept) == 2
    assert result["psnr"] > 60  # the clean image against itself
    assert "by_type" in result and all(result["by_type"].values())
    # the same seed degrades the same way: the test set is fixed
    again = degraded_images(modality, files, 96, seed=7)
    assert all(np.array_equal(a.lq, b.lq) and a.params == b.params for a, b in zip(tests, again))


def test_colour_regression_recovers_a_known_map_exactly():
    from rdiff.data import Pair

    rng = np.random.default_rng(3)
    truth = np.array([[0.05, 0.6, 0.2, 0.0, 0.1],  # out_c = w_c · [1, r, g, b, x_c²]
                      [0.02, 0.1, 0.7, 0.1, -0.1],
                      [0.10, 0.0, 0.1, 0.5, 0.2]])
    pairs = []
    for _ in range(3):
        lq = rng.random((20, 24, 3)).astype(np.float32)
        hq = np.stack([real_data.colour_features(lq, c) @ truth[c] for c in range(3)], -1).reshape(lq.shape)
        roi = rng.random((20, 24)) > 0.3
        pairs.append(Pair(lq, hq.astype(np.float32), roi))
    fitted = real_data.fit_colour_map(pairs)
    assert fitted.shape == (3, 5)
    np.testing.assert_allclose(fitted, truth, atol=1e-5)
    out = real_data.apply_colour_map(fitted, pairs[0].lq, pairs[0].roi)
    np.testing.assert_allclose(out[pairs[0].roi], pairs[0].hq[pairs[0].roi], atol=1e-5)
    assert np.array_equal(out[~pairs[0].roi], pairs[0].lq[~pairs[0].roi])  # outside the roi: the input

    grey = rng.random((16, 16, 1)).astype(np.float32)  # grey: [1, x, x²]
    hq = 0.1 + 0.5 * grey + 0.3 * grey ** 2
    fitted = real_data.fit_colour_map([Pair(grey, hq, np.ones((16, 16), bool))])
    np.testing.assert_allclose(fitted, [[0.1, 0.5, 0.3]], atol=1e-5)


# --- the command --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    data = tmp_path_factory.mktemp("photos")
    _photos(data, 10)
    out = tmp_path_factory.mktemp("bench") / "out"
    code = main(["bench", "--data", str(data), "--modality", "photo", "--seeds", "2", *TINY,
                 "--uncertainty-samples", "2", "--out", str(out)])
    return data, out, code


@pytest.mark.slow
def test_the_command_runs_end_to_end_and_writes_the_tables(bench_out, capsys):
    data, out, code = bench_out
    assert code == 0
    split = json.loads((out / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "pairs", "test")]
    assert sum(map(len, parts)) == 10 and not (parts[0] & parts[2] or parts[1] & parts[2] or parts[0] & parts[1])
    # phase 1 saw only the train part; the adaptation only the pairs part
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(split["train"])
    assert sorted(p.name for p in (out / "pairs").iterdir()) == sorted(split["pairs"])
    report = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["path"]): r for r in report["rows"]}
    for key in [("input", None), ("clahe", None), ("colour regression", None), ("reconstruct-only", "fast"),
                ("adapted", "fast"), ("adapted", "ddim4"), ("ceiling D(E(hq))", "fast"),
                ("bicubic round trip", None)]:
        assert key in rows, key
        row = rows[key]
        assert row["images"] == len(split["test"]) and row["sizes"] == [[77, 96]]  # whole, at the working scale
        assert np.isfinite(row["metrics"]["psnr"]["mean"]) and "delta_e" in row["metrics"]
    assert rows[("adapted", "fast")]["seeds"] == [0, 1] and len(rows[("adapted", "fast")]["per_seed"]["psnr"]) == 2
    assert rows[("colour regression", None)]["seeds"] == [0, 1]  # simulated pairs: one fit per seed
    assert rows[("input", None)]["by_type"]
    # the hallucination report: on the adapted rows of the default sampling path only, one entry per seed
    report = rows[("adapted", "ddim4")]["hallucination"]  # ddim4: the tiny preset's eval.path
    assert (report["samples"], report["seeds"]) == (2, 2)
    assert all(0 <= report[k]["mean"] <= 1 for k in ("structure", "invented", "lost"))
    assert all(report[k] is None or 0 <= report[k]["mean"] <= 1 for k in ("invented_flagged", "lost_flagged"))
    assert [key for key, r in rows.items() if r.get("hallucination")] == [("adapted", "ddim4")]
    text = (out / "results.md").read_text()
    assert "| backbone | method | psnr | ssim | delta_e | invented (flagged) | lost (flagged) | seeds |" in text
    line = next(l for l in text.splitlines() if l.startswith("| ldm-unet | adapted ddim4 (residual) |"))
    assert line.count("%") >= 2 and "high-uncertainty region" in text
    assert "| ldm-unet | adapted fast (residual) |" in text and "by degradation type" in text
    assert (out / "grid.png").is_file()
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert sum(r.startswith("phase1-") for r in runs) == 1 and sum(r.startswith("adapt-") for r in runs) == 2

    # a second run reuses the finished phase 1 and adaptations instead of training again
    stamp = next((out / "runs").glob("phase1-*/reconstruct/stages.json")).stat().st_mtime
    capsys.readouterr()
    assert main(["bench", "--data", str(data), "--modality", "photo", "--seeds", "2", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "reusing the finished run" in printed.err + printed.out
    assert next((out / "runs").glob("phase1-*/reconstruct/stages.json")).stat().st_mtime == stamp
    assert "| ldm-unet | reconstruct-only fast |" in printed.out  # the tables are printed at the end


@pytest.mark.slow
def test_a_finished_run_is_scored_on_the_test_part_of_the_split(bench_out, capsys):
    """`rdiff bench --data DIR --run RUN` scores any finished run as the benchmark does: the whole test
    images of DIR's split by subject, the same numbers as the benchmark's own rows for that run."""
    data, out, code = bench_out
    assert code == 0
    run = next((out / "runs").glob("adapt-*-s0-*"))
    capsys.readouterr()
    assert main(["bench", "--data", str(data), "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    assert f"; {len(split['test'])} held-out images;" in printed
    lines = printed.splitlines()
    column = next(line.split() for line in lines if "psnr" in line.split()).index("psnr")
    psnr = {line[:26].strip(): float(line[26:].split()[column]) for line in lines
            if line.startswith(("input", "adapted"))}
    report = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["path"]): r for r in report["rows"]}
    assert psnr["input (degraded)"] == pytest.approx(rows[("input", None)]["metrics"]["psnr"]["mean"], abs=1e-3)
    # * marks the default path: ddim4, the tiny preset's eval.path
    assert psnr["adapted ddim4 *"] == pytest.approx(rows[("adapted", "ddim4")]["per_seed"]["psnr"][0], abs=1e-3)


@pytest.mark.slow
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    few = tmp_path / "few"
    _photos(few, 2)
    many = tmp_path / "many"
    _photos(many, 6)
    (tmp_path / "notpairs").mkdir()
    cases = {
        "holds no images": ["--data", str(empty), "--modality", "photo"],
        "too few to split by subject": ["--data", str(few), "--modality", "photo"],
        "needs the sub-folders lq/ and hq/": ["--data", str(many), "--modality", "photo", "--test",
                                              str(tmp_path / "notpairs")],
        "unknown modality 'fundsu'": ["--data", str(many), "--modality", "fundsu"],
        "does not exist": ["--data", str(tmp_path / "missing"), "--modality", "photo"],
        "needs --modality": ["--data", str(many)],
    }
    for expected, argv in cases.items():
        capsys.readouterr()
        assert main(["bench", *argv, "--out", str(tmp_path / "out")]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert main(["bench", "--modalities", "photo"]) == 2  # neither --backbones nor --data
    assert "--backbones" in capsys.readouterr().err


def test_a_blocked_uncertainty_plugin_is_said_in_one_line(monkeypatch):
    from rdiff import plugins
    from rdiff.errors import UserError
    from rdiff_bench import hallucination

    assert hallucination.unavailable() is None  # the built-in plugin, loaded
    assert hallucination.skipped_line(4, ["ldm-unet"]) is None
    monkeypatch.setenv("RDIFF_BLOCK_PLUGINS", "uncertainty")
    plugins.reset()
    line = hallucination.skipped_line(4, ["cnn-ae", "ldm-unet"])
    assert "blocked or not loaded" in line and "\n" not in line
    # nothing to say when no report was asked for, or no backbone samples
    assert hallucination.skipped_line(0, ["ldm-unet"]) is None and hallucination.skipped_line(4, ["cnn-ae"]) is None
    with pytest.raises(UserError, match="at least 2"):
        hallucination.check_samples(1)


def test_a_misspelt_set_key_stops_the_bench_before_it_scores_or_trains(tmp_path, capsys):
    many = tmp_path / "many"
    _photos(many, 6)
    out = tmp_path / "out"
    assert main(["bench", "--data", str(many), "--modality", "photo", "--backbones", "cnn-ae",
                 "--set", "train.sed=0", "--out", str(out)]) == 2
    assert "unknown config key 'train.sed'" in capsys.readouterr().err
    assert not out.exists()  # nothing split, scored or trained


def test_a_test_folder_of_trained_subjects_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    files = _photos(data, 10)
    test = tmp_path / "test"
    for sub in ("lq", "hq"):  # real "test pairs" made of every image of the folder: phase 1 trains on some
        (test / sub).mkdir(parents=True)
        for f in files:
            (test / sub / f.name).write_bytes(f.read_bytes())
    code = main(["bench", "--data", str(data), "--modality", "photo", "--test", str(test), "--seeds", "1", *TINY,
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "never be scored on a subject it trained on" in capsys.readouterr().err


# --- on the real folders, when they are there -----------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "oct-kermany").is_dir() or not (SHARED / "fundus-idrid").is_dir(),
                    reason="../shared/data is absent (a fresh clone has no shared/)")
def test_the_split_of_the_shared_data_is_by_image_and_patient():
    import rdiff

    fundus = rdiff.create_modality("fundus")
    split = real_data.split_folder(fundus, SHARED / "fundus-idrid")
    counts = {k: len(v) for k, v in split.items()}
    assert sum(counts.values()) == 81 and counts["test"] == 16 and counts["pairs"] == 12
    oct_modality = rdiff.create_modality("oct")
    split = real_data.split_folder(oct_modality, SHARED / "oct-kermany")
    patients = {k: {oct_modality.subject(p) for p in v} for k, v in split.items()}
    assert sum(len(v) for v in split.values()) == 500
    assert not (patients["train"] & patients["test"] or patients["pairs"] & patients["test"]
                or patients["train"] & patients["pairs"])
    # the split depends on names only: the same every time
    assert real_data.split_folder(oct_modality, SHARED / "oct-kermany") == split


def test_adapting_a_phase1_run_of_your_own_builds_its_networks_not_the_presets(tmp_path):
    """A phase 1 trained with another model key (here a narrower denoiser) is adapted with that key; the
    preset gives only the keys that steer phase 2, and --set still wins."""
    import yaml

    import rdiff
    from rdiff_bench.real_data import RealBench, RealSettings

    phase1 = tmp_path / "phase1"
    phase1.mkdir()
    (phase1 / "config.yaml").write_text(yaml.safe_dump(
        {"backbone": "ldm-unet", "modality": "fundus", "preset": "tiny",
         "model": {"unet_channels": [16, 48, 64], "diffusion_loss_weight": 123.0}}))
    preset = rdiff.get_preset("ldm-unet", "tiny")["model"]
    bench = RealBench(RealSettings(data=str(tmp_path), modality="fundus", backbones=["ldm-unet"], out=str(tmp_path / "out")))
    config = bench.adapt_config("ldm-unet", "residual", 0, phase1, tmp_path)
    assert config.model["unet_channels"] == [16, 48, 64] != preset["unet_channels"]
    assert config.model.get("diffusion_loss_weight") != 123.0  # a phase-2 key: the preset's
    bench.s.overrides = {"model": {"adapt_crop": 32}}
    assert bench.adapt_config("ldm-unet", "residual", 0, phase1, tmp_path).model["adapt_crop"] == 32
