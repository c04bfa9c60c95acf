"""rdiff's built-in ``degrade`` plugin: the ``rdiff degrade`` command, added through ``rdiff_register_commands``
as any third-party plugin adds one. It writes degraded copies of images with the parameters each modality's
simulator drew (:mod:`rdiff_degrade.degrade`), to look at a degradation or to make a pairs folder.
"""

from __future__ import annotations

from rdiff import hookimpl
from rdiff.cli import number


@hookimpl
def rdiff_register_commands(subparsers):
    p = subparsers.add_parser("degrade", help="write degraded copies of images plus their degradation parameters")
    p.add_argument("--modality", required=True, help="modality whose degradation to apply")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=number(int), default=0, help="seed; the same seed gives the same output")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="modality option, e.g. --set degradation.name=cofe")
    p.set_defaults(handler=_degrade)


def _degrade(args) -> int:
    from rdiff import create_modality
    from rdiff.config import parse_set
    from rdiff_degrade.degrade import degrade_files

    modality = create_modality(args.modality, **parse_set(args.set))
    return degrade_files(modality, args.inputs, args.out, seed=args.seed)
