"""How much room adaptation has on a trained run: the one-shot path against its autoencoder's ceiling.

For a latent backbone the ``fast`` path is ``D(E'(lq))``. Whatever the adaptor learns, it can at best move
``E'(lq)`` onto ``E(hq)``, so ``D(E(hq))`` (the clean image through the frozen autoencoder) bounds what
adaptation of the encoder can reach. This script scores, on the run's own held-out crops and by degradation
type:

- ``input``: the degraded crop itself;
- ``base D(E(lq))``: the phase-1 model, no adaptor (reconstruct-only);
- ``adapted D(E'(lq))``: with the run's adaptor (when the run has one);
- ``ceiling D(E(hq))``: the clean crop through the frozen autoencoder.

    python benchmarks/adaptation_headroom.py runs/ldm-unet-fundus-tiny [--crops 64]

The gap ``ceiling - base`` is all adaptation of the encoder can add on this path; when it is small, a better
autoencoder (more phase-1 steps, a larger preset) must come first.
"""

from __future__ import annotations

import argparse

import torch

import rdiff
from rdiff.data import degraded_crops, load_items
from rdiff.evaluation import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory (phase 1 at least)")
    parser.add_argument("--crops", type=int, default=None, help="held-out crops (default: the run's eval.crops)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = rdiff.load_run(args.run)
    backbone, modality, cfg = run.backbone, run.modality, run.config
    if "latent" not in backbone.capabilities:
        raise SystemExit(f"backbone '{cfg.backbone}' has no latent path, so it has no autoencoder ceiling")
    backbone.eval()
    items = load_items(modality, cfg.data, "heldout", cfg.train.resize, cfg.train.image_size, cfg.train.bad_images)
    pairs = degraded_crops(modality, items, cfg.train.image_size, args.crops or cfg.eval.crops, cfg.eval.seed)
    device = next(backbone.parameters()).device

    def base(lq: torch.Tensor) -> torch.Tensor:
        with backbone.base_only():
            return backbone.enhance(lq, path="fast")

    rows = {"input": score(modality, pairs, lambda lq: lq, device),
            "base D(E(lq))": score(modality, pairs, base, device)}
    if run.adapted:
        rows["adapted D(E'(lq))"] = score(modality, pairs, lambda lq: backbone.enhance(lq, path="fast"), device)
    # the ceiling feeds the clean crop: score() hands produce() the degraded one, so look the clean one up
    clean = iter(torch.stack([torch.from_numpy(p.hq).permute(2, 0, 1) for p in pairs]).split(16))

    def ceiling(lq: torch.Tensor) -> torch.Tensor:
        with backbone.base_only():
            return backbone.enhance(next(clean).to(lq), path="fast")

    rows["ceiling D(E(hq))"] = score(modality, pairs, ceiling, device)

    metrics = [k for k in rows["input"] if k != "by_type"]
    print(f"{args.run}: {len(pairs)} held-out crops, scored inside the region of interest\n")
    print("| | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for name, result in rows.items():
        print(f"| {name} | " + " | ".join(f"{result[m]:.3f}" for m in metrics) + " |")
    types = sorted(rows["input"].get("by_type", {}))
    if types:
        print(f"\nPSNR (dB) by degradation type (a crop counts under every type it received):\n")
        print("| type | " + " | ".join(rows) + " |")
        print("|---|" + "---|" * len(rows))
        for kind in types:
            print(f"| {kind} | " + " | ".join(f"{r['by_type'][kind]['psnr']:.2f}" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
