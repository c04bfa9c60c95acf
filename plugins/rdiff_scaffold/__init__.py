"""rdiff's built-in ``scaffold`` plugin: the ``rdiff new-plugin`` command, added through
``rdiff_register_commands`` as any third-party plugin adds one.

It writes a new plugin package from the templates in ``templates/`` (see :mod:`rdiff_scaffold.scaffold`).
"""

from __future__ import annotations

from rdiff import hookimpl


@hookimpl
def rdiff_register_commands(subparsers):
    from rdiff_scaffold.scaffold import add_parser

    add_parser(subparsers)
