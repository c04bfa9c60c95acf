"""The engine's overhead: seconds per step of ``rdiff`` against a plain hand-written diffusers training loop of
the same model, the ldm-unet tiny denoiser stage.

Both train the same ``UNet2DModel`` (the backbone's denoiser, freshly built from the same seed) on latents
of the same frozen VQ autoencoder, with the same ``DDPMScheduler``, AdamW at the same learning rate,
gradient clipping at the same norm and the same batches (the engine's seeded fundus crops). Three loops:

- ``rdiff``: ``Engine.reconstruct()`` training the denoiser stage (the autoencoder stage marked done), with
  the default logging; everything the engine does per step counts (accelerate, per-step reseeding,
  non-finite check, progress bar, metrics.jsonl);
- ``plain``: a hand-written loop over a plain ``DataLoader`` of the same dataset;
- ``plain, in memory``: the same loop over batches loaded beforehand (compute only, no data loading).

Times are taken between step 10 and the last step (the first steps warm kernels up), as wall-clock and as
CPU time of the process: on a shared machine the wall clock also counts the other processes' turns, the CPU
time does not, so the overhead is computed from both. The loops alternate for ``--rounds`` rounds and the
median is reported.

    python benchmarks/engine_overhead.py                  # 30 steps, 2 rounds
    python benchmarks/engine_overhead.py --steps 50 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

WARMUP = 10  # steps before timing starts (also the engine's default logging interval)


def clock() -> tuple[float, float]:
    """(wall-clock, CPU time of this process) in seconds."""
    return time.perf_counter(), time.process_time()


def per_step(stamps: dict[int, tuple[float, float]], steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per step between the end of the warm-up and the last step."""
    (wall0, cpu0), (wall1, cpu1) = stamps[WARMUP], stamps[steps]
    return (wall1 - wall0) / (steps - WARMUP), (cpu1 - cpu0) / (steps - WARMUP)


def engine_loop(steps: int, seed: int) -> tuple[float, float]:
    """Seconds per step of the engine on the denoiser stage."""
    from rdiff import hookimpl
    from rdiff.checkpoints import write_json
    from rdiff.registry import resolve_config
    from rdiff.engine import Engine
    from rdiff.plugins import plugins

    stamps: dict[int, tuple[float, float]] = {}

    class StepClock:
        @hookimpl
        def rdiff_step_end(self, phase, stage, step, logs):
            stamps[step] = clock()

    observer = StepClock()
    plugins().pm.register(observer)
    config = resolve_config([{"backbone": "ldm-unet", "modality": "fundus", "preset": "tiny", "seed": seed,
                              "train": {"steps": {"autoencoder": 0, "denoiser": steps},
                                        "checkpoint_every": 10 ** 9}}])
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            engine = Engine(config, run_dir)
            engine.backbone.save(engine.reconstruct_dir)  # the autoencoder stage: done, with random weights
            write_json(engine.reconstruct_dir / "stages.json", {"done": ["autoencoder"]})
            engine.reconstruct()
    finally:
        plugins().pm.unregister(observer)
    return per_step(stamps, steps)


def plain_loop(steps: int, seed: int, in_memory: bool) -> tuple[float, float]:
    """Seconds per step of a hand-written diffusers loop: same networks, scheduler, optimiser and batches."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import rdiff
    from rdiff.config import TrainConfig
    from rdiff.data import CleanCrops, load_items
    from rdiff.training import stable_seed

    preset = rdiff.get_preset("ldm-unet", "tiny")
    train = TrainConfig(**{k: v for k, v in preset["train"].items() if k != "steps"})
    modality = rdiff.create_modality("fundus")
    torch.manual_seed(seed)
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny", channels=modality.channels)
    autoencoder, unet, scheduler = backbone.autoencoder, backbone.denoiser, backbone.scheduler
    autoencoder.requires_grad_(False)
    items = load_items(modality, None, "train", train.resize, train.image_size)
    dataset = CleanCrops(items, train.image_size, steps * train.batch_size,
                         stable_seed(seed, "reconstruct", "denoiser"))  # the engine's crops, in its order
    loader = DataLoader(dataset, batch_size=train.batch_size, shuffle=False, drop_last=True)
    batches = list(loader) if in_memory else loader
    optimizer = torch.optim.AdamW(unet.parameters(), lr=train.lr, weight_decay=0.0)
    scale = None
    unet.train()
    stamps: dict[int, tuple[float, float]] = {}
    for step, batch in enumerate(batches, 1):
        with torch.no_grad():
            latents = autoencoder.encode(batch["clean"] * 2 - 1).latents
            if scale is None:  # latent diffusion's scale_by_std, as the backbone does on its first batch
                scale = 1.0 / latents.flatten().std().item()
            latents = latents * scale
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(torch.cat([noisy, latents], dim=1), timesteps).sample
        loss = F.mse_loss(prediction, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps[step] = clock()
    return per_step(stamps, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help=f"steps per loop (> {WARMUP}; default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three loops (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must be more than {WARMUP}")

    import os

    import torch

    import rdiff

    if args.threads:
        torch.set_num_threads(args.threads)
    batch = rdiff.get_preset("ldm-unet", "tiny")["train"]["batch_size"]
    loops = {"rdiff": lambda: engine_loop(args.steps, args.seed),
             "plain": lambda: plain_loop(args.steps, args.seed, in_memory=False),
             "plain, in memory": lambda: plain_loop(args.steps, args.seed, in_memory=True)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            times[name].append(loop())
    print(f"ldm-unet tiny denoiser stage, batch {batch} at 64 px, CPU, {torch.get_num_threads()} thread(s), "
          f"steps {WARMUP + 1}-{args.steps} timed, median of {args.rounds} round(s), load average "
          f"{os.getloadavg()[0]:.1f}")
    header = f"{'loop':<18} {'wall s/step':>12} {'CPU s/step':>11} {'images/s (wall)':>16}  rounds (wall s/step)"
    print(header)
    print("-" * len(header))
    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:<18} {wall[name]:>12.3f} {cpu[name]:>11.3f} {batch / wall[name]:>16.1f}  "
              f"{', '.join(f'{w:.3f}' for w, _ in values)}")
    for other in ("plain", "plain, in memory"):
        print(f"engine overhead against '{other}': {100 * (wall['rdiff'] / wall[other] - 1):+.1f} % wall, "
              f"{100 * (cpu['rdiff'] / cpu[other] - 1):+.1f} % CPU")


if __name__ == "__main__":
    main()
