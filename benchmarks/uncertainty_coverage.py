"""Does the calibrated uncertainty map keep its promise on photographs it never saw? (docs/uncertainty.md)

    python benchmarks/uncertainty_coverage.py --modality fundus --data ../shared/data/fundus-idrid --out bench-uq-fundus
    python benchmarks/uncertainty_coverage.py --modality oct --data ../shared/data/oct-kermany --out bench-uq-oct

The held-out protocol of ``benchmarks/unseen_degradation.py`` (its evaluation-only simulators, the shipped
checkpoint's own split): for each seed, the phase 1 (``--phase1``, default the shipped one) is adapted on
the first ``--pairs`` adaptation files, calibrated at each ``--alphas`` level on its validation data
(``rdiff calibrate``'s default; or on ``--calibration-files`` further files of the split's ``pairs`` part, or
of its ``train`` part with ``--calibration-part train``, degraded the same way, whole, with
``--calibrate-on files``), and scored on every ``test`` file: empirical
coverage, the hallucination report, and whether coverage is within ``--tolerance`` of 1 − α. Everything is
written to ``--out/coverage.json`` and printed as a table; exit 1 when a cell misses its target.

A phase 1 without ``split.json`` (a run of your own) is split by subject as rdiff splits folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from unseen_degradation import SIMULATORS, write_pairs  # noqa: E402 - the protocol's simulators, reused as they are


def split_of(phase1: Path, modality, data: Path) -> dict[str, list[str]]:
    """The checkpoint's own split (``split.json``), else the folder split by subject."""
    if (phase1 / "split.json").is_file():
        return json.loads((phase1 / "split.json").read_text())
    from rdiff.data import split_by_subject
    from rdiff.images import list_images

    parts = split_by_subject(modality, list_images(data, modality.suffixes))
    return {name: [str(p.relative_to(data)) for p in files] for name, files in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", required=True, choices=sorted(SIMULATORS))
    parser.add_argument("--data", required=True, help="the folder the phase 1 was split from")
    parser.add_argument("--backbone", default="ldm-unet")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--phase1", help="a phase-1 run or checkpoint folder (default: the shipped one)")
    parser.add_argument("--pairs", type=int, default=10, help="adaptation pairs (default 10)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alphas", default="0.1,0.2", help="target risk levels (default 0.1,0.2)")
    parser.add_argument("--delta", type=float, help="calibrate with confidence 1 - delta (default: conformal risk control)")
    parser.add_argument("--samples", type=int, default=4, help="samples per image (default 4)")
    parser.add_argument("--calibrate-on", choices=["validation", "files"], default="validation")
    parser.add_argument("--calibration-crops", type=int, default=64, help="crops of the validation data (default 64)")
    parser.add_argument("--calibration-files", type=int, default=20, help="with --calibrate-on files (default 20)")
    parser.add_argument("--calibration-part", choices=["pairs", "train"], default="pairs",
                        help="split part the calibration files come from: what is left of 'pairs' after the "
                             "adaptation files (default), or 'train', the phase-1 images (seen clean and degraded "
                             "by rdiff's own simulator in phase 1, never with this one; for a split whose pairs "
                             "part is too small to calibrate on)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="allowed |coverage - (1 - alpha)| (default 0.02)")
    parser.add_argument("--set", action="append", default=[], help="configuration key for the adaptation (repeatable)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import rdiff
    from rdiff.cli import main as rdiff_main
    from rdiff.data import load_pair_folder
    from rdiff_uncertainty import calibration
    from rdiff_uncertainty.assess import calibrate, fit, score
    from rdiff_uncertainty.sampling import sampling_path

    modality = rdiff.create_modality(args.modality)
    phase1 = Path(args.phase1 or ROOT.parent / "plugins" / f"rdiff_{args.backbone.replace('-', '_')}" / "pretrained"
                  / f"{args.preset}-{args.modality}")
    data, out = Path(args.data), Path(args.out)
    split = split_of(phase1, modality, data)
    resize = int(rdiff.load_run(str(phase1)).config.train.resize)
    folders = {"pairs": (split["pairs"][:args.pairs], 1), "test": (split["test"], 2),
               "calibration": ((split["pairs"][args.pairs:] if args.calibration_part == "pairs" else split["train"])
                               [:args.calibration_files], 3)}
    for name, (files, seed) in folders.items():
        if (name != "calibration" or args.calibrate_on == "files") and not (out / name / "params.json").is_file():
            if not files:
                raise SystemExit(f"the split has no files for '{name}'")
            write_pairs(modality, [data / f for f in files], out / name, SIMULATORS[args.modality], seed, resize)

    cells = []
    alphas = [float(a) for a in args.alphas.split(",")]
    for seed in range(args.seeds):
        run_dir = out / "runs" / f"seed{seed}"
        if not (run_dir / "report.json").is_file():
            code = rdiff_main(["adapt", "--from", str(phase1), "--pairs", str(out / "pairs"), "--out", str(run_dir),
                               "--seed", str(seed), "--no-calibration", *[f"--set={kv}" for kv in args.set]])
            if code:
                return code
        run = rdiff.load_run(str(run_dir))
        path, options = sampling_path(run.backbone, None, run.resolve_path)
        test = load_pair_folder(modality, str(out / "test"), resize=None)
        if args.calibrate_on == "files":  # whole files: the samples of each image serve every alpha
            held = load_pair_folder(modality, str(out / "calibration"), resize=None)
            calibration_scores = [calibration.scores(u.mean, u.spread, pair.hq, pair.roi) for pair, u in
                                  zip(held, uncertainties(run, held, path, options, args.samples, seed))]
        tested = list(zip(test, uncertainties(run, test, path, options, args.samples, seed)))
        for alpha in alphas:
            if args.calibrate_on == "files":
                fitted = fit(calibration_scores, alpha=alpha, delta=args.delta, samples=args.samples, path=path,
                             options=options)
            else:
                fitted = calibrate(run, alpha=alpha, delta=args.delta, samples=args.samples,
                                   pairs=args.calibration_crops, seed=seed)
            result = score(run.modality, tested, fitted, samples=args.samples, path=path)
            cells.append({"seed": seed, "alpha": alpha, "scale": fitted.scale, "calibration_pairs": fitted.pairs,
                          **{k: v for k, v in result.items() if k != "per_image"}, "per_image": result["per_image"]})
            print(f"seed {seed}  alpha {alpha}: coverage {100 * result['coverage']:.2f} % (target "
                  f"{100 * (1 - alpha):.0f} %), invented {100 * result['invented']:.2f} % "
                  f"({100 * result['invented_flagged']:.0f} % flagged), lost {100 * result['lost']:.2f} %", flush=True)

    summary, missed = [], 0
    for alpha in sorted({c["alpha"] for c in cells}):
        coverages = [c["coverage"] for c in cells if c["alpha"] == alpha]
        ok = all(abs(c - (1 - alpha)) <= args.tolerance for c in coverages)
        missed += not ok
        summary.append({"alpha": alpha, "coverage_mean": float(np.mean(coverages)),
                        "coverage_per_seed": coverages, "within_tolerance": ok})
        print(f"alpha {alpha}: coverage {100 * np.mean(coverages):.2f} % over {len(coverages)} seed(s) "
              f"{'within' if ok else 'OUTSIDE'} ±{100 * args.tolerance:.0f} points of {100 * (1 - alpha):.0f} %")
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps({"settings": vars(args), "summary": summary, "cells": cells},
                                                  indent=1, default=float))
    return 1 if missed else 0


def uncertainties(run, pairs: list, path: str, options, samples: int, seed: int):
    """The K-sample mean and spread of each pair's degraded image, as ``rdiff enhance --uncertainty`` makes them."""
    from rdiff_uncertainty.sampling import sample_uncertainty

    return [sample_uncertainty(run.backbone, run.modality, pair.lq, roi=pair.roi, path=path, options=options,
                               samples=samples, seed=seed, tile=run.tile, overlap=run.overlap) for pair in pairs]


if __name__ == "__main__":
    sys.exit(main())
