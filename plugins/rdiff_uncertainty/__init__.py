"""rdiff's built-in ``uncertainty`` plugin: where an enhancement may be wrong (docs/uncertainty.md).

Added through the plugin API alone, as a third party would add it:

- ``rdiff enhance --uncertainty [--samples K]`` (``rdiff_add_cli_options``, wrapping the command): K samples
  of the stochastic path; their mean is the enhanced file and a map beside it says where they disagree
  (:mod:`rdiff_uncertainty.sampling`);
- calibration after phase 2 (``rdiff_run_started`` / ``rdiff_run_finished``): the scale that turns the
  spread into intervals with a stated risk, fitted on the run's validation data, saved as
  ``RUN/adapt/calibration.json`` and added to report.json (:mod:`rdiff_uncertainty.calibration`); ``rdiff
  calibrate`` refits it (``rdiff_register_commands``);
- ``rdiff evaluate --uncertainty``: coverage on held-out pairs and the hallucination report
  (:mod:`rdiff_uncertainty.hallucination`).

Light at import: torch loads when one of them runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from rdiff import hookimpl
from rdiff.cli import number
from rdiff.errors import UserError

#: calibration settings of the runs started in this process, by run directory (from their command line)
_SETTINGS: dict[str, dict] = {}


@hookimpl
def rdiff_add_cli_options(command, parser):
    if command in ("enhance", "evaluate"):
        what = ("write the mean of K samples and an uncertainty map beside each output (<stem>_uncertainty.png, "
                "<stem>_uncertainty16.png)" if command == "enhance" else
                "also score coverage of the calibrated intervals and structure invented or lost on the held-out pairs")
        parser.add_argument("--uncertainty", action="store_true", help=f"{what} (docs/uncertainty.md)")
        parser.add_argument("--samples", type=number(int, 1), metavar="K", help="samples per image for --uncertainty (default 4, at least 2)")
        parser.set_defaults(handler=_with_uncertainty(parser.get_default("handler"), command))
    elif command in ("train", "adapt"):
        parser.add_argument("--uncertainty-alpha", type=number(float, positive=True), metavar="ALPHA",
                            help="calibration after phase 2: tolerated fraction of pixels outside their interval "
                                 "(default 0.1)")
        parser.add_argument("--uncertainty-delta", type=number(float, positive=True), metavar="DELTA",
                            help="calibration with this confidence 1 - delta (risk-controlling prediction sets); "
                                 "default none: conformal risk control")
        parser.add_argument("--no-calibration", action="store_true",
                            help="skip the uncertainty calibration after phase 2")
        parser.set_defaults(handler=_levels_checked(parser.get_default("handler")))


@hookimpl
def rdiff_register_commands(subparsers):
    from rdiff_uncertainty.assess import DEFAULT_ALPHA, DEFAULT_PAIRS

    p = subparsers.add_parser("calibrate", help="fit the uncertainty map's scale on a run's validation data",
                              description="Fit the scale that turns the spread of K samples into per-pixel intervals "
                                          "with a stated risk, and save it as RUN/adapt/calibration.json "
                                          "(docs/uncertainty.md).")
    p.add_argument("--run", required=True, help="an adapted run directory")
    p.add_argument("--alpha", type=number(float, positive=True), default=DEFAULT_ALPHA,
                   help=f"tolerated expected fraction of roi pixel values outside their interval (default {DEFAULT_ALPHA})")
    p.add_argument("--delta", type=number(float, positive=True),
                   help="hold the risk with probability 1 - delta over the calibration pairs (default: in expectation, "
                        "conformal risk control)")
    p.add_argument("--samples", type=number(int, 1), default=4, help="samples per image (default 4, at least 2)")
    p.add_argument("--pairs", type=number(int, 1), default=DEFAULT_PAIRS,
                   help=f"calibration crops from the run's validation data (default {DEFAULT_PAIRS})")
    p.add_argument("--folder", help="a folder with lq/ and hq/ of pairs the run never trained on: calibrate on them "
                                    "whole, at native resolution, instead of on validation crops (what the "
                                    "guarantee is about; about 50 pairs bring coverage within 2 points of 1 - alpha)")
    p.add_argument("--path", help="sampling path and options, e.g. sample or ddim4 (default: the run's)")
    p.add_argument("--seed", type=number(int), default=0, help="seed of the first sample (default 0)")
    p.set_defaults(handler=_calibrate_command)


@hookimpl
def rdiff_run_started(run_dir, config, cli_args):
    _SETTINGS[str(Path(run_dir).resolve())] = {
        "alpha": getattr(cli_args, "uncertainty_alpha", None), "delta": getattr(cli_args, "uncertainty_delta", None),
        "skip": bool(getattr(cli_args, "no_calibration", False))}


@hookimpl
def rdiff_run_finished(run_dir, report):
    """Calibrate a run whose phase 2 just finished, when its backbone samples. A failure here is a warning:
    the trained run is complete without a calibration, and ``rdiff calibrate`` can add one later."""
    from rdiff.plugins import plugins

    settings = _SETTINGS.pop(str(Path(run_dir).resolve()), {})
    entry = plugins().entries["backbone"].get(report.get("backbone"))
    if settings.get("skip") or not report.get("adapt") or entry is None or "sampling" not in entry.capabilities:
        return
    from rdiff.checkpoints import write_json
    from rdiff.run import Run
    from rdiff_uncertainty import assess

    try:
        run = Run.load(run_dir)
        # as many crops as the run's own evaluation scores (eval.crops): a smoke run stays a smoke run
        fitted = assess.calibrate(run, alpha=settings.get("alpha") or assess.DEFAULT_ALPHA,
                                  delta=settings.get("delta"), pairs=min(assess.DEFAULT_PAIRS, run.config.eval.crops))
    except UserError as exc:
        warnings.warn(f"uncertainty calibration skipped: {exc}", stacklevel=2)
        return
    report["calibration"] = {"alpha": fitted.alpha, "delta": fitted.delta, "scale": fitted.scale,
                             "samples": fitted.samples, "pairs": fitted.pairs,
                             "calibration_coverage": fitted.calibration_coverage}
    write_json(Path(run_dir) / "report.json", report)
    print(f"uncertainty calibrated: scale {fitted.scale:.3g} on {fitted.pairs} validation crops "
          f"(coverage there {100 * fitted.calibration_coverage:.1f} %, target ≥ {100 * (1 - fitted.alpha):.0f} %) "
          f"-> {Path(run_dir) / 'adapt' / 'calibration.json'}")


def _calibrate_command(args) -> int:
    from rdiff.run import Run
    from rdiff_uncertainty.assess import calibrate

    run = Run.load(args.run)
    held = None
    if args.folder:
        from rdiff.data import load_pair_folder

        held = load_pair_folder(run.modality, args.folder, resize=None)
    fitted = calibrate(run, alpha=args.alpha, delta=args.delta, samples=args.samples, pairs=args.pairs,
                       path=args.path, seed=args.seed, held=held)
    print(f"scale {fitted.scale:.4g}: {fitted.guarantee}; coverage on the calibration {'pairs' if held else 'crops'} "
          f"{100 * fitted.calibration_coverage:.2f} % -> {Path(args.run) / 'adapt' / 'calibration.json'}")
    return 0


def _levels_checked(handler):
    def run(args):  # a bad alpha or delta is refused before training, not found after it
        from rdiff_uncertainty.calibration import check_levels

        check_levels(args.uncertainty_alpha or 0.1, args.uncertainty_delta)
        return handler(args)
    return run


def _with_uncertainty(handler, command):
    def run(args):
        if not args.uncertainty:
            if args.samples is not None:
                raise UserError("--samples is the number of samples for --uncertainty; add --uncertainty.")
            return handler(args)
        args.samples = 4 if args.samples is None else args.samples
        if command == "enhance":
            from rdiff_uncertainty.sampling import enhance_files_with_uncertainty

            return enhance_files_with_uncertainty(args)
        return _evaluate_with_uncertainty(args)
    return run


def _evaluate_with_uncertainty(args) -> int:
    """``rdiff evaluate`` as the core runs it, then the uncertainty assessment of the same held-out pairs."""
    import json

    from rdiff.report import format_eval_table
    from rdiff.run import Run
    from rdiff_uncertainty.assess import assess, format_assessment, heldout
    from rdiff_uncertainty.calibration import Calibration
    from rdiff_uncertainty.sampling import check_request, sampling_path

    if args.data and args.pairs:
        raise UserError("give --data or --pairs, not both.")
    run = Run.load(args.run, reconstruct_only=args.reconstruct_only)
    path, options = sampling_path(run.backbone, None, run.resolve_path)
    check_request(run.backbone, path, args.samples)
    calibration = None if args.reconstruct_only else Calibration.load(run.directory)
    if calibration is not None and not calibration.matches(args.samples, path, options):
        raise UserError(f"the run's calibration was fitted with {calibration.samples} samples of path {calibration.path}; "
                        f"evaluate with --samples {calibration.samples}, or recalibrate (rdiff calibrate --samples "
                        f"{args.samples}).")
    result = run.evaluate(data=args.data, pairs=args.pairs, crops=args.crops,
                          paths=args.paths.split(",") if args.paths else None)
    pairs = heldout(run, data=args.data, pairs=args.pairs, crops=args.crops)
    result["uncertainty"] = assess(run.backbone, run.modality, pairs, calibration, path=path, options=options,
                                   samples=args.samples, tile=run.tile, overlap=run.overlap)
    print(json.dumps(result, indent=2) if args.json else f"{format_eval_table(result)}\n{format_assessment(result['uncertainty'])}")
    return 0
