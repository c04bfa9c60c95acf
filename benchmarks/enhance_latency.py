"""Seconds per image of ``rdiff enhance`` at 512² and 2048², per backbone and path, with peak memory.

Every installed backbone is built from its ``tiny`` preset with random weights (latency does not depend on
training) and enhances a synthetic fundus-like photograph: a textured disc on black, so tiles outside the
field of view are skipped as they are in a real photograph. Paths: ``fast`` and, for backbones that
sample, DDIM with each of ``--steps``. Each measurement runs in a fresh process, after a warm-up call, and
shows the median of ``--repeats`` calls; the peak resident memory it reports (``ru_maxrss``: imports,
weights, the image and every buffer of the tiled enhancement) is its own process's. ``× fast`` of a
sampling path is the median of its calls' ratios to a fast-path call made right after each in the same
process (the same path timed in two processes differs by up to 30 % on a shared CPU).

    python benchmarks/enhance_latency.py
    python benchmarks/enhance_latency.py --backbones ldm-unet --sizes 512 --steps 4 --batch 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def synthetic_photograph(size: int):
    """A fundus-like test image: a textured, vignetted disc filling most of a black square."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    radius = np.hypot(y - 0.5, x - 0.5)
    texture = 0.45 + 0.15 * np.sin(60 * x) * np.cos(45 * y) - 0.3 * radius
    colour = np.array([0.95, 0.55, 0.3], np.float32)
    image = np.clip(texture[..., None] * colour + 0.05, 0, 1) * (radius < 0.48)[..., None]
    return image.astype(np.float32)


def modality_for(channels: int):
    """The fundus modality when installed (its field-of-view mask and crop), else the whole image."""
    import rdiff

    if channels == 3 and "fundus" in rdiff.list_modalities():
        return rdiff.create_modality("fundus")

    class WholeImage(rdiff.Modality):
        name = "whole-image"

        def degrade(self, image, roi, rng):
            return image.copy(), {}

        def sample_images(self, split):
            return []

    return WholeImage()


def measure(job: dict) -> dict:
    """One measurement (runs in the worker process)."""
    import resource
    import time

    import torch

    import rdiff
    from rdiff.enhance import enhance_image

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    backbone = rdiff.create_backbone(job["backbone"], preset=job["preset"])
    modality = modality_for(backbone.channels)
    options = dict(path=job["path"], steps=job["steps"], tile=job["tile"], overlap=job["overlap"], batch=job["batch"])

    tiles = 0
    enhance = backbone.enhance

    def counting(lq, **kwargs):
        nonlocal tiles
        tiles += len(lq)
        return enhance(lq, **kwargs)

    backbone.enhance = counting
    warm = synthetic_photograph(backbone.size_multiple * 2)
    enhance_image(backbone, modality, warm, **{**options, "tile": max(job["tile"], len(warm))})
    image = synthetic_photograph(job["size"])
    # a sampling path is timed in turn with the fast path, in this process: the same path in two processes
    # differs by up to 30 % on a shared CPU, far more than between calls of one process
    paired = job["path"] != "fast" and "fast" in backbone.paths()
    times, ratios = [], []
    for _ in range(job.get("repeats", 1)):  # the median of several calls: one call varies by ±15 % on a shared CPU
        tiles = 0
        began = time.perf_counter()
        enhance_image(backbone, modality, image, **options)
        times.append(time.perf_counter() - began)
        counted = tiles
        if paired:
            began = time.perf_counter()
            enhance_image(backbone, modality, image, **{**options, "path": "fast"})
            ratios.append(times[-1] / (time.perf_counter() - began))
    seconds = sorted(times)[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {**job, "seconds": seconds, "tiles": counted, "peak_mib": peak / 2 ** 20,
            "ratio": sorted(ratios)[len(ratios) // 2] if ratios else None,
            "parameters": sum(p.numel() for p in backbone.parameters())}


def jobs(args: argparse.Namespace) -> list[dict]:
    import rdiff

    out = []
    for name in args.backbones or rdiff.list_backbones():
        try:
            rdiff.get_preset(name, args.preset)
            backbone = rdiff.create_backbone(name, preset=args.preset)
        except rdiff.UserError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        paths = [("fast", 1)] if "fast" in backbone.paths() else []
        if "sample" in backbone.paths():
            paths += [("sample", steps) for steps in args.steps]
        for size in args.sizes:
            for path, steps in paths:
                out.append({"backbone": name, "preset": args.preset, "size": size, "path": path, "steps": steps,
                            "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
                            "threads": args.threads, "repeats": args.repeats})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", type=lambda s: s.split(","), help="comma-separated (default: all installed)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[512, 2048])
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[4, 50],
                        help="DDIM step counts of the sample path")
    parser.add_argument("--tile", type=int, default=1024, help="tile side (default 1024, rdiff enhance's)")
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; the median is shown (default 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, as JSON, in a fresh process
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    header = (f"{'backbone':<10} {'params':>8} {'size':>6} {'path':<10} {'tiles':>5} {'s/image':>9} {'× fast':>7} "
              f"{'peak MiB':>9}")
    import os

    import torch

    print(f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}, preset {args.preset}, random weights, "
          f"{args.threads or torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(header)
    print("-" * len(header))
    fast: dict[tuple[str, int], float] = {}  # seconds of the fast path per backbone and size
    for job in jobs(args):
        child = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
        label = job["path"] if job["path"] == "fast" else f"ddim{job['steps']}"
        if child.returncode:
            print(f"{job['backbone']:<10} {'':>8} {job['size']:>6} {label:<10} failed: {child.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        if r["path"] == "fast":
            fast[r["backbone"], r["size"]] = r["seconds"]
        ratio = r["ratio"] or (r["seconds"] / fast[r["backbone"], r["size"]] if (r["backbone"], r["size"]) in fast
                               else float("nan"))
        print(f"{r['backbone']:<10} {r['parameters'] / 1e6:>7.2f}M {r['size']:>6} {label:<10} {r['tiles']:>5} "
              f"{r['seconds']:>9.2f} {ratio:>7.2f} {r['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
