"""``rdiff bench``: its command-line parser and handler. Without ``--data`` it runs the synthetic bench of
:mod:`rdiff_bench.bench`; ``--data DIR --modality NAME`` hands the command to :mod:`rdiff_bench.real_data`.
Both modules stay below this one (neither imports the other's command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rdiff.cli import number
from rdiff.errors import UserError
from rdiff_bench.bench import Bench, Settings, require_matplotlib, say, settings_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rdiff bench`` on the CLI's subparsers."""
    defaults = Settings(backbones=[], modalities=[])
    p = subparsers.add_parser(
        "bench", help="compare adapted models with input, CLAHE, reconstruct-only and from-scratch baselines",
        description="For every backbone × modality (× adaptor) and seed: train phase 1 once, adapt it with each "
                    "pairs count, train the same backbone from scratch on the same pairs, score everything on "
                    "fixed held-out crops; write results.json, results.md and plots to --out. Finished work is "
                    "cached (re-running skips it; --force recomputes). With --data DIR --modality NAME: the "
                    "real-data benchmark on your own folder (split by subject, whole test images; see "
                    "docs/benchmarks.md).")
    # --- real-data benchmark (rdiff_bench.real_data): with --data, --backbones/--modalities are optional
    p.add_argument("--backbones", help="comma-separated backbone names, e.g. cnn-ae,ldm-unet,dit (required without "
                                       "--data; with --data default ldm-unet)")
    p.add_argument("--modalities",
                   help="comma-separated modality names, e.g. fundus,oct,photo (required without --data)")
    # --- end real-data benchmark
    p.add_argument("--adaptors", default=",".join(defaults.adaptors), help="comma-separated adaptor names")
    p.add_argument("--preset", default=defaults.preset, help="backbone preset the runs start from")
    p.add_argument("--pairs-counts", default=",".join(map(str, defaults.pairs_counts)),
                   help="comma-separated numbers of training pairs; the largest is reported in full (sampling "
                        "paths, by degradation type, convergence); not used with --data")
    p.add_argument("--seeds", type=number(int, 1), default=defaults.seeds, help="training seeds per cell (0, 1, ...)")
    p.add_argument("--crops", type=number(int, 1), default=defaults.crops,
                   help="held-out crops per modality (not used with --data, which scores whole test images)")
    p.add_argument("--reconstruct-steps", type=_budget, default=defaults.reconstruct_steps,
                   help="phase-1 steps of every backbone stage, or 'preset' for the preset's own (the tiny "
                        "presets train 300-400)")
    p.add_argument("--adapt-steps", type=_budget, default=defaults.adapt_steps,
                   help="adaptation steps, also the from-scratch budget, or 'preset' (the tiny presets adapt 150)")
    p.add_argument("--batch-size", type=_budget, default=defaults.batch_size,
                   help="phase-1 batch size, or 'preset' (adaptation keeps the preset's)")
    p.add_argument("--scratch-lr", type=number(float, positive=True), default=defaults.scratch_lr,
                   help="learning rate of the from-scratch baseline (default: the adaptation's, train.adapt_lr); "
                        "a randomly initialised model usually wants a higher one")
    p.add_argument("--uncertainty-samples", type=number(int, 0), default=defaults.uncertainty_samples, metavar="K",
                   help="samples per test image for the hallucination report (structure invented/lost and how much "
                        "of it the uncertainty map flags) of adapted rows on the default sampling path of backbones "
                        "that sample (default 4; 0 turns it off; needs the uncertainty plugin)")
    p.add_argument("--out", default=defaults.out, help="output folder: results, plots, runs/ and cache/")
    p.add_argument("--force", action="store_true", help="recompute every unit even when it is cached")
    p.add_argument("--dry-run", action="store_true", help="print the units to run and the time estimate, then stop")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="configuration key for every run, e.g. --set train.adapt_lr=3e-4 (repeatable)")
    # --- real-data benchmark (rdiff_bench.real_data)
    from rdiff_bench.real_data import add_arguments as add_real_data_arguments

    add_real_data_arguments(p)
    # --- end real-data benchmark
    p.set_defaults(handler=cmd_bench)
    return p


def _budget(text: str) -> int | None:
    """A budget flag's value: a whole number, or 'preset' (None) for the preset's own."""
    if text.strip().lower() == "preset":
        return None
    try:
        return number(int, 1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1 or 'preset', not '{text}'") from None


def cmd_bench(args: argparse.Namespace) -> int:
    """Exit code 0 when every row has figures, 1 when some failed (everything else is still written)."""
    # --- real-data benchmark (rdiff_bench.real_data): --data hands the whole command over
    if getattr(args, "data", None):
        from rdiff_bench import real_data

        return real_data.run(args)
    for flag in ("backbones", "modalities"):
        if not getattr(args, flag):
            raise UserError(f"rdiff bench needs --{flag} (or --data DIR --modality NAME for the real-data benchmark).")
    unused = [f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in ("modality", "pairs", "test", "run",
              "reconstruct_from") if getattr(args, flag, None)]
    if unused:  # an option nothing reads would be silently ignored
        raise UserError(f"{unused[0]} is an option of the real-data benchmark, which needs --data DIR.")
    # --- end real-data benchmark
    if Path(args.out).is_file():
        raise UserError(f"--out '{args.out}' is a file; the bench writes a folder of results there.")
    bench = Bench(settings_from_args(args))
    if not bench.settings.dry_run:
        require_matplotlib()
    report = bench.run()
    if bench.settings.dry_run:
        return 0
    failed = [r for r in report["rows"] if r["error"]]
    if failed:
        say(f"{len(failed)} of {len(report['rows'])} rows failed; see {bench.out / 'results.md'}")
        return 1
    return 0
