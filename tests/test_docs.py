"""The docs cannot drift from the code: the generated pages are exactly what ``python tools/docgen.py`` writes
now, and every hook, CLI flag and configuration key (core and built-in plugins) appears in them."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import docgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIX = "run `python tools/docgen.py` and commit the result"


def _page(name: str) -> str:
    path = DOCS / name
    return path.read_text(encoding="utf-8") if path.is_file() else ""


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return docgen.render_all()


@pytest.mark.parametrize("name", docgen.GENERATED)
def test_generated_page_is_up_to_date(generated, name):
    assert _page(name) == generated[name], f"docs/{name} differs from what the code says: {FIX}"


def test_every_hook_is_documented():
    text = _page("hooks.md")
    missing = [fn.__name__ for fn in docgen.hookspecs() if f"## {fn.__name__}\n" not in text]
    assert not missing, f"hooks missing from docs/hooks.md: {missing}; {FIX}"


def test_every_cli_flag_is_documented():
    from rdiff.cli import build_parser

    with docgen.builtin_plugins():
        parser = build_parser()
    sections = {chunk.split("\n", 1)[0]: chunk for chunk in _page("cli.md").split("\n## rdiff ")[1:]}
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = []
    for name, sub in subcommands.items():
        section = sections.get(name, "")
        missing += [f"rdiff {name} {flag}" for action in sub._actions for flag in action.option_strings
                    if flag not in ("-h", "--help") and f"`{flag}" not in section and f", {flag}" not in section]
        if not section:
            missing.append(f"rdiff {name}")
    assert not missing, f"missing from docs/cli.md: {missing}; {FIX}"


def _config_classes() -> list[tuple[str, type]]:
    """(section, dataclass) of the core configuration and of every built-in plugin's options."""
    from rdiff.config import EvalConfig, RunConfig, TrainConfig

    classes = [("", RunConfig), ("train", TrainConfig), ("eval", EvalConfig)]
    with docgen.builtin_plugins() as loaded:
        for kind, section in (("backbone", "model"), ("adaptor", "adaptor_options"), ("modality", "modality_options")):
            classes += [(section, entry.config) for entry in loaded.entries[kind].values() if entry.config is not None]
    return classes


def test_every_config_key_is_documented():
    text = _page("configuration.md")
    missing = []
    for section, cls in _config_classes():
        for key in docgen.config_keys(cls):
            if section == "" and (key.nested or "." in key.name):
                continue  # train.* and eval.* have their own tables
            dotted = f"{section}.{key.name}" if section else key.name
            if f"`{dotted}`" not in text:
                missing.append(f"{dotted} ({cls.__name__})")
    assert not missing, f"configuration keys missing from docs/configuration.md: {missing[:10]}; {FIX}"


def test_every_config_field_has_a_comment():
    """The configuration reference is made of these comments: a field without one is undocumented."""
    silent = [f"{cls.__module__}.{cls.__name__}.{key.name}" for section, cls in _config_classes()
              for key in docgen.config_keys(cls)
              if not key.comment and not key.nested and not (section == "" and "." in key.name)]
    assert not silent, f"config fields without a trailing '# comment': {sorted(set(silent))}"


def test_links_between_pages_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to files that do not exist: {broken}"


# --- the comment reader itself ---------------------------------------------------------------------------------


@dataclass
class _Example:
    """An example."""

    # --- a heading, not a field's comment ---
    plain: int = 1  # one line
    spread: dict[str, float] = field(default_factory=lambda: {
        "a": 1.0})  # written over two lines
    bare: str = "x"


@dataclass
class _Derived(_Example):
    extra: bool = False  # added by the subclass


def test_field_comments_come_from_the_source():
    assert docgen.field_comments(_Derived) == {"plain": "one line", "spread": "written over two lines",
                                               "extra": "added by the subclass"}
    keys = {k.name: k for k in docgen.config_keys(_Derived)}
    assert docgen.format_value(keys["spread"].default) == "{a: 1.0}"
    assert keys["plain"].type == "int" and keys["bare"].comment == ""
    assert [f.name for f in dataclasses.fields(_Derived)] == list(keys)


def test_adaptation_targets_are_documented():
    """hooks.md lists every field of rdiff.AdaptationTarget and, generated from the backbones, every target
    group they offer (ldm-unet's encoder group ends at its output latent)."""
    import dataclasses

    from rdiff import AdaptationTarget

    section = _page("hooks.md").split("## Adaptation targets\n", 1)[-1]
    missing = [f.name for f in dataclasses.fields(AdaptationTarget) if f"| `{f.name}` |" not in section]
    assert not missing, f"AdaptationTarget fields missing from docs/hooks.md: {missing}; {FIX}"
    ldm = section.split("#### backbone `ldm-unet`", 1)[-1].split("####", 1)[0]
    assert "| `autoencoder.latent_out` | `encoder` |" in ldm and "Groups: `image`, `encoder`" in ldm, FIX
