"""Step time of one training step in float32 vs bf16 autocast (as `train.mixed_precision`), per phase-1 stage
and for phase 2, on the tiny preset. Prints a table.

    python benchmarks/precision.py [--backbone ldm-unet] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def step_time(backbone, task, args, params, precision: str, steps: int) -> float:
    # accelerate's CPU autocast is torch.autocast("cpu", bfloat16); called directly here because accelerate's
    # state is process-wide and one process compares both precisions
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = backbone(task, *args)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up kernels
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    import rdiff

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ldm-unet")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clean = torch.rand(args.batch, 3, args.size, args.size)
    roi = torch.ones(args.batch, 1, args.size, args.size)
    print(f"{args.backbone} tiny, batch {args.batch} at {args.size}², {args.threads} thread(s), CPU")
    print(f"{'step':<28}{'float32 s':>12}{'bf16 s':>12}{'bf16/fp32':>12}")
    for stage in rdiff.create_backbone(args.backbone, preset="tiny").stages:
        row = []
        for precision in ("no", "bf16"):
            backbone = rdiff.create_backbone(args.backbone, preset="tiny")
            params = backbone.stage_parameters(stage)
            for p in backbone.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            row.append(step_time(backbone, "reconstruction_loss", (stage, clean, roi), params, precision, args.steps))
        print(f"{'reconstruct:' + stage:<28}{row[0]:>12.3f}{row[1]:>12.3f}{row[1] / row[0]:>12.2f}")
    row = []
    for precision in ("no", "bf16"):
        backbone = rdiff.create_backbone(args.backbone, preset="tiny")
        adaptor = rdiff.create_adaptor("residual", backbone)
        row.append(step_time(backbone, "adaptation_loss", (clean * 0.6, clean, roi), adaptor.trainable_parameters(),
                             precision, args.steps))
    print(f"{'adapt (residual)':<28}{row[0]:>12.3f}{row[1]:>12.3f}{row[1] / row[0]:>12.2f}")


if __name__ == "__main__":
    main()
