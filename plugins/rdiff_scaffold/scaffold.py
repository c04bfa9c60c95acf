"""``rdiff new-plugin NAME --kind {backbone,adaptor,modality,hooks}``: write a plugin package that works out of the box.

The package is laid out the way rdiff's own plugins and ``examples/rdiff-histology`` are::

    rdiff-NAME/
      pyproject.toml            the ``rdiff`` entry point: NAME = "rdiff_NAME"
      README.md
      src/rdiff_NAME/
        __init__.py             the hook (light: no torch at import) and, for a backbone, its presets
        config.py               the options dataclass, every field with a default and a comment
        <kind>.py               a small working implementation to replace with your own
      tests/test_NAME.py        rdiff.testing's contract for the role

and passes its own contract tests as generated (``pip install -e ./rdiff-NAME && pytest rdiff-NAME``). A
``hooks`` plugin adds no component: its ``__init__.py`` holds observer hooks that follow training runs (the
start of an experiment-tracker plugin) and its test runs a short training to check what they see; it has no
``config.py``.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources
from dataclasses import dataclass
from pathlib import Path

from rdiff.errors import UserError

KINDS = ("backbone", "adaptor", "modality", "hooks")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class Names:
    """Every spelling of a plugin's name: ``stain-norm`` -> ``rdiff-stain-norm``, ``rdiff_stain_norm``,
    ``StainNorm``."""

    component: str  # the registered name and entry-point name, e.g. stain-norm
    distribution: str  # e.g. rdiff-stain-norm
    package: str  # e.g. rdiff_stain_norm
    cls: str  # e.g. StainNorm

    @classmethod
    def of(cls, name: str) -> Names:
        component = re.sub(r"^rdiff[-_]", "", name.strip())
        if not _NAME.match(component):
            raise UserError(f"plugin name '{name}' must be lower-case letters and digits separated by '-' or '_', "
                            f"starting with a letter (e.g. stain-norm).")
        words = re.split(r"[-_]", component)
        return cls(component=component, distribution="rdiff-" + "-".join(words),
                   package="rdiff_" + "_".join(words), cls="".join(w.capitalize() for w in words))


def write_plugin(name: str, kind: str, out: str | Path = ".") -> Path:
    """Write the package for a new ``kind`` plugin called ``name`` into ``out``; returns its folder."""
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, not '{kind}'.")
    names = Names.of(name)
    root = Path(out) / names.distribution
    if root.exists() and any(root.iterdir()):
        raise UserError(f"'{root}' already exists and is not empty; choose another --out or name.")
    for relative, text in files(kind, names).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def files(kind: str, names: Names) -> dict[str, str]:
    """Relative path -> content of every file of the package, from the templates shipped in this package
    (``templates/common/`` and ``templates/<kind>/``, as files so they read, and diff, as what they write)."""
    templates = {
        "pyproject.toml": "common/pyproject.toml",
        "README.md": "hooks/README.md" if kind == "hooks" else "common/README.md",
        f"src/{names.package}/__init__.py": f"{kind}/__init__.py",
        f"tests/test_{names.package.removeprefix('rdiff_')}.py": f"{kind}/test.py",
    }
    if kind != "hooks":  # a component has options and an implementation; hooks live in __init__.py alone
        templates[f"src/{names.package}/config.py"] = f"{kind}/config.py"
        templates[f"src/{names.package}/{kind}.py"] = f"{kind}/{kind}.py"
    return {path: _fill(read_template(name), kind, names) for path, name in templates.items()}


def read_template(name: str) -> str:
    """The text of template ``name`` (e.g. ``backbone/config.py``)."""
    return resources.files("rdiff_scaffold").joinpath("templates", name + ".tmpl").read_text(encoding="utf-8")


def _fill(template: str, kind: str, names: Names) -> str:
    # plain replacement, not str.format: the templates are Python full of braces
    for placeholder, value in (("__DIST__", names.distribution), ("__PACKAGE__", names.package),
                               ("__CLASS__", names.cls), ("__NAME__", names.component),
                               ("__KIND__", "observer hooks" if kind == "hooks" else kind)):
        template = template.replace(placeholder, value)
    return template


# --- the command ---------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rdiff new-plugin`` on the CLI's subparsers."""
    p = subparsers.add_parser("new-plugin", help="write a new plugin package (backbone, adaptor, modality, or "
                                                 "hooks only) that passes its own tests")
    p.add_argument("name", help="the component's name, e.g. stain-norm (package rdiff_stain_norm)")
    p.add_argument("--kind", required=True, choices=KINDS, help="the role the plugin adds")
    p.add_argument("--out", default=".", help="folder to write rdiff-NAME/ into (default: the current folder)")
    p.set_defaults(handler=cmd_new_plugin)
    return p


def cmd_new_plugin(args: argparse.Namespace) -> int:
    root = write_plugin(args.name, args.kind, args.out)
    names = Names.of(args.name)
    article = "an" if args.kind == "adaptor" else "a"
    what = (f"the hook-only plugin '{names.component}'" if args.kind == "hooks"
            else f"the {args.kind} plugin '{names.component}'")
    tests = "a short training run it follows" if args.kind == "hooks" else f"rdiff.testing's contract for {article} {args.kind}"
    print(f"wrote {what} to {root}/\nnext:\n"
          f"  pip install -e {root}\n"
          f"  rdiff plugins       # lists {names.component}\n"
          f"  pytest {root}       # {tests}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rdiff_scaffold.scaffold NAME --kind KIND`` (the same as ``rdiff new-plugin``)."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m rdiff_scaffold.scaffold")
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["new-plugin", *(sys.argv[1:] if argv is None else argv)])
        return args.handler(args)
    except UserError as exc:
        print(f"rdiff: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
