"""Training throughput (images/s) and peak memory of every backbone, per phase-1 stage and for phase 2.

Each measurement trains one part of a run with the engine exactly as ``rdiff train`` does (data loading,
accelerate, logging included) on the fundus embedded sample, in a fresh process: a phase-1 stage
(``autoencoder``, ``denoiser``; earlier stages are marked done with random weights, which costs the same)
or phase 2 with the residual adaptor. The step time is the wall clock between the engine's step-end hook
calls after a warm-up step; the peak resident memory (``ru_maxrss``) is the process's own, and the
resident memory before training (imports, weights) is shown next to it.

    python benchmarks/train_throughput.py                          # tiny, 6 steps per part
    python benchmarks/train_throughput.py --presets base --steps 2 --batch 2   # base: slow on a CPU
    python benchmarks/train_throughput.py --backbones ldm-unet --presets tiny,base --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(job: dict) -> dict:
    """One part of one run (in the worker process): seconds per step and memory."""
    import resource
    import tempfile
    import time

    import torch

    from rdiff import hookimpl
    from rdiff.checkpoints import write_json
    from rdiff.registry import resolve_config
    from rdiff.engine import Engine
    from rdiff.plugins import plugins

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    stamps: list[float] = []

    class StepClock:
        @hookimpl
        def rdiff_step_end(self, phase, stage, step, logs):
            if "loss" in logs:  # a training step's line, not a validation's
                stamps.append(time.perf_counter())

    plugins().pm.register(StepClock())
    train = {"log_every": 1, "checkpoint_every": 10 ** 9, "val_every": 0}
    batch = job["batch"]
    config = resolve_config([{"backbone": job["backbone"], "modality": "fundus", "preset": job["preset"],
                              "adaptor": "residual", "train": train}])
    if batch:
        config.train.batch_size = config.train.adapt_batch_size = batch
    part, steps = job["part"], job["steps"]
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(config, run_dir)
        stages = list(engine.backbone.stages)
        before = stages if part == "adapt" else stages[:stages.index(part)]
        if before:  # earlier stages: marked done with the random weights (a step costs the same)
            engine.backbone.save(engine.reconstruct_dir)
            write_json(engine.reconstruct_dir / "stages.json", {"done": before})
        config.train.steps = {s: (steps if s == part else 0) for s in stages}
        config.train.adapt_steps = steps
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if part == "adapt":
            engine.load_reconstruction()
            engine.adapt()
            used_batch = config.train.adapt_batch_size
        else:
            engine.reconstruct()
            used_batch = config.train.batch_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # the first step (warm-up) is left out
    seconds = sum(gaps) / len(gaps) if gaps else float("nan")
    params = sum(p.numel() for p in engine.backbone.parameters())
    return {**job, "batch": used_batch, "seconds": seconds, "images_per_s": used_batch / seconds,
            "rss_before_mib": rss_before / 2 ** 20, "peak_mib": peak / 2 ** 20, "parameters": params,
            "image_size": config.train.image_size}


def jobs(args: argparse.Namespace) -> list[dict]:
    import rdiff

    out = []
    for name in args.backbones or rdiff.list_backbones():
        for preset in args.presets:
            try:
                rdiff.get_preset(name, preset)
                stages = rdiff.create_backbone(name, preset="tiny").stages
            except Exception as exc:  # noqa: BLE001 - a backbone without this preset is skipped
                print(f"skipping {name} {preset}: {exc}", file=sys.stderr)
                continue
            steps = args.steps if args.steps else (2 if preset != "tiny" else 6)
            for part in [*stages, "adapt"]:
                out.append({"backbone": name, "preset": preset, "part": part, "steps": steps,
                            "batch": args.batch if preset != "tiny" else args.tiny_batch, "threads": args.threads})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", type=lambda s: s.split(","), help="comma-separated (default: all installed)")
    parser.add_argument("--presets", type=lambda s: s.split(","), default=["tiny", "base"])
    parser.add_argument("--steps", type=int, default=0, help="steps per part (default: 6 at tiny, 2 otherwise)")
    parser.add_argument("--batch", type=int, default=2,
                        help="batch for presets other than tiny (default 2: base crops are 256 px)")
    parser.add_argument("--tiny-batch", type=int, default=0, help="batch at tiny (default: the preset's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, as JSON, in a fresh process
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    import os

    import torch

    print(f"CPU, {args.threads or torch.get_num_threads()} threads, fundus embedded sample, load average "
          f"{os.getloadavg()[0]:.1f}; one process per row")
    header = (f"{'backbone':<10} {'preset':<6} {'params':>8} {'part':<12} {'batch':>5} {'px':>4} {'s/step':>8} "
              f"{'images/s':>9} {'RSS before':>11} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for job in jobs(args):
        child = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
        if child.returncode:
            last = (child.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{job['backbone']:<10} {job['preset']:<6} {'':>8} {job['part']:<12} failed: {last}")
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{r['backbone']:<10} {r['preset']:<6} {r['parameters'] / 1e6:>7.2f}M {r['part']:<12} {r['batch']:>5} "
              f"{r['image_size']:>4} {r['seconds']:>8.2f} {r['images_per_s']:>9.1f} {r['rss_before_mib']:>11.0f} "
              f"{r['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
