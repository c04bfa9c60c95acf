"""The held-out protocol of docs/benchmarks.md: a shipped phase 1 adapted on 10 pairs of a degradation family
it never trained on, scored on whole photographs it never saw.

    python benchmarks/unseen_degradation.py --modality fundus --data ../shared/data/fundus-idrid --out bench-unseen-fundus
    python benchmarks/unseen_degradation.py --modality oct --data ../shared/data/oct-kermany --out bench-unseen-oct

The simulators below are for **evaluation only**: nothing in rdiff trains or is tuned on them, and they are
a different family from the modalities' own (``rdiff degrade``):

- fundus: a smooth illumination field (random low-frequency waves, not a vignette), a uniform warm haze,
  *defocus* (a disc point-spread function of 0.4–1 % of the field's diameter, where rdiff's simulator blurs
  with a Gaussian of 0.1–0.4 %), a gamma change instead of a linear contrast loss, and sensor noise;
- OCT: speckle drawn in linear intensity at a dynamic range of its own, with grain from a smoothed complex
  field, an anisotropic axial/lateral blur, a gain and offset change and additive noise.

The images are the shipped checkpoint's own held-out subjects (its ``split.json``): the first 10 ``pairs``
files become the adaptation pairs, every ``test`` file a test pair; they are written as 8-bit PNG folders
(``lq/``, ``hq/``), as a user's real pairs would be, then ``rdiff bench --data`` runs with ``--pairs``,
``--test`` and ``--reconstruct-from`` the shipped phase 1 (three adaptation seeds). Its table has the
input, CLAHE, the colour regression fitted on the same 10 pairs, the shipped phase 1 alone (zero-shot,
every path) and the adapted model (every path: fast, sampling with 4, 1 and 50 steps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

ROOT = Path(__file__).resolve().parents[1]


# --- the evaluation-only simulators -----------------------------------------------------------------------------


def disc_kernel(radius: float) -> np.ndarray:
    """A normalised disc (defocus) point-spread function, its rim antialiased by 8× supersampling."""
    half = int(np.ceil(radius)) + 1
    fine = (np.arange(-half * 8, half * 8 + 8) + 0.5) / 8 - 0.5
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    inside = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    kernel = inside.reshape(2 * half + 1, 8, 2 * half + 1, 8).mean(axis=(1, 3))
    return kernel / kernel.sum()


def fundus_unseen(image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Illumination field, warm haze, defocus, gamma and noise inside the field of view (H×W×3 in [0, 1])."""
    height, width = roi.shape
    rows, cols = np.nonzero(roi)
    diameter = max(np.ptp(rows), np.ptp(cols)) + 1 if rows.size else max(height, width)
    yy, xx = np.mgrid[0:height, 0:width] / diameter
    log_field = np.zeros((height, width))
    for _ in range(3):  # three random low-frequency waves, up to about one cycle across the field
        angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi)
        log_field += rng.uniform(0.08, 0.18) * np.cos(2 * np.pi * frequency * (np.cos(angle) * yy + np.sin(angle) * xx) + phase)
    gain = rng.uniform(0.75, 1.1)
    out = image * (gain * np.exp(log_field))[..., None]
    density, airlight = rng.uniform(0.1, 0.3), rng.uniform(0.55, 0.8)
    out = out * (1 - density) + density * airlight * np.array([1.0, 0.82, 0.6])
    radius = rng.uniform(0.004, 0.010) * diameter
    kernel = disc_kernel(radius)
    out = np.stack([fftconvolve(out[..., c], kernel, mode="same") for c in range(3)], axis=-1)
    gamma = rng.uniform(0.8, 1.3)
    out = np.clip(out, 0, 1) ** gamma
    read, shot = rng.uniform(0.004, 0.015), rng.uniform(0.0, 0.02)
    out = out + rng.standard_normal(out.shape) * np.sqrt(read**2 + shot**2 * out)
    out = np.where(roi[..., None], np.clip(out, 0, 1), image)
    return out.astype(np.float32), {"gain": gain, "haze": density, "airlight": airlight, "defocus_radius": radius / diameter,
                                    "gamma": gamma, "read": read, "shot": shot}


def oct_unseen(image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Speckle in linear intensity, anisotropic blur, gain/offset and noise (H×W×1 in [0, 1])."""
    display = image[..., 0].astype(np.float64)
    dynamic_range = rng.uniform(35.0, 50.0)  # dB shown between black and white
    intensity = 10 ** ((display - 1) * dynamic_range / 10)
    grain = (rng.uniform(0.6, 1.2), rng.uniform(0.8, 1.6))  # axial, lateral σ of the speckle grain (px)
    field = gaussian_filter(rng.standard_normal(display.shape), grain) + 1j * gaussian_filter(rng.standard_normal(display.shape), grain)
    speckle = np.abs(field) ** 2
    speckle /= speckle.mean()
    looks = rng.uniform(1.0, 3.0)  # a few looks averaged in, as compounding would
    speckle = speckle ** (1 / np.sqrt(looks))
    speckle /= speckle.mean()
    blur = (rng.uniform(0.5, 1.2), rng.uniform(1.0, 2.0))
    intensity = gaussian_filter(intensity * speckle, blur)
    out = 1 + 10 * np.log10(np.maximum(intensity, 1e-12)) / dynamic_range
    gain, offset, noise = rng.uniform(0.8, 1.0), rng.uniform(-0.02, 0.06), rng.uniform(0.01, 0.03)
    out = gain * np.clip(out, 0, 1) + offset + noise * rng.standard_normal(out.shape)
    return np.clip(out, 0, 1)[..., None].astype(np.float32), {
        "dynamic_range_db": dynamic_range, "speckle_grain": list(grain), "looks": looks, "blur": list(blur),
        "gain": gain, "offset": offset, "noise": noise}


SIMULATORS = {"fundus": fundus_unseen, "oct": oct_unseen}


# --- the pairs and the run ----------------------------------------------------------------------------------------


def write_pairs(modality, files: list[Path], folder: Path, simulator, seed: int, resize: int) -> None:
    """``folder/lq`` and ``folder/hq`` as 8-bit PNG at the working scale, one seed per file."""
    from skimage.io import imsave

    from rdiff.data import resize_longest

    for part in ("lq", "hq"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    params = {}
    for index, path in enumerate(files):
        clean = resize_longest(modality.read_stack(path)[0], resize)
        clean = np.round(clean * 255) / 255  # the clean target as it is written
        degraded, params[path.name] = simulator(clean, modality.roi(clean), np.random.default_rng([seed, index]))
        for part, image in (("lq", degraded), ("hq", clean)):
            pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
            imsave(folder / part / f"{path.stem}.png", pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                   check_contrast=False)
    (folder / "params.json").write_text(json.dumps(params, indent=1, default=float))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", required=True, choices=sorted(SIMULATORS))
    parser.add_argument("--data", required=True, help="the folder the shipped checkpoint was split from")
    parser.add_argument("--backbone", default="ldm-unet")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--phase1", help="a phase-1 run or checkpoint folder with split.json (default: the shipped one)")
    parser.add_argument("--pairs", type=int, default=10, help="adaptation pairs (default 10)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sample-steps", default="4,1,50", help="sampling step counts scored (default 4,1,50)")
    parser.add_argument("--out", required=True)
    args, extra = parser.parse_known_args(argv)  # anything else goes to rdiff bench (e.g. --set KEY=VALUE)

    import rdiff

    modality = rdiff.create_modality(args.modality)
    shipped = Path(args.phase1 or ROOT / "plugins" / f"rdiff_{args.backbone.replace('-', '_')}" / "pretrained"
                   / f"{args.preset}-{args.modality}")
    split = json.loads((shipped / "split.json").read_text())
    resize = int(rdiff.load_run(str(shipped)).config.train.resize)
    out = Path(args.out)
    for name, files, seed in (("pairs", split["pairs"][:args.pairs], 1), ("test", split["test"], 2)):
        if not (out / name / "params.json").is_file():
            write_pairs(modality, [Path(args.data) / f for f in files], out / name, SIMULATORS[args.modality], seed, resize)
    steps = ",".join(str(int(k)) for k in args.sample_steps.split(","))
    command = ["rdiff", "bench", "--data", args.data, "--modality", args.modality, "--backbones", args.backbone,
               "--preset", args.preset, "--pairs", str(out / "pairs"), "--test", str(out / "test"),
               "--reconstruct-from", str(shipped), "--adapt-steps", "preset", "--seeds", str(args.seeds),
               "--set", f"eval.sample_steps=[{steps}]", "--out", str(out / "bench"), *extra]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
