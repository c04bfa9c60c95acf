"""Fail fast and never silently: what a user gets back after a refused run, a resume with overrides, a lost
adaptor, a full disk, a duplicate plugin name, an interrupted enhancement. Toy plugin, CPU, seconds each."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rdiff.cli import main
from test_probes import TOY, folder, pairs, png

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished toy run (phases 1 and 2); tests work on copies."""
    from rdiff import plugins

    out = tmp_path_factory.mktemp("fail-fast") / "trained"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
        mp.setenv("RDIFF_PLUGINS", "toy_plugin")
        plugins.reset()
        assert main(["train", *TOY, "--out", str(out)]) == 0
        plugins.reset()
    return out


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def adapt_steps_logged(run: Path) -> list[int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("phase") == "adapt" and "loss" in r]


# --- defects 1 and 8: refused before training, and the corrected command simply runs ---------------------------


def test_a_refused_run_leaves_nothing_and_the_corrected_command_runs(toy, tmp_path, capsys):
    bad = pairs(tmp_path / "p", lq=("a", "b", "c"), hq=("a", "b"))
    out = tmp_path / "out"
    assert main(["train", *TOY, "--pairs", str(bad), "--out", str(out)]) == 2
    assert "has no partner" in capsys.readouterr().err
    assert not out.exists(), "phase 1 must not have started"
    png(bad / "hq" / "c.png", seed=2)
    assert main(["train", *TOY, "--pairs", str(bad), "--out", str(out)]) == 0
    assert (out / "adapt" / "adaptor.safetensors").is_file()


def test_a_failure_found_only_when_loading_still_leaves_no_run(toy, tmp_path, capsys):
    data = folder(tmp_path / "data", names=("a", "b", "c"))
    good = (data / "b.png").read_bytes()
    (data / "b.png").write_bytes(good[: len(good) // 2])  # a valid header: only a full decode finds it
    out = tmp_path / "out"
    assert main(["reconstruct", *TOY, "--data", str(data), "--out", str(out)]) == 2
    assert "b.png" in capsys.readouterr().err
    assert not out.exists(), "config.yaml of a refused run would make the rerun fail"
    (data / "b.png").write_bytes(good)
    assert main(["reconstruct", *TOY, "--data", str(data), "--out", str(out)]) == 0


# --- defects 2 and 9: --resume applies safe overrides, records them, keeps the timings -----------------------------


def test_resume_applies_safe_overrides_and_records_them(toy, run, tmp_path, capsys):
    new_pairs = pairs(tmp_path / "p")
    before = json.loads((run / "report.json").read_text())["time_s"]
    assert main(["train", "--out", str(run), "--resume", "--set", "train.adapt_steps=6", "--pairs", str(new_pairs),
                 "--seed", "0"]) == 0  # --seed 0 repeats the run's own value: not a change
    captured = capsys.readouterr()
    assert "train.adapt_steps: 4 -> 6" in captured.out + captured.err
    text = (run / "config.yaml").read_text()
    assert text.startswith("# --resume on ") and "train.adapt_steps: 4 -> 6" in text.splitlines()[0]
    assert "seed" not in text.splitlines()[0]
    config = yaml.safe_load(text)
    assert config["train"]["adapt_steps"] == 6 and config["pairs"] == str(new_pairs)
    assert adapt_steps_logged(run)[-1] == 6, "phase 2 must continue to the new step count"
    after = json.loads((run / "report.json").read_text())["time_s"]
    assert after["reconstruct"] >= before["reconstruct"] and after["adapt"] >= before["adapt"]
    # a second resume keeps the first note and adds nothing when nothing changes
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert (run / "config.yaml").read_text().splitlines()[0] == text.splitlines()[0]


def test_resuming_a_finished_run_does_not_replace_its_timings(toy, run):
    report = run / "report.json"
    data = json.loads(report.read_text())
    data["time_s"].update(reconstruct=38.3, adapt=12.5)  # as measured by the original run
    report.write_text(json.dumps(data))
    assert main(["train", "--out", str(run), "--resume"]) == 0
    times = json.loads(report.read_text())["time_s"]
    assert times["reconstruct"] >= 38.3 and times["adapt"] >= 12.5


def test_resume_of_an_adapt_run_applies_overrides_too(toy, run, tmp_path):
    new = tmp_path / "re-adapted"
    assert main(["adapt", "--from", str(run), "--out", str(new)]) == 0
    assert main(["adapt", "--from", str(run), "--out", str(new), "--resume", "--set", "train.adapt_steps=6"]) == 0
    assert "train.adapt_steps: 4 -> 6" in (new / "config.yaml").read_text().splitlines()[0]
    assert adapt_steps_logged(new)[-1] == 6


# --- defects 3 and 6: weights recorded, never silently missing ---------------------------------------------------


def test_final_weights_are_recorded_with_sizes_and_hashes(finished):
    files = json.loads((finished / "manifest.json").read_text())["files"]
    for name in ("reconstruct/autoencoder/model.safetensors", "adapt/adaptor.safetensors"):
        assert files[name]["bytes"] == (finished / name).stat().st_size and len(files[name]["sha256"]) == 64


def test_a_run_without_its_adaptor_enhances_only_when_asked_explicitly(toy, run, tmp_path, capsys):
    (run / "adapt" / "adaptor.safetensors").unlink()
    image = png(tmp_path / "in" / "x.png")
    assert main(["enhance", "--run", str(run), str(image), "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a" / "x.png").exists()
    assert main(["enhance", "--run", str(run), str(image), "--out", str(tmp_path / "b"), "--reconstruct-only"]) == 0
    assert (tmp_path / "b" / "x.png").is_file()
    import rdiff

    assert not rdiff.load_run(run, reconstruct_only=True).adapted
    capsys.readouterr()


# --- defect 7: I/O errors are sentences; enhance skips the file and goes on ---------------------------------------


def test_enhance_skips_a_file_it_cannot_write_and_goes_on(toy, run, tmp_path, capsys, monkeypatch):
    from rdiff import images

    real = images.write_image

    def full_for_a(path, *args, **kwargs):
        if Path(path).name == "a.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images, "write_image", full_for_a)
    inputs = folder(tmp_path / "in", names=("a", "b"))
    assert main(["enhance", "--run", str(run), str(inputs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write '{tmp_path / 'out' / 'a.png'}': the disk is full (ENOSPC)" in err
    assert "Traceback" not in err and "failed: a.png" in err
    assert (tmp_path / "out" / "b.png").is_file() and not (tmp_path / "out" / "a.png").exists()


def test_a_read_only_folder_is_one_sentence_in_any_command(toy_tools, tmp_path, capsys, monkeypatch):
    from rdiff import images

    def refuse(path, suffix=""):
        raise OSError(errno.EROFS, "Read-only file system", str(path.parent / f".{path.name}.0123456789ab{suffix}"))

    monkeypatch.setattr(images, "temp_beside", refuse)
    src = folder(tmp_path / "in", names=("a",))
    assert main(["degrade", "--modality", "toy", str(src), "--out", str(tmp_path / "deg")]) == 2
    err = capsys.readouterr().err
    assert "read-only (EROFS)" in err and "a.png" in err and "Traceback" not in err


# --- defect 4: names belong to whoever registered first, built-ins first -------------------------------------------


def test_a_third_party_plugin_cannot_take_over_a_builtin_name(tmp_path):
    from test_plugins import make_distribution, rdiff_cli

    make_distribution(tmp_path, "rdiff_dup_plugin", """
        from rdiff import hookimpl

        @hookimpl
        def rdiff_register_backbones(register):
            register("cnn-ae", build=lambda config, channels: None, summary="an impostor")
    """, dist="rdiff-dup")
    result = rdiff_cli("list", "backbones", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["cnn-ae"]["plugin"] == "cnn-ae" and rows["cnn-ae"]["summary"] != "an impostor"
    warning = [line for line in result.stderr.splitlines() if "cnn-ae" in line]
    assert warning and warning[0].startswith("rdiff: plugin 'fake' failed to load"), result.stderr
    assert "distribution 'rdiff-dup'" in warning[0] and "distribution 'rdiff'" in warning[0]
    assert "RDIFF_BLOCK_PLUGINS=cnn-ae" in warning[0]


# --- defect 10: messages ------------------------------------------------------------------------------------------


def test_the_skip_warning_is_one_line_without_source(tmp_path):
    data = folder(tmp_path / "data", names=("a", "b", "c"))
    (data / "broken.png").write_bytes(b"\x89PNG not really")
    env = {**os.environ, "RDIFF_DISABLE_PLUGIN_AUTOLOAD": "1", "RDIFF_PLUGINS": "toy_plugin",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "rdiff", "reconstruct", *TOY, "--data", str(data), "--out",
                             str(tmp_path / "r"), "--set", "train.bad_images=skip"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert lines and lines[0].startswith("rdiff: warning: skipped:"), result.stderr[-2000:]
    assert "engine.py" not in result.stderr and "warnings.warn" not in result.stderr


def test_enhance_has_the_suffix_its_messages_mention(toy, run, tmp_path):
    image = png(tmp_path / "in" / "x.png")
    assert main(["enhance", "--run", str(run), str(image), "--out", str(tmp_path / "in"), "--suffix", "_enh"]) == 0
    assert (tmp_path / "in" / "x_enh.png").is_file()


def test_interrupting_enhance_does_not_talk_about_checkpoints(toy, run, tmp_path, capsys, monkeypatch):
    from rdiff import enhance

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(enhance, "enhance_image", interrupted)
    image = png(tmp_path / "in" / "x.png")
    assert main(["enhance", "--run", str(run), str(image), "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "checkpoint" not in err and "--resume" not in err


def test_resume_changes_data_only_once_phase_one_has_finished(tmp_path):
    from rdiff.errors import UserError
    from rdiff.resume import apply

    saved = {"backbone": "toy", "train": {"steps": {"autoencoder": 4}, "adapt_steps": 4}}
    (tmp_path / "reconstruct" / "checkpoint").mkdir(parents=True)
    with pytest.raises(UserError, match=r"--resume cannot change data in"):
        apply(tmp_path, saved, {"data": "elsewhere"})  # phase 1 is training on the old folder
    (tmp_path / "reconstruct" / "stages.json").write_text('{"done": ["autoencoder"]}')
    config, note = apply(tmp_path, saved, {"data": "elsewhere", "eval": {"crops": 8}})
    assert config.data == "elsewhere" and config.eval.crops == 8
    assert "data: null -> elsewhere" in note and "eval.crops: 64 -> 8" in note
    unchanged, note = apply(tmp_path, saved, {"backbone": "toy", "train": {"adapt_steps": 4}})
    assert note is None and unchanged.data is None  # flags that repeat the run's values change nothing


def test_a_run_that_trained_nothing_yet_can_change_any_value_on_resume(tmp_path):
    from rdiff.errors import UserError
    from rdiff.resume import apply

    saved = {"backbone": "toy", "train": {"steps": {"autoencoder": 4}, "image_size": 63}}
    config, note = apply(tmp_path, saved, {"train": {"image_size": 64}})  # config.yaml only: nothing to keep
    assert config.train.image_size == 64 and "train.image_size: 63 -> 64" in note
    with pytest.raises(UserError, match="cannot change backbone"):
        apply(tmp_path, saved, {"backbone": "cnn-ae"})


# --- issue 28, class 3: a failed checkpoint write is one sentence; the last complete checkpoint is kept ----------


def test_a_checkpoint_over_the_file_size_limit_is_one_sentence_naming_it(tmp_path):
    import resource

    env = {**os.environ, "RDIFF_DISABLE_PLUGIN_AUTOLOAD": "1", "RDIFF_PLUGINS": "toy_plugin",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 10, resource.RLIM_INFINITY))  # noqa: E731 - ulimit -f 8
    result = subprocess.run([sys.executable, "-m", "rdiff", "train", *TOY, "--out", str(tmp_path / "r")], env=env,
                            capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot write '{tmp_path / 'r' / 'reconstruct' / 'checkpoint'}" in result.stderr
    assert "(EFBIG)" in result.stderr and "Traceback" not in result.stderr
    assert "checkpoint is kept" not in result.stderr, "no checkpoint was complete yet"


def test_a_later_checkpoint_that_cannot_be_written_keeps_the_last_complete_one(toy, tmp_path, capsys, monkeypatch):
    from rdiff import checkpoints

    real, calls = checkpoints.save_file, []

    def too_large_after_the_first(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # what safetensors raises at the file-size limit
            raise Exception("Error while serializing: I/O error: File too large (os error 27)")  # noqa: TRY002
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", too_large_after_the_first)
    out = tmp_path / "r"
    assert main(["train", *TOY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write '{out / 'reconstruct' / 'checkpoint'}'" in err and "(EFBIG)" in err
    assert "The last complete checkpoint is kept (resume with --resume)." in err and "Traceback" not in err
    assert checkpoints.verify(out / "reconstruct" / "checkpoint") is None
    monkeypatch.setattr(checkpoints, "save_file", real)
    assert main(["train", "--out", str(out), "--resume"]) == 0
