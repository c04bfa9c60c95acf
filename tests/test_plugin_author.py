"""What a plugin author relies on without reading rdiff's source: the report table in the modality's own
metric order, training defaults an adaptor or modality declares, observers that see validation, plain
progress lines in logs, the options each component takes (``rdiff list ... --options``) and a scaffold for a
hook-only plugin."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from rdiff import hookimpl, plugins
from rdiff.registry import resolve_config


# --- the report table ----------------------------------------------------------------------------------------


def test_report_columns_follow_the_modality_order_and_long_names_keep_apart():
    from rdiff.metrics import MaskedPSNR, MaskedSSIM, metric_collection
    from rdiff.report import format_eval_table

    metrics = metric_collection({"ssim": MaskedSSIM(), "psnr": MaskedPSNR(), "speckle_index": MaskedPSNR()})
    clean = torch.rand(2, 3, 16, 16)
    metrics.update((clean + 0.05).clamp(0, 1), clean, None)
    scores = {k: round(float(v), 4) for k, v in metrics.compute().items()}
    assert list(scores) == ["ssim", "psnr", "speckle_index"]  # as declared, not sorted by name
    label = "a-rather-long-path-name"  # longer than the label column's 26 characters
    table = format_eval_table({"crops": 2, "input": scores, "paths": {label: scores}, "default_path": label})
    header, _, row, _ = table.splitlines()
    assert header.split() == ["ssim", "psnr", "speckle_index"]
    assert row.startswith(f"{label} *  ")
    for name, value in scores.items():  # each number ends under the end of its name, each name 2+ spaces clear
        start = header.index(name)
        assert header[start - 2:start] == "  " and row[:start + len(name)].endswith(f" {value:.4f}"), (header, row)


def test_the_default_metrics_are_psnr_then_ssim():
    from rdiff.modality import Modality

    class Plain(Modality):
        def degrade(self, image, roi, rng):
            return image, {}

        def sample_images(self, split):
            return []

    assert list(Plain().metrics().keys()) == ["psnr", "ssim"]


# --- training defaults of adaptors and modalities ----------------------------------------------------------------

FILM_PLUGIN = """
from rdiff import hookimpl
import toy_plugin


@hookimpl
def rdiff_register_adaptors(register):
    register("toy-film", build=toy_plugin._adaptor, config=toy_plugin.ToyAdaptorConfig, requires=("latent",),
             train={"adapt_lr": 0.05, "adapt_steps": 7})


@hookimpl
def rdiff_register_modalities(register):
    register("toy-us", build=toy_plugin._modality, train={"adapt_steps": 5, "val_every": 3, "lr": 0.01})
"""


@pytest.fixture
def film(toy, tmp_path, monkeypatch):
    """The toy plugin and a plugin whose adaptor and modality declare training defaults."""
    (tmp_path / "toy_film_plugin.py").write_text(FILM_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,toy_film_plugin")
    monkeypatch.delitem(sys.modules, "toy_film_plugin", raising=False)  # each test imports its own version
    plugins.reset()


def test_an_adaptor_and_a_modality_bring_training_defaults_that_the_user_still_overrides(film):
    names = {"backbone": "toy", "modality": "toy-us", "adaptor": "toy-film"}
    train = resolve_config([names]).train
    # the toy preset says adapt_steps 4 and val_every 2: the adaptor's 7 and the modality's 3 go over them,
    # the adaptor's over the modality's where both speak
    assert (train.adapt_lr, train.adapt_steps, train.val_every, train.lr) == (0.05, 7, 3, 0.01)
    # without them, the preset and the defaults as before
    plain = resolve_config([{"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"}]).train
    assert (plain.adapt_lr, plain.adapt_steps, plain.val_every) == (1e-4, 4, 2)
    # a --config file, a flag or --set (later layers) still decides
    from rdiff.config import parse_set

    train = resolve_config([names, parse_set(["train.adapt_lr=0.3", "train.adapt_steps=2"])]).train
    assert (train.adapt_lr, train.adapt_steps, train.val_every) == (0.3, 2, 3)


def test_misspelled_training_defaults_are_refused_with_their_key(film, tmp_path, monkeypatch):
    (tmp_path / "toy_film_plugin.py").write_text(FILM_PLUGIN.replace('"adapt_lr"', '"adapt_lrr"'))
    sys.modules.pop("toy_film_plugin", None)
    plugins.reset()
    with pytest.raises(Exception, match="train.adapt_lrr"):
        resolve_config([{"backbone": "toy", "modality": "toy", "adaptor": "toy-film"}])


# --- observers see validation ----------------------------------------------------------------------------------


def test_step_end_observers_see_every_metrics_line_validation_included(toy, tmp_path):
    from rdiff.engine import run

    seen: list[tuple[str, str, int, dict]] = []

    class Tracker:
        @hookimpl
        def rdiff_step_end(self, phase, stage, step, logs):
            seen.append((phase, stage, step, dict(logs)))

    plugins.plugins().pm.register(Tracker())
    config = resolve_config([{"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"}])
    report = run(config, tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [logs for *_, logs in seen] == logged  # exactly what metrics.jsonl holds, in its order
    validations = [(step, logs) for phase, stage, step, logs in seen if "val_psnr" in logs]
    # the toy preset validates every 2 of 4 adaptation steps, and once before the first
    assert [step for step, _ in validations] == [0, 2, 4]
    assert all(phase == "adapt" and stage == "adapt" for phase, stage, _, logs in seen if "val_psnr" in logs)
    assert validations[-1][1]["best_step"] == report["adapt"]["best_step"]
    assert any("loss" in logs for *_, logs in seen)


# --- progress off a terminal --------------------------------------------------------------------------------------


def test_progress_writes_plain_lines_when_stderr_is_not_a_terminal(capsys):
    from rdiff.training import progress

    for _ in progress(range(50), desc="work"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err
    lines = err.splitlines()
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")
    assert 10 <= len(lines) <= 12, lines  # a line at every tenth, not one per item


def test_progress_is_a_redrawn_bar_on_a_terminal(monkeypatch):
    from rdiff.training import _Lines, progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(total=3, disable=True)
    assert not isinstance(getattr(bar, "fp", None), _Lines)


def test_a_training_run_logged_to_a_file_has_no_carriage_returns(toy, tmp_path, capsys):
    from rdiff.engine import run

    config = resolve_config([{"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"}])
    run(config, tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("adapt:adapt: 100%") for line in err.splitlines()), err[-2000:]


# --- the options of every component ----------------------------------------------------------------------------


def test_list_options_shows_each_components_keys_types_defaults_and_training_defaults(film, capsys, monkeypatch):
    from rdiff.cli import main

    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,toy_film_plugin,rdiff_list")  # rdiff list is a plugin's command
    plugins.reset()
    assert main(["list", "adaptors", "--options"]) == 0
    text = capsys.readouterr().out
    film_part = text[text.index("toy-film"):]
    assert film_part.splitlines()[1].split() == ["adaptor_options.zero_init", "bool", "true", "start", "as", "the",
                                                 "identity"]
    assert "training defaults: train.adapt_lr=0.05, train.adapt_steps=7" in film_part

    assert main(["list", "backbones", "--options"]) == 0
    assert "  model.width  int  8  feature channels of the toy autoencoder" in capsys.readouterr().out

    assert main(["list", "modalities", "--options", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["toy"]["options"] == [] and rows["toy-us"]["train"] == {"adapt_steps": 5, "val_every": 3, "lr": 0.01}

    assert main(["list", "adaptors", "--options", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["toy-adaptor"]["options"] == [{"key": "adaptor_options.zero_init", "type": "bool", "default": "true",
                                               "description": "start as the identity"}]
