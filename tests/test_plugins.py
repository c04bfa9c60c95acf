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
