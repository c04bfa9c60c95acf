"""rdiff's built-in ``bench`` plugin: the ``rdiff bench`` command, added through ``rdiff_register_commands``
as any third-party plugin adds one.

It compares reconstruction-then-adaptation with its baselines (see :mod:`rdiff_bench.bench`). Its plots
need matplotlib, an optional dependency: ``pip install rdiff[bench]``. This module stays light (no torch,
no matplotlib at import): the bench's code loads when the command is parsed or run.
"""

from __future__ import annotations

from rdiff import hookimpl


@hookimpl
def rdiff_register_commands(subparsers):
    from rdiff_bench.command import add_parser

    add_parser(subparsers)
