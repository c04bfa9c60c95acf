"""YAML 1.1 reads no/off/yes/on as booleans; rdiff's configuration means what the user typed."""

from __future__ import annotations

import pytest

from rdiff.registry import resolve_config
from rdiff.config import load_yaml, parse_set
from rdiff.errors import UserError

BASE = {"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"}


def test_set_no_is_the_string_a_literal_field_asks_for(toy):
    # the error message used to ask for 'no', which --set could not give
    config = resolve_config([BASE, parse_set(["train.mixed_precision=no"])])
    assert config.train.mixed_precision == "no"
    assert resolve_config([BASE, parse_set(["train.mixed_precision=bf16"])]).train.mixed_precision == "bf16"


@pytest.mark.parametrize("word, expected", [("no", False), ("off", False), ("n", False), ("false", False),
                                            ("False", False), ("yes", True), ("on", True), ("true", True),
                                            ("ON", True)])
def test_bool_fields_take_every_yaml_word(toy, word, expected):
    config = resolve_config([BASE, parse_set([f"train.gradient_checkpointing={word}",
                                              f"adaptor_options.zero_init={word}"])])
    assert config.train.gradient_checkpointing is expected
    assert config.adaptor_options == {"zero_init": expected}  # a plugin's own bool option too


@pytest.mark.parametrize("word", ["no", "off", "on", "yes"])
def test_string_fields_keep_the_word(toy, word):
    # eval.path is a str: 'on' must not turn into True and then be refused as "must be a string"
    assert resolve_config([BASE, parse_set([f"eval.path={word}"])]).eval.path == word


def test_a_bool_field_still_refuses_other_words(toy):
    with pytest.raises(UserError, match="config key 'train.cpu' must be true or false, not 'maybe'"):
        resolve_config([BASE, parse_set(["train.cpu=maybe"])])


def test_a_literal_field_still_refuses_booleans(toy):
    with pytest.raises(UserError, match="config key 'train.mixed_precision' must be one of no, bf16, fp16, not True"):
        resolve_config([BASE, parse_set(["train.mixed_precision=true"])])


def test_config_file_values_and_keys(toy, tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("backbone: toy\nmodality: toy\nadaptor: toy-adaptor\n"
                    "train:\n  mixed_precision: no\n  gradient_checkpointing: on\n  cpu: off\n"
                    "  steps: {autoencoder: 2}\n"
                    "eval:\n  path: off\n", encoding="utf-8")
    config = resolve_config([load_yaml(file)])
    assert config.train.mixed_precision == "no"
    assert config.train.gradient_checkpointing is True and config.train.cpu is False
    assert config.eval.path == "off"
    # keys too: a mapping key 'no' stays the string 'no' (YAML 1.1 made it the key False)
    file.write_text("no: 1\non: 2\nyes: [off, on]\n", encoding="utf-8")
    assert load_yaml(file) == {"no": 1, "on": 2, "yes": ["off", "on"]}


def test_cli_train_dry_run_accepts_mixed_precision_no(toy_tools, capsys):
    from rdiff.cli import main

    code = main(["train", "--backbone", "toy", "--modality", "toy", "--adaptor", "toy-adaptor", "--dry-run",
                 "--set", "train.mixed_precision=no", "--set", "train.gradient_checkpointing=off"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "precision: float32" in out and "gradient checkpointing: off" in out


def test_cli_refusal_names_key_and_value(toy_tools, capsys):
    from rdiff.cli import main

    code = main(["train", "--backbone", "toy", "--modality", "toy", "--adaptor", "toy-adaptor", "--dry-run",
                 "--set", "train.mixed_precision=bf61"])
    assert code == 2
    assert "config key 'train.mixed_precision' must be one of no, bf16, fp16, not 'bf61'" in capsys.readouterr().err
