"""``rdiff new-plugin``: the packages it writes are complete, light on import, documented, and pass their own
contract tests out of the box (run without installing: PYTHONPATH + RDIFF_PLUGINS)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import docgen
import pytest
from rdiff_scaffold import scaffold

import rdiff

KINDS = {"backbone": "my-net", "adaptor": "tiny-res", "modality": "dermo"}


def new_plugin(argv: list[str]) -> int:
    """``rdiff new-plugin ...`` through the parser the CLI registers it with."""
    parser = argparse.ArgumentParser(prog="rdiff")
    scaffold.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["new-plugin", *argv])
    return args.handler(args)


def test_names_are_spelled_for_each_use():
    names = scaffold.Names.of("stain-norm")
    assert (names.component, names.distribution, names.package, names.cls) == \
        ("stain-norm", "rdiff-stain-norm", "rdiff_stain_norm", "StainNorm")
    assert scaffold.Names.of("rdiff-oct2") == scaffold.Names.of("oct2")
    for bad in ("Stain", "2d", "stain norm", "stain--norm", "", "stäin"):
        with pytest.raises(rdiff.UserError, match="plugin name"):
            scaffold.Names.of(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_a_complete_package(tmp_path, capsys, kind):
    assert new_plugin([KINDS[kind], "--kind", kind, "--out", str(tmp_path)]) == 0
    names = scaffold.Names.of(KINDS[kind])
    root = tmp_path / names.distribution
    assert f"pip install -e {root}" in capsys.readouterr().out
    src = root / "src" / names.package
    module = {"backbone": "backbone.py", "adaptor": "adaptor.py", "modality": "modality.py"}[kind]
    for path in ("pyproject.toml", "README.md", f"tests/test_{names.package[6:]}.py"):
        assert (root / path).is_file(), path
    for path in ("__init__.py", "config.py", module):
        assert (src / path).is_file(), path
        compile((src / path).read_text(), str(src / path), "exec")  # valid Python
    pyproject = (root / "pyproject.toml").read_text()
    assert f'[project.entry-points.rdiff]\n{names.component} = "{names.package}"' in pyproject
    placeholders = ("__NAME__", "__PACKAGE__", "__CLASS__", "__DIST__", "__KIND__")
    unfilled = [f"{path.name}: {p}" for path in root.rglob("*") if path.is_file() for p in placeholders
                if p in path.read_text()]
    assert not unfilled, unfilled


def test_refuses_to_overwrite_a_package(tmp_path):
    new_plugin(["dermo", "--kind", "modality", "--out", str(tmp_path)])
    with pytest.raises(rdiff.UserError, match="already exists"):
        new_plugin(["dermo", "--kind", "modality", "--out", str(tmp_path)])


def _generate_all(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for kind, name in KINDS.items():
        scaffold.write_plugin(name, kind, root)
    packages = [scaffold.Names.of(name) for name in KINDS.values()]
    env["PYTHONPATH"] = os.pathsep.join([str(root / n.distribution / "src") for n in packages]
                                        + [env.get("PYTHONPATH", "")])
    env["RDIFF_PLUGINS"] = ",".join(n.package for n in packages)
    return env


def test_generated_plugins_load_lightly_and_document_their_options(tmp_path, monkeypatch):
    env = _generate_all(tmp_path)
    probe = ("import sys; from rdiff.plugins import plugins; p = plugins(); "
             "assert not p.broken, p.broken; "
             "assert {'my-net'} <= set(p.entries['backbone']) and 'tiny-res' in p.entries['adaptor'] "
             "and 'dermo' in p.entries['modality']; "
             "assert 'torch' not in sys.modules, 'a plugin imported torch at start-up'")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    monkeypatch.setenv("RDIFF_PLUGINS", env["RDIFF_PLUGINS"])
    for entry_path in env["PYTHONPATH"].split(os.pathsep)[:3]:
        monkeypatch.syspath_prepend(entry_path)
    from rdiff.plugins import plugins, reset

    reset()
    for kind, name in KINDS.items():
        entry = plugins().get(kind, name)
        silent = [key.name for key in docgen.config_keys(entry.config) if not key.comment]
        assert not silent, f"generated {kind} options without a comment: {silent}"


@pytest.mark.slow
def test_generated_plugins_pass_their_contract_tests(tmp_path):
    env = _generate_all(tmp_path)
    tests = [str(tmp_path / scaffold.Names.of(name).distribution / "tests") for name in KINDS.values()]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


# --- a hook-only plugin -----------------------------------------------------------------------------------------


def test_writes_a_hook_only_package_that_loads_lightly(tmp_path, capsys):
    assert new_plugin(["run-log", "--kind", "hooks", "--out", str(tmp_path)]) == 0
    assert "hook-only plugin 'run-log'" in capsys.readouterr().out
    root = tmp_path / "rdiff-run-log"
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == ["README.md", "pyproject.toml", "src/rdiff_run_log/__init__.py", "tests/test_run_log.py"]
    assert "__" not in "".join(p.read_text().replace("__init__", "").replace("__future__", "")
                               for p in root.rglob("*") if p.is_file()), "a placeholder was left unfilled"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
               RDIFF_PLUGINS="rdiff_run_log")
    probe = ("import sys; from rdiff.plugins import plugins; p = plugins(); assert not p.broken, p.broken; "
             "hooks = p.info['rdiff_run_log'].hooks; assert 'rdiff_step_end' in hooks, hooks; "
             "assert 'torch' not in sys.modules, 'the plugin imported torch at start-up'")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_a_generated_hook_only_plugin_passes_its_own_tests(tmp_path):
    root = scaffold.write_plugin("run-log", "hooks", tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
               RDIFF_PLUGINS="rdiff_run_log")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
