"""Every option of every command refuses a bad value before any work: the parsers of all ``rdiff`` commands,
the plugin-added ones too (bench, degrade, new-plugin, list, plugins and whatever a plugin adds), are walked,
so an option added tomorrow cannot forget its check.

- A numeric option takes ``type=rdiff.cli.number(...)``: nan, inf, text and values below its range are
  refused by argparse, naming the option (a bare ``int`` or ``float`` fails this test).
- An option with ``choices`` refuses an unknown value.
- Every other option that takes a value (names, paths, ``KEY=VALUE``) is listed in ``BAD`` below with a bad
  value: the command must end with exit 2 and one sentence naming that value, before any work starts.
"""

from __future__ import annotations

import argparse
import os

import pytest

from rdiff.cli import build_parser, main
from test_probes import TOY, png, snapshot, trained  # noqa: F401 - trained: the fixture of one finished toy run

TOOLS = "toy_plugin,rdiff_degrade,rdiff_bench,rdiff_scaffold,rdiff_list,rdiff_estimate,rdiff_uncertainty"

#: a valid command line of each command, whose options get bad values one at a time ({run}, {img}, {tmp})
BASE = {
    "train": ["train", *TOY, "--out", "{tmp}/out"],
    "reconstruct": ["reconstruct", *TOY, "--out", "{tmp}/out"],
    "adapt": ["adapt", "--from", "{run}", "--out", "{tmp}/out"],
    "enhance": ["enhance", "--run", "{run}", "{img}", "--out", "{tmp}/enhanced"],
    "evaluate": ["evaluate", "--run", "{run}"],
    "degrade": ["degrade", "--modality", "toy", "{img}", "--out", "{tmp}/degraded"],
    "bench": ["bench", "--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adaptor", "--out", "{tmp}/bench"],
    "new-plugin": ["new-plugin", "stain-norm", "--kind", "adaptor", "--out", "{tmp}/plugins"],
    "list": ["list", "backbones"],
    "plugins": ["plugins"],
    "calibrate": ["calibrate", "--run", "{run}"],
}
_RUN = {"--backbone": "bogus", "--modality": "bogus", "--adaptor": "bogus", "--preset": "bogus",
        "--data": "{tmp}/missing", "--pairs": "{tmp}/missing", "--out": "{img}", "--config": "{tmp}/missing.yaml",
        "--set": "train.bogus=1"}
#: (command, option or positional) -> a bad value; the command must refuse it, naming it, before any work
BAD = {
    **{("train", k): v for k, v in _RUN.items()}, **{("reconstruct", k): v for k, v in _RUN.items()},
    **{("adapt", k): v for k, v in _RUN.items() if k in ("--adaptor", "--data", "--pairs", "--config", "--set", "--out")},
    ("adapt", "--from"): "{tmp}/missing",
    ("enhance", "--run"): "{tmp}/missing", ("enhance", "inputs"): "{tmp}/missing.png", ("enhance", "--out"): "{img}",
    ("enhance", "--path"): "bogus", ("enhance", "--device"): "bogus", ("enhance", "--suffix"): "/../../escaped",
    ("evaluate", "--run"): "{tmp}/missing", ("evaluate", "--data"): "{tmp}/missing",
    ("evaluate", "--pairs"): "{tmp}/missing", ("evaluate", "--paths"): "fast,bogus",
    ("degrade", "--modality"): "bogus", ("degrade", "inputs"): "{tmp}/missing.png", ("degrade", "--out"): "{img}",
    ("degrade", "--set"): "bogus=1",
    ("bench", "--backbones"): "bogus", ("bench", "--modalities"): "bogus", ("bench", "--adaptors"): "bogus",
    ("bench", "--preset"): "bogus", ("bench", "--pairs-counts"): "5,nan", ("bench", "--set"): "seed=3",
    ("bench", "--data"): "{tmp}/missing", ("bench", "--modality"): "bogus", ("bench", "--pairs"): "{tmp}/missing",
    ("bench", "--test"): "{tmp}/missing", ("bench", "--reconstruct-from"): "{tmp}/missing",
    ("bench", "--run"): "{tmp}/missing", ("bench", "--out"): "{img}",
    ("new-plugin", "name"): "Not A Name!", ("new-plugin", "--out"): "{img}",
    ("calibrate", "--run"): "{tmp}/missing", ("calibrate", "--path"): "bogus", ("calibrate", "--folder"): "{tmp}/missing",
}
#: options with a type of their own (not rdiff.cli.number): values argparse must refuse
OWN_TYPES = {("bench", "--reconstruct-steps"): ("nan", "0", "x"), ("bench", "--adapt-steps"): ("inf", "-1", "x"),
             ("bench", "--batch-size"): ("nan", "0", "1.5")}


def _commands(env: dict[str, str]) -> dict[str, argparse.ArgumentParser]:
    from rdiff import plugins

    with pytest.MonkeyPatch.context() as mp:
        for key in ("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "RDIFF_PLUGINS"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        plugins.reset()
        parser = build_parser()
        plugins.reset()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options() -> list[tuple[str, argparse.Action]]:
    """Every option that takes a value, of every command: those of the installed plugins and of the test set."""
    found = {}
    for env in ({}, {"RDIFF_DISABLE_PLUGIN_AUTOLOAD": "1", "RDIFF_PLUGINS": TOOLS}):
        for command, parser in _commands(env).items():
            for action in parser._actions:
                if action.nargs != 0 and not isinstance(action, argparse._HelpAction):
                    found[(command, _key(action))] = (command, action)
    return sorted(found.values(), key=lambda pair: (pair[0], _key(pair[1])))


def _key(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


OPTIONS = _options()


def test_every_option_that_takes_a_value_has_a_check():
    unchecked = [f"rdiff {command} {_key(a)}" for command, a in OPTIONS
                 if not hasattr(a.type, "at_least") and not a.choices and (command, _key(a)) not in {**BAD, **OWN_TYPES}]
    assert not unchecked, ("options with no check: give them type=rdiff.cli.number(...) or choices=, or list a bad "
                           f"value in BAD with the check that refuses it: {unchecked}")
    bare = [f"rdiff {command} {_key(a)}" for command, a in OPTIONS if a.type in (int, float)]
    assert not bare, f"bare int/float accept nan, inf and negative values; use rdiff.cli.number: {bare}"
    assert {command for command, _ in OPTIONS} >= set(BASE) - {"plugins"}


def _parse_refuses(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


NUMBERS = [(c, a) for c, a in OPTIONS if hasattr(a.type, "at_least") or (c, _key(a)) in OWN_TYPES or a.choices]


@pytest.mark.parametrize(("command", "action"), NUMBERS, ids=[f"{c} {_key(a)}" for c, a in NUMBERS])
def test_numbers_and_choices_refuse_nan_inf_and_out_of_range_values(command, action, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", TOOLS)
    if action.choices:
        bad = ["bogus"]
    elif (command, _key(action)) in OWN_TYPES:
        bad = list(OWN_TYPES[(command, _key(action))])
    else:
        number = action.type
        bad = ["nan", "inf", "-inf", "x", str(number.kind(number.at_least) - 1)] + ["0"] * number.positive
    for value in bad:
        argv = _with_value(BASE[command], action, value)
        err = _parse_refuses([a.format(tmp=tmp_path, run=tmp_path / "run", img=tmp_path / "x.png") for a in argv], capsys)
        assert f"argument {_key(action) if action.option_strings else action.dest}" in err and value in err, err


def _with_value(base: list[str], action: argparse.Action, value: str) -> list[str]:
    """``base`` with ``action`` given ``value`` (replacing its value there, or added)."""
    argv = list(base)
    if not action.option_strings:  # a positional: the base's value of it is the first that is no option's
        index = next(i for i, a in enumerate(argv) if i > 0 and not a.startswith("-") and not argv[i - 1].startswith("-"))
        argv[index] = value
        return argv
    for flag in action.option_strings:  # as --flag=value: argparse would read "-1" alone as an option
        if flag in argv:
            index = argv.index(flag)
            return argv[:index] + [f"{flag}={value}"] + argv[index + 2:]
    return argv + [f"{action.option_strings[0]}={value}"]


STRINGS = [(c, a) for c, a in OPTIONS if (c, _key(a)) in BAD]


@pytest.mark.parametrize(("command", "action"), STRINGS, ids=[f"{c} {_key(a)}" for c, a in STRINGS])
def test_names_and_paths_are_refused_before_any_work(command, action, trained, tmp_path, capsys, monkeypatch):
    import shutil

    import toy_components
    from rdiff import engine, enhance

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", TOOLS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    shutil.copytree(trained, tmp_path / "run")
    png(tmp_path / "x.png")
    work: list[str] = []

    def started(what):
        def record(*args, **kwargs):
            work.append(what)
            raise AssertionError(f"{what} started")
        return record

    monkeypatch.setattr(engine, "Engine", started("training"))
    monkeypatch.setattr(enhance, "enhance_image", started("enhancement"))
    monkeypatch.setattr(toy_components.ToyBackbone, "enhance", started("scoring"))
    monkeypatch.setattr(toy_components.ToyModality, "degrade", started("degradation"))
    value = BAD[(command, _key(action))].format(tmp=tmp_path, img=tmp_path / "x.png")
    argv = [a.format(tmp=tmp_path, run=tmp_path / "run", img=tmp_path / "x.png")
            for a in _with_value(BASE[command], action, value)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and not work, f"exit {code}, work started: {work}\n{err}"
    named = value.split(",")[-1].split("=")[0].split("/")[-1]  # the bad name, file or key
    assert named in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before, "a refused command changed or wrote files"
