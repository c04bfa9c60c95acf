"""Tiling overhead of enhancement: rdiff's tiled enhancement against one plain pass over the same pixels
(``fast``: ``D(E(x))``; ``--path sample``: the backbone's sampler on the whole image, 4 steps), and how far
the tiled result is from the whole-image one.

    python benchmarks/tiling_overhead.py [--backbone ldm-unet] [--sizes 512,1024,1411] [--rounds 3]
    python benchmarks/tiling_overhead.py --path sample --sizes 1411,2048 --rounds 1 --no-small

Prints a table: image side, tiles, seconds of the plain pass, seconds of ``enhance_image`` with the run
defaults (tile 1024, overlap 96) and with 256-px tiles, their ratios, and the largest difference from the
whole image inside the field of view. Median of ``--rounds`` rounds, one thread per process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ldm-unet")
    parser.add_argument("--sizes", default="512,1024,1411")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--path", default="fast", choices=("fast", "sample"))
    parser.add_argument("--no-small", action="store_true", help="skip the 256-px tiles")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import rdiff
    from rdiff.enhance import _plan_axis, enhance_image
    from skimage import data, transform

    backbone = rdiff.create_backbone(args.backbone, preset="tiny").eval()
    modality = rdiff.create_modality("fundus")
    multiple = int(backbone.size_multiple)

    def timed(fn) -> float:
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    print(f"{'side':>6} {'tiles':>6} {'plain s':>8} {'tiled s':>8} {'ratio':>6} {'256px s':>8} {'ratio':>6} "
          f"{'max diff /255':>13}")
    for side in (int(s) for s in args.sizes.split(",")):
        image = transform.resize(data.retina(), (side, side), anti_aliasing=True).astype(np.float32)
        roi = modality.roi(image)
        padded = -(-side // multiple) * multiple
        x = torch.from_numpy(np.pad(image, ((0, padded - side), (0, padded - side), (0, 0)), mode="reflect"))
        x = x.permute(2, 0, 1)[None].contiguous()
        path = dict(path=args.path, steps=4) if args.path == "sample" else dict(path="fast")
        with torch.no_grad():
            if args.path == "fast":
                plain = timed(lambda: backbone.decode(backbone.encode(x)))
            else:
                plain = timed(lambda: backbone.enhance(x, path="sample", options=backbone.resolve_path("sample", steps=4)[1]))
        whole = enhance_image(backbone, modality, image, roi=roi, tile=max(1024, padded), overlap=96, **path)
        tiled_time = timed(lambda: enhance_image(backbone, modality, image, roi=roi, tile=1024, overlap=96, **path))
        small_tile = 1024 if args.no_small else 256
        small_time = tiled_time if args.no_small else timed(
            lambda: enhance_image(backbone, modality, image, roi=roi, tile=256, overlap=96, **path))
        small = enhance_image(backbone, modality, image, roi=roi, tile=small_tile, overlap=96, **path)
        axis = _plan_axis(side, 1024, 96, multiple)
        diff = float(np.abs(small - whole)[roi].max()) * 255
        print(f"{side:>6} {len(axis.starts) ** 2:>6} {plain:>8.2f} {tiled_time:>8.2f} {tiled_time / plain:>6.2f} "
              f"{small_time:>8.2f} {small_time / plain:>6.2f} {diff:>13.2f}")


if __name__ == "__main__":
    main()
