"""Rebuild a pretrained phase 1 that ships inside rdiff, from a folder of real images.

    python tools/pretrain.py --backbone ldm-unet --modality fundus --data ../shared/data/fundus-idrid
    python tools/pretrain.py --backbone ldm-unet --modality oct --data ../shared/data/oct-kermany

What it does, in order (each step is skipped when its output exists, so a killed run continues where it
stopped; the training itself resumes from its last checkpoint):

1. **split** the folder by subject with :func:`rdiff.data.split_by_subject` — the same split ``rdiff bench
   --data`` uses — and link the ``train`` part into ``OUT/train/``. The ``pairs`` and ``test`` subjects are
   never seen by phase 1, so the benchmark and the demo score the shipped weights on images they never saw.
2. **train** ``rdiff reconstruct`` on ``OUT/train/`` (progress bars with ETA; ``--resume`` after a kill).
   ``--keep STAGE`` starts from the shipped checkpoint's network of that stage instead of training it
   again (e.g. ``--keep autoencoder`` retrains only the denoiser on the shipped autoencoder); ``--warm STAGE``
   starts that stage from the shipped network and trains it further (a changed loss, without starting over).
3. **measure** the fidelity ceiling: every ``test`` image, whole, at the run's working scale, through the
   phase-1 model (``D(E(x))``), scored inside the region of interest with the modality's metrics, next to
   the bicubic round trip through an image of the latent's size.
4. **export** the phase-1 networks (no optimiser state) with config.yaml, the split and a model card into
   ``plugins/rdiff_<backbone>/pretrained/<preset>-<modality>/``, where ``rdiff list pretrained`` finds them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The training budget of the shipped checkpoints: about an hour and a half of one CPU core per checkpoint
# (the tiny preset's detail term keeps improving the finest vessels well past the 1,900 steps it once had;
# the denoiser's held-out gain was still rising at 6,000 steps).
STEPS = {"autoencoder": 4000, "corrector": 1500, "denoiser": 14000}

LICENCES = {
    "fundus": "IDRiD (Indian Diabetic Retinopathy Image Dataset; Porwal et al., Data 2018), CC BY 4.0",
    "oct": "Kermany et al., \"Labeled OCT and Chest X-Ray Images\", Mendeley Data (2018), CC BY 4.0",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ldm-unet")
    parser.add_argument("--modality", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--data", required=True, help="folder of real clean images (searched recursively)")
    parser.add_argument("--out", help="work folder (default runs/pretrain-BACKBONE-PRESET-MODALITY)")
    parser.add_argument("--steps", nargs="*", default=[], metavar="STAGE=N",
                        help=f"steps per phase-1 stage (default {' '.join(f'{k}={v}' for k, v in STEPS.items())})")
    parser.add_argument("--keep", nargs="*", default=[], metavar="STAGE",
                        help="phase-1 stages whose shipped networks are kept (not trained again)")
    parser.add_argument("--warm", nargs="*", default=[], metavar="STAGE",
                        help="phase-1 stages that start from the shipped network and train further (needs --keep "
                             "for the stages before them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration key of the phase-1 run, as for rdiff reconstruct (repeatable), e.g. "
                             "--set model.unet_channels=[32,32,64]")
    parser.add_argument("--source", help="the checkpoint --keep and --warm start from (default: the shipped one)")
    parser.add_argument("--export", default="plugins", help="'plugins' (into the backbone's plugin), a folder, "
                                                            "or 'no'")
    args = parser.parse_args(argv)

    import rdiff
    from rdiff.data import split_by_subject
    from rdiff.images import list_images

    name = f"{args.preset}-{args.modality}"
    out = Path(args.out or f"runs/pretrain-{args.backbone}-{name}")
    out.mkdir(parents=True, exist_ok=True)
    modality = rdiff.create_modality(args.modality)
    stages = rdiff.create_backbone(args.backbone, preset=args.preset, channels=modality.channels, **model_keys(args)).stages
    steps = {k: v for k, v in dict(STEPS, **{k: int(v) for k, v in (item.split("=", 1) for item in args.steps)}).items()
             if k in stages}

    # 1. split
    split_file = out / "split.json"
    if not split_file.is_file():
        files = list_images(args.data, modality.suffixes)
        split = split_by_subject(modality, files)
        train_dir = out / "train"
        train_dir.mkdir(exist_ok=True)
        for path in split["train"]:
            link = train_dir / path.relative_to(args.data)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(path.resolve(), link)
        split_file.write_text(json.dumps({k: [str(Path(p).relative_to(args.data)) for p in v]
                                          for k, v in split.items()}, indent=1))
    split = json.loads(split_file.read_text())
    print(f"split by subject: {', '.join(f'{len(v)} {k}' for k, v in split.items())}", flush=True)

    # 2. train
    run_dir = out / "run"
    shipped = Path(args.source) if args.source else ROOT / "plugins" / f"rdiff_{args.backbone.replace('-', '_')}" / "pretrained" / name
    if args.keep and not (run_dir / "reconstruct" / "stages.json").is_file():
        keep_shipped_stages(args, modality.channels, shipped, run_dir / "reconstruct")
    command = ["rdiff", "reconstruct", "--backbone", args.backbone, "--modality", args.modality,
               "--preset", args.preset, "--data", str(out / "train"), "--out", str(run_dir),
               *[a for stage, n in steps.items() for a in ("--set", f"train.steps.{stage}={n}")],
               *[a for item in args.set for a in ("--set", item)]]
    if (run_dir / "config.yaml").is_file():
        command.append("--resume")
    started = time.time()
    if not (run_dir / "report.json").is_file():
        print("$", " ".join(command), flush=True)
        code = subprocess.call(command)
        if code:
            return code
    train_seconds = time.time() - started

    # 3. measure
    ceiling_file = out / "ceiling.json"
    if not ceiling_file.is_file():
        tests = [Path(args.data) / p for p in split["test"]]
        ceiling = measure_ceiling(rdiff.load_run(run_dir), tests)
        report = json.loads((run_dir / "report.json").read_text())
        # the recorded phase-1 time adds up over resumes; this call's own time is a fallback
        ceiling["train_seconds"] = round(float((report.get("time_s") or {}).get("reconstruct", train_seconds)))
        ceiling["train_threads"] = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
        ceiling_file.write_text(json.dumps(ceiling, indent=1))
    ceiling = json.loads(ceiling_file.read_text())
    print(json.dumps(ceiling, indent=1))

    # 4. export
    if args.export != "no":
        package = ROOT / "plugins" / f"rdiff_{args.backbone.replace('-', '_')}" / "pretrained"
        target = (package if args.export == "plugins" else Path(args.export)) / name
        export(run_dir, target, args=args, steps=steps, split=split, ceiling=ceiling, command=command)
        print(f"exported to {target}")
    return 0


def model_keys(args) -> dict:
    """The ``--set model.KEY=VALUE`` items as keyword arguments of :func:`rdiff.create_backbone`."""
    import yaml

    items = (item.split("=", 1) for item in args.set if "=" in item)
    return {key[len("model."):]: yaml.safe_load(value) for key, value in items if key.startswith("model.")}


def keep_shipped_stages(args, channels: int, shipped: Path, reconstruct: Path) -> None:
    """Seed ``reconstruct/`` with the shipped networks of the ``--keep`` stages, marked done, the shipped
    networks of the ``--warm`` stages (trained further) and freshly initialised networks for the others
    (each stage trains the network of its name)."""
    import rdiff

    from rdiff.checkpoints import save_network

    backbone = rdiff.create_backbone(args.backbone, preset=args.preset, channels=channels, **model_keys(args))
    unknown = [stage for stage in [*args.keep, *args.warm] if stage not in backbone.stages]
    if unknown:
        raise SystemExit(f"--keep: '{unknown[0]}' is not a stage of {args.backbone} ({', '.join(backbone.stages)})")
    for network, module in backbone.networks().items():
        if network in args.keep or network in args.warm:
            shutil.copytree(shipped / "reconstruct" / network, reconstruct / network)
        else:
            save_network(module, reconstruct / network)
    (reconstruct / "stages.json").write_text(json.dumps({"done": [s for s in backbone.stages if s in args.keep]}))


def measure_ceiling(run, tests: list[Path]) -> dict:
    """PSNR/SSIM/structure of whole clean test images through the phase-1 model, and of the bicubic round
    trip through an image of the latent's size, at the run's working scale, inside the roi."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from rdiff.data import resize_longest, to_tensor
    from rdiff.evaluation import local_metrics

    # how much smaller the latent is than the image: the bicubic row goes through an image that size
    factor = run.backbone.size_multiple // run.backbone.latent_shape(run.backbone.size_multiple,
                                                                     run.backbone.size_multiple)[1]
    rows = {"phase1": local_metrics(run.modality.metrics()), "bicubic": local_metrics(run.modality.metrics())}
    for path in tests:
        for image in run.modality.read_stack(path):
            image = resize_longest(image, run.config.train.resize)
            roi = run.modality.roi(image)
            outputs = {"phase1": run.enhance(image, roi=roi, path="fast")}
            x = torch.from_numpy(image).permute(2, 0, 1)[None]
            small = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
            outputs["bicubic"] = F.interpolate(small, size=x.shape[-2:], mode="bicubic").clamp(0, 1)[0].permute(1, 2, 0).numpy()
            for key, out in outputs.items():
                rows[key].update(to_tensor(np.ascontiguousarray(out))[None], to_tensor(image)[None], to_tensor(roi)[None])
    return {"images": len(tests), "scale": run.config.train.resize,
            **{key: {k: round(float(v), 4) for k, v in m.compute().items()} for key, m in rows.items()}}


def export(run_dir: Path, target: Path, *, args, steps, split, ceiling, command) -> None:
    """Copy the phase-1 networks (not the resumable checkpoint) and write the model card."""
    if target.exists():
        shutil.rmtree(target)
    (target / "reconstruct").mkdir(parents=True)
    source = run_dir / "reconstruct"
    for entry in source.iterdir():
        if entry.name.startswith("checkpoint"):  # resumable state (and its previous copy) stays behind
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / "reconstruct" / entry.name)
    # the configuration without this machine's paths: an adapted run takes its data from the user
    import rdiff
    from rdiff.config import load_yaml
    import yaml

    config = load_yaml(run_dir / "config.yaml")
    config.update(data=None, pairs=None, out=None, reconstruct_from=None)
    # how the checkpoint enhances by default is the preset's of today (evaluating it alone: rdiff.load_run)
    config["eval"].update(rdiff.get_preset(args.backbone, args.preset).get("eval", {}))
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (target / "split.json").write_text(json.dumps(split, indent=1))
    (target / "ceiling.json").write_text(json.dumps(ceiling, indent=1))
    recorded = run_dir / "manifest.json"
    if recorded.is_file():  # sizes and hashes of the networks, checked whenever they are loaded
        files = {k: v for k, v in json.loads(recorded.read_text()).get("files", {}).items() if k.startswith("reconstruct/")}
        (target / "manifest.json").write_text(json.dumps({"files": files}, indent=1))
    size = sum(p.stat().st_size for p in target.rglob("*.safetensors"))
    shown = " ".join(["python", "tools/pretrain.py", "--backbone", args.backbone, "--modality", args.modality,
                      "--preset", args.preset, "--data", "DIR", *(["--keep", *args.keep] if args.keep else []),
                      *(["--warm", *args.warm] if args.warm else []), *[a for item in args.set for a in ("--set", item)]])
    metrics = sorted(ceiling["phase1"])
    notes = [f"the {', '.join(args.keep)} kept from the previous release" if args.keep else "",
             f"the {', '.join(args.warm)} started from the previous release's and trained these steps further"
             if args.warm else ""]
    kept = f" ({'; '.join(n for n in notes if n)}; the time is this run's)" if any(notes) else ""
    model = config["model"]
    denoiser = (f"prediction `{model.get('prediction')}`, pretext `{model.get('pretext')}` (phase 1 conditions on "
                f"the modality's degraded copies), sampling from `sample_strength` {model.get('sample_strength')} of the schedule"
                if model.get("prediction") == "residual" else f"prediction `{model.get('prediction')}`, pretext `{model.get('pretext')}`")
    table = "\n".join([f"| | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|",
                       *[f"| {label} | {' | '.join(str(ceiling[key][m]) for m in metrics)} |"
                         for key, label in (("phase1", "phase 1, as `rdiff enhance --path fast`"), ("bicubic", "bicubic round trip"))
                         if key in ceiling]])
    (target / "MODEL_CARD.md").write_text(f"""# {args.backbone} · {args.preset} · {args.modality}: pretrained phase 1

Phase-1 networks (autoencoder and denoiser) of the `{args.backbone}` backbone at the `{args.preset}` preset,
trained self-supervised on clean {args.modality} images. Adapt them to a dataset and degradation with
`rdiff adapt --from pretrained:{args.backbone}.{args.preset}-{args.modality}` (see docs/pretrained.md).

- **Data:** {LICENCES.get(args.modality, args.data)}. {len(split['train'])} training files; the
  {len(split['pairs'])} `pairs` and {len(split['test'])} `test` files of `split.json` (split by subject with
  `rdiff.data.split_by_subject`) were never trained on. Attribution as the licence requires: the weights
  are derived from that dataset.
- **Reproduce:** `{shown}` (DIR: the dataset's folder), which runs
  `{' '.join(command[:command.index('--data')])} --data OUT/train ...` with the steps below.
- **Steps:** {', '.join(f'{k} {v}' for k, v in steps.items())}; trained in {ceiling.get('train_seconds', 0) / 60:.0f} min
  on {ceiling.get('train_threads', 2)} CPU thread(s){kept}.
- **Denoiser:** {denoiser}.
- **Size:** {size / 1e6:.1f} MB of safetensors.
- **Fidelity ceiling** on the {ceiling['images']} held-out `test` files, whole, at the working scale
  (longest side {ceiling['scale']} px), inside the region of interest:

{table}
""")


if __name__ == "__main__":
    sys.exit(main())
