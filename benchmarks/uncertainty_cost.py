"""What the uncertainty map costs: seconds and peak memory of one sampled enhancement against the map of
``rdiff enhance --uncertainty`` (K samples, their mean and spread; docs/uncertainty.md).

Issue 29's budget: the map of a 512² photograph at K = 4 costs at most K × one sampled enhancement (4 DDIM
steps), and memory stays bounded for a 2048² photograph enhanced in tiles. Every backbone with a stochastic
path is built from its ``tiny`` preset with random weights (time and memory do not depend on training) and
enhances the synthetic fundus-like photograph of ``benchmarks/enhance_latency.py``, tiled as ``rdiff enhance``
tiles (``--tile``). Each measurement runs in a fresh process after a warm-up call, so its peak resident
memory (``ru_maxrss``: imports, weights, the image and every buffer) is its own; its time is the median of
``--repeats`` calls.

    python benchmarks/uncertainty_cost.py                         # 512² and 2048², ldm-unet and dit
    python benchmarks/uncertainty_cost.py --sizes 512 --backbones ldm-unet --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from enhance_latency import modality_for, synthetic_photograph  # noqa: E402 - the latency benchmark's image


def measure(job: dict) -> dict:
    """One measurement (runs in the worker process): ``job["samples"]`` 0 is one sampled enhancement, K ≥ 2
    the uncertainty map of K samples."""
    import resource
    import time

    import torch

    import rdiff
    from rdiff.enhance import enhance_image
    from rdiff_uncertainty.sampling import sample_uncertainty

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    backbone = rdiff.create_backbone(job["backbone"], preset=job["preset"]).eval()
    modality = modality_for(backbone.channels)
    path, options = backbone.resolve_path("sample", steps=job["steps"])
    tiling = dict(tile=job["tile"], overlap=job["overlap"])

    def run(image, tile: int) -> None:
        if job["samples"]:
            sample_uncertainty(backbone, modality, image, path=path, options=options, samples=job["samples"],
                               seed=0, **{**tiling, "tile": tile})
        else:
            enhance_image(backbone, modality, image, path=path, options=options, seed=0, **{**tiling, "tile": tile})

    warm = synthetic_photograph(backbone.size_multiple * 2)
    run(warm, max(job["tile"], len(warm)))
    image = synthetic_photograph(job["size"])
    times = []
    for _ in range(job.get("repeats", 1)):  # the median of several calls: one call varies by ±15 % on a shared CPU
        began = time.perf_counter()
        run(image, job["tile"])
        times.append(time.perf_counter() - began)
    seconds = sorted(times)[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {**job, "seconds": seconds, "peak_mib": peak / 2 ** 20}


def jobs(args: argparse.Namespace) -> list[dict]:
    import rdiff
    from rdiff.plugins import plugins

    names = args.backbones or [n for n in rdiff.list_backbones()
                               if "sampling" in plugins().entries["backbone"][n].capabilities]
    out = []
    for name in names:
        try:
            rdiff.get_preset(name, args.preset)
        except rdiff.UserError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        for size in args.sizes:
            for samples in (0, args.samples):
                out.append({"backbone": name, "preset": args.preset, "size": size, "samples": samples,
                            "steps": args.steps, "tile": args.tile, "overlap": args.overlap, "threads": args.threads,
                            "repeats": args.repeats})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", type=lambda s: s.split(","), help="comma-separated (default: every installed "
                                                                          "backbone with a stochastic path)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[512, 2048])
    parser.add_argument("--samples", type=int, default=4, help="K of the map (default 4)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of every sample (default 4)")
    parser.add_argument("--tile", type=int, default=1024, help="tile side (default 1024, rdiff enhance's)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default the backbone's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; the median is shown (default 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, as JSON, in a fresh process
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    if args.samples < 2:
        parser.error("--samples must be at least 2 (a spread needs two samples)")

    import torch

    print(f"ddim{args.steps}, tile {args.tile}, preset {args.preset}, random weights, median of {args.repeats}, "
          f"{args.threads or torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    header = (f"{'backbone':<10} {'size':>6} {'what':<22} {'seconds':>9} {'× one':>7} {'budget':>7} "
              f"{'peak MiB':>9} {'× one':>7}")
    print(header)
    print("-" * len(header))
    one: dict[tuple[str, int], dict] = {}  # the single sampled enhancement per backbone and size
    for job in jobs(args):
        what = "one sampled enhancement" if not job["samples"] else f"uncertainty map, K = {job['samples']}"
        child = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
        if child.returncode:
            reason = (child.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{job['backbone']:<10} {job['size']:>6} {what:<22} failed: {reason}", flush=True)
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        base = one.setdefault((r["backbone"], r["size"]), r)
        if base is r:
            print(f"{r['backbone']:<10} {r['size']:>6} {what:<22} {r['seconds']:>9.2f} {1:>7.2f} {'':>7} "
                  f"{r['peak_mib']:>9.0f} {1:>7.2f}", flush=True)
            continue
        ratio = r["seconds"] / base["seconds"]
        verdict = "ok" if ratio <= r["samples"] else "over"  # the map's budget: K × one enhancement
        print(f"{r['backbone']:<10} {r['size']:>6} {what:<22} {r['seconds']:>9.2f} {ratio:>7.2f} "
              f"{verdict + ' ≤' + str(r['samples']):>7} {r['peak_mib']:>9.0f} {r['peak_mib'] / base['peak_mib']:>7.2f}",
              flush=True)


if __name__ == "__main__":
    main()
