"""Plugin discovery: entry points, blocking, autoload off, broken and misspelled plugins, no torch at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rdiff.errors import UserError


def make_distribution(root: Path, module: str, body: str, dist: str = "rdiff-fake", version: str = "1.2.3") -> Path:
    """A minimal installed distribution (module + dist-info with an `rdiff` entry point) under ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[rdiff]\nfake = {module}\n")
    return root


FAKE = """
    from rdiff import hookimpl

    @hookimpl
    def rdiff_register_modalities(register):
        register("fake-modality", build=lambda config: None, summary="a modality from an entry point")
"""


def rdiff_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "rdiff", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120)


def test_a_third_party_plugin_is_found_through_its_entry_point(tmp_path):
    make_distribution(tmp_path, "rdiff_fake_plugin", FAKE)
    result = rdiff_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["fake"]["distribution"] == "rdiff-fake" and rows["fake"]["version"] == "1.2.3"
    assert rows["fake"]["hooks"] == ["rdiff_register_modalities"]
    listed = rdiff_cli("list", "modalities", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert "fake-modality" in [r["name"] for r in json.loads(listed.stdout)]


def test_blocked_plugins_are_not_loaded(tmp_path):
    make_distribution(tmp_path, "rdiff_fake_plugin", FAKE)
    result = rdiff_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path), "RDIFF_BLOCK_PLUGINS": "fake"})
    assert "fake" not in {r["name"] for r in json.loads(result.stdout)}


def test_autoload_off_loads_only_named_plugins(tmp_path, monkeypatch):
    from rdiff import plugins

    make_distribution(tmp_path, "rdiff_fake_plugin", FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin")
    plugins.reset()
    loaded = plugins.plugins()
    assert set(loaded.info) == {"toy_plugin"}
    assert set(loaded.entries["modality"]) == {"toy"}


def test_a_misspelled_hook_fails_loudly_and_the_rest_still_works(tmp_path):
    make_distribution(tmp_path, "rdiff_typo_plugin", """
        from rdiff import hookimpl

        @hookimpl
        def rdiff_register_modality(register):  # missing 's'
            pass
    """)
    result = rdiff_cli("plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0
    assert "fake" in result.stdout and "BROKEN" in result.stdout
    assert "rdiff_register_modality" in result.stdout and "rdiff_register_modalities" in result.stdout
    assert "plugin 'fake' failed to load" in result.stderr


def test_a_plugin_that_fails_to_import_is_reported_by_name(tmp_path):
    make_distribution(tmp_path, "rdiff_broken_plugin", "raise ImportError('needs libfoo')\n")
    result = rdiff_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["fake"]["status"] == "broken" and "needs libfoo" in rows["fake"]["error"]
    assert any(r["status"] == "ok" for r in rows.values())  # the built-ins still load


def test_a_plugin_that_raises_while_registering_is_reported(monkeypatch, tmp_path):
    from rdiff import plugins

    make_distribution(tmp_path, "rdiff_raising_plugin", """
        from rdiff import hookimpl

        @hookimpl
        def rdiff_register_backbones(register):
            raise RuntimeError("boom")
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,rdiff_raising_plugin")
    plugins.reset()
    loaded = plugins.plugins()
    assert "boom" in loaded.broken["rdiff_raising_plugin"]
    assert "toy" in loaded.entries["backbone"]


def test_unknown_names_list_what_is_installed(toy):
    import rdiff

    with pytest.raises(UserError, match=r"unknown backbone 'tyo' \(did you mean 'toy'\?\).*installed backbones: toy"):
        rdiff.create_backbone("tyo")
    with pytest.raises(UserError, match="installed modalities: toy"):
        rdiff.create_modality("retina")


def test_help_and_plugins_import_no_torch():
    code = ("import sys; from rdiff.cli import main; sys.argv=['rdiff','plugins'];"
            "main(['plugins']); main(['list', 'modalities']); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("NO-TORCH"), result.stdout + result.stderr


def test_a_reader_that_stops_early_is_not_an_error():
    """`rdiff plugins | grep -q name` under `set -o pipefail`: grep leaving early must not fail the pipeline."""
    process = subprocess.Popen([sys.executable, "-m", "rdiff", "plugins"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line is written
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and not err.strip(), err


def test_hooks_are_called_with_keywords_and_observers_fire(toy, tmp_path, monkeypatch):
    """An observer plugin sees steps, checkpoints and the finished report."""
    from rdiff import hookimpl, plugins
    from rdiff.registry import resolve_config
    from rdiff.engine import run

    seen: list[tuple] = []

    class Observer:
        @hookimpl
        def rdiff_step_end(self, phase, step):
            seen.append(("step", phase, step))

        @hookimpl
        def rdiff_checkpoint_saved(self, phase, path):
            seen.append(("checkpoint", phase, Path(path).name))

        @hookimpl
        def rdiff_run_finished(self, report):
            seen.append(("finished", report["backbone"]))

    plugins.plugins().pm.register(Observer())
    config = resolve_config([{"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"}])
    run(config, tmp_path)
    assert ("step", "reconstruct", 1) in seen and ("step", "adapt", 4) in seen
    assert ("checkpoint", "adapt", "checkpoint") in seen
    assert seen[-1] == ("finished", "toy")


def _commands() -> set[str]:
    import argparse

    from rdiff.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_bench_and_new_plugin_are_commands_of_their_plugins(monkeypatch, tmp_path, capsys):
    """``rdiff bench`` and ``rdiff new-plugin`` come from the built-in bench and scaffold plugins through
    ``rdiff_register_commands``, as a third-party plugin's command would: without them the CLI has neither."""
    from rdiff import plugins
    from rdiff.cli import main

    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin")
    plugins.reset()
    assert not {"bench", "new-plugin"} & _commands()
    monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,rdiff_bench,rdiff_scaffold")
    plugins.reset()
    assert {"bench", "new-plugin"} <= _commands()
    assert main(["new-plugin", "dermo", "--kind", "modality", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "rdiff-dermo" / "pyproject.toml").is_file()
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0 and "--backbones" in capsys.readouterr().out


def test_a_plugin_adds_a_command_and_an_option_that_reaches_its_observer(toy, tmp_path):
    """``rdiff_register_commands`` adds a working subcommand; ``rdiff_add_cli_options`` adds a flag to a
    built-in command, whose value the plugin gets back in ``rdiff_run_started`` (as ``cli_args``)."""
    from rdiff import hookimpl, plugins
    from rdiff.cli import main

    seen: dict[str, object] = {}

    class Tool:
        @hookimpl
        def rdiff_register_commands(self, subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("--name", default="world")
            p.set_defaults(handler=lambda args: seen.setdefault("hello", args.name) and 3)

        @hookimpl
        def rdiff_add_cli_options(self, command, parser):
            if command == "train":
                parser.add_argument("--tool-note", help="a note for the tool")

        @hookimpl
        def rdiff_run_started(self, run_dir, config, cli_args):
            seen["started"] = (Path(run_dir).name, config.backbone, getattr(cli_args, "tool_note", None))

    plugins.plugins().pm.register(Tool())
    assert main(["hello", "--name", "rdiff"]) == 3 and seen["hello"] == "rdiff"
    out = tmp_path / "run"
    assert main(["train", "--backbone", "toy", "--modality", "toy", "--adaptor", "toy-adaptor", "--out", str(out),
                 "--tool-note", "first try"]) == 0
    assert seen["started"] == ("run", "toy", "first try")
