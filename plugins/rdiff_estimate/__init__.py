"""rdiff's built-in ``estimate`` plugin: ``rdiff train --dry-run`` (and ``rdiff reconstruct --dry-run``),
added through ``rdiff_add_cli_options`` as any third-party plugin adds an option.

The run's configuration is resolved exactly as the command would resolve it (:func:`rdiff.cli.train_config`),
then the data checks a run makes first and the memory/FLOP estimate of :mod:`rdiff_estimate.estimate` are
printed; nothing is trained or written. Light at import: torch loads when a dry run is asked for.
"""

from __future__ import annotations

from rdiff import hookimpl

PHASES = {"train": ("reconstruct", "adapt"), "reconstruct": ("reconstruct",)}


@hookimpl
def rdiff_add_cli_options(command, parser):
    if command not in PHASES:
        return
    parser.add_argument("--dry-run", action="store_true", help="train nothing: check the data and print parameters, "
                                                               "memory per device and FLOPs per step (docs/cli.md)")
    parser.set_defaults(handler=_dry_run_or(parser.get_default("handler"), PHASES[command]))


def _dry_run_or(handler, phases):
    def run(args):
        if not args.dry_run or args.resume:  # a resumed run was planned when it started
            return handler(args)
        from rdiff.cli import train_config
        from rdiff_estimate.estimate import dry_run

        return dry_run(*train_config(args, phases))
    return run
