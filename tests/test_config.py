"""Typed configuration: presets, YAML, --set, and refusals that name the key."""

from __future__ import annotations

import pytest

from rdiff.registry import resolve_config
from rdiff.config import RunConfig, build, parse_set
from rdiff.errors import UserError

BASE = {"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"}


def test_preset_then_overrides(toy):
    config = resolve_config([BASE, parse_set(["train.adapt_steps=7", "model.width=4", "eval.sample_steps=[5,20]"])])
    assert config.train.adapt_steps == 7 and config.train.image_size == 32  # --set over the preset's value
    assert config.model == {"width": 4}
    assert config.eval.sample_steps == [5, 20]
    assert config.adaptor_options == {"zero_init": True}  # plugin sections are stored fully resolved


@pytest.mark.parametrize("item, message", [
    (["train.adapt_step=3"], "unknown config key 'train.adapt_step' (did you mean 'adapt_steps'?)"),
    (["model.widht=3"], "unknown config key 'model.widht' (did you mean 'width'?)"),
    (["adaptor_options.zero_int=false"], "unknown config key 'adaptor_options.zero_int' (did you mean 'zero_init'?)"),
    (["trian.lr=1"], "unknown config key 'trian' (did you mean 'train'?)"),
    (["train.batch_size=big"], "config key 'train.batch_size' must be a whole number, not 'big'"),
    (["train.mixed_precision=bf61"], "config key 'train.mixed_precision' must be one of no, bf16, fp16, not 'bf61' (did you mean 'bf16'?)"),
    (["train.lr"], "--set takes key=value, got 'train.lr'"),
])
def test_bad_keys_and_values_are_named(toy, item, message):
    with pytest.raises(UserError) as info:
        resolve_config([BASE, parse_set(item)])
    assert message in str(info.value)


def test_unknown_preset_lists_the_presets(toy):
    with pytest.raises(UserError, match="backbone 'toy' has no preset 'huge'; presets: tiny"):
        resolve_config([{**BASE, "preset": "huge"}])


def test_yaml_values_parse_to_the_declared_types():
    config = build(RunConfig, {"train": {"lr": 1, "resize": None, "steps": {"autoencoder": 5.0}}, "seed": "3"} | {"seed": 3})
    assert isinstance(config.train.lr, float) and config.train.resize is None
    assert config.train.steps == {"autoencoder": 5}


def test_exponent_without_a_dot_is_a_number(toy):
    # PyYAML reads '2e-4' as a string; `--set train.lr=2e-4` must still mean 0.0002
    config = resolve_config([BASE, parse_set(["train.lr=2e-4", "train.adapt_lr=1E-3"])])
    assert config.train.lr == 2e-4 and config.train.adapt_lr == 1e-3
    with pytest.raises(UserError, match="config key 'train.lr' must be a number, not 'fast'"):
        resolve_config([BASE, parse_set(["train.lr=fast"])])


def test_yaml_file_layer(toy, tmp_path):
    from rdiff.config import load_yaml

    file = tmp_path / "run.yaml"
    file.write_text("backbone: toy\nmodality: toy\nadaptor: toy-adaptor\ntrain:\n  adapt_lr: 0.001\n")
    assert resolve_config([load_yaml(file)]).train.adapt_lr == 0.001
    file.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match=f"config file '{file}' is not valid YAML"):
        load_yaml(file)
