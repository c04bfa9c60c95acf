"""Milliseconds per call of each fundus degradation, on the embedded photograph at several sizes.

Each degradation is timed on the same image and FOV mask (computed once, outside the timing) over many
seeds, since the default mix and cofe's seven types cost differently from call to call. Wall-clock time is
what a data loader waits for; CPU time is also printed because on a shared machine the wall clock also
counts other processes' turns.

    python benchmarks/degrade_speed.py
    python benchmarks/degrade_speed.py --sizes 512 1024 --calls 50 --names cofe default
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="image sides, px")
    parser.add_argument("--calls", type=int, default=30, help="timed calls (seeds) per degradation and size")
    parser.add_argument("--names", nargs="+", default=["default", "cofe", "cataract", "contrast"],
                        help="degradation models (degradation.name)")
    args = parser.parse_args()

    import numpy as np
    from skimage import data
    from skimage.transform import resize

    import rdiff

    photograph = data.retina().astype(np.float32) / 255.0
    print(f"{'degradation':<12} {'size':>9} {'wall ms/call':>13} {'cpu ms/call':>12}")
    for side in args.sizes:
        image = resize(photograph, (side, side), order=1, anti_aliasing=True).astype(np.float32)
        for name in args.names:
            modality = rdiff.create_modality("fundus", degradation={"name": name})
            roi = modality.roi(image)
            modality.degrade(image, roi, np.random.default_rng(12345))  # warm-up (imports, caches)
            wall, cpu = time.perf_counter(), time.process_time()
            for seed in range(args.calls):
                modality.degrade(image, roi, np.random.default_rng(seed))
            wall_ms = (time.perf_counter() - wall) / args.calls * 1000
            cpu_ms = (time.process_time() - cpu) / args.calls * 1000
            print(f"{name:<12} {f'{side}x{side}':>9} {wall_ms:>13.1f} {cpu_ms:>12.1f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(load average {load:.1f} on {os.cpu_count()} cores while measuring)")


if __name__ == "__main__":
    main()
