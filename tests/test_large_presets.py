"""The presets researchers use on GPUs (base, paper) run for real on the CPU: one optimiser step of every
phase-1 stage, one adaptation step, evaluation of one crop at the preset's own crop size (batch 1),
then one enhanced tile on the fast and the sampling paths (2 DDIM steps). Slow: 2-15 minutes per preset
on one core; `pytest -m slow` runs them, and so does CI (`.ci/run`). `-k "not large_preset"` leaves them out.

float32 for every preset; bf16 (train.mixed_precision=bf16, enhancement in bfloat16) for cnn-ae base on a
CPU with native bf16 arithmetic (AVX512-BF16/AMX: faster than float32 there; emulated, 10-17× slower, so
skipped). RDIFF_TEST_BF16=1 runs every preset in bf16 too. Set RDIFF_LARGE_PRESETS_LOG=FILE to append
one JSON line per run (seconds per step, peak memory): the numbers of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

LARGE = [("cnn-ae", "base", 256), ("dit", "base", 256), ("ldm-unet", "base", 256), ("ldm-unet", "paper", 512)]
STAGES = {"cnn-ae": ("autoencoder",), "dit": ("autoencoder", "denoiser"), "ldm-unet": ("autoencoder", "denoiser")}


def one_step(backbone: str) -> list[str]:
    """One step of everything, one crop, batch 1: the overrides docs/benchmarks.md shows."""
    return [*(f"train.steps.{stage}=1" for stage in STAGES[backbone]), "train.adapt_steps=1",
            "train.batch_size=1", "train.adapt_batch_size=1", "train.pairs=1", "train.val_pairs=1", "eval.crops=1",
            "eval.sample_steps=[2]"]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# runs `rdiff ARGS` and reports the process's own peak resident memory on stderr: VmHWM (ru_maxrss would
# start at the size of the pytest process it was started from, which Linux carries across exec)
_PEAK = ("import resource, sys\nfrom rdiff.cli import main\ncode = main(sys.argv[1:])\n"
         "try:\n    peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
         "except (OSError, StopIteration):\n    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
         "print('PEAK_KIB', peak, file=sys.stderr)\nsys.exit(code)")


def rdiff(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_KIB")]
    return done, time.perf_counter() - started, (int(peak[-1]) / 1024 if peak else float("nan"))


@pytest.fixture(scope="module")
def fundus_folder(tmp_path_factory) -> Path:
    """scikit-image's fundus photograph at its native 1411² and its mirror image: two files, so one trains
    and one is held out, each large enough for the paper's 512-px crops (the embedded sample is not)."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("fundus")
    retina = data.retina()
    Image.fromarray(retina).save(folder / "retina.png")
    Image.fromarray(np.ascontiguousarray(retina[:, ::-1])).save(folder / "retina-mirrored.png")
    return folder


def test_a_preset_too_large_for_the_embedded_sample_stops_before_training(tmp_path):
    """The base preset's 256-px crops do not fit the embedded photograph's held-out rows: said at once,
    with the data it needs, instead of after phase 1 and phase 2 have run."""
    from rdiff.cli import main

    import contextlib
    import io

    started = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--preset", "base", "--out", str(tmp_path / "run")])
    assert code == 2
    message = err.getvalue()
    assert "embedded fundus heldout sample 0' is 512×230 px, smaller than the 256-px training crops" in message
    assert "give --data FOLDER with images of at least 256 px" in message
    assert not (tmp_path / "run").exists()  # nothing was trained or written
    assert time.perf_counter() - started < 60


def test_every_preset_passes_the_checks_made_before_training():
    """What the engine checks once the backbone is built (crop multiple, stages, evaluation path), for every
    preset of every built-in backbone, on the meta device: the paper preset's `eval.path: sample` was
    refused here, so it never started."""
    import torch

    from rdiff.plugins import plugins
    from rdiff.preflight import backbone_problems
    from rdiff.registry import create_backbone, resolve_config

    checked = []
    for backbone in STAGES:
        for preset in plugins().get("backbone", backbone).presets:
            config = resolve_config([{"backbone": backbone, "preset": preset}])
            with torch.device("meta"):
                model = create_backbone(backbone, preset=None, channels=3, **config.model)
            assert backbone_problems(config, model) == [], (backbone, preset)
            checked.append(f"{backbone} {preset}")
    assert {"ldm-unet paper", "ldm-unet base", "dit base", "cnn-ae base"} <= set(checked)


def test_the_sample_path_is_scored_at_the_first_sample_steps():
    """`eval.path: sample` (the paper preset's) names the sampling path at the first of eval.sample_steps,
    as `rdiff enhance --path sample` takes by default: the report's 'enhanced' is that path."""
    import torch

    import rdiff
    from rdiff.evaluation import default_name, evaluate, heldout_pairs
    from rdiff.registry import resolve_config

    config = resolve_config([{"backbone": "ldm-unet", "preset": "tiny",
                              "eval": {"crops": 1, "path": "sample", "sample_steps": [2]}}])
    modality = rdiff.create_modality("fundus")
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny")
    assert default_name(backbone, config) == "ddim2"
    report = evaluate(backbone, modality, heldout_pairs(modality, config), config=config, device=torch.device("cpu"))
    assert report["default_path"] == "ddim2" and report["enhanced"] == report["paths"]["ddim2"]


def _enhance_one_tile(run: Path, tmp_path: Path, size: int, cwd: Path, sampling: bool,
                      dtype: str = "float32") -> dict[str, dict[str, float]]:
    """One tile of the preset's crop size through the fast and (for diffusion backbones) the sampling path
    (2 DDIM steps: the paper's 50 would take about 25 times the 2-step UNet time)."""
    from PIL import Image
    from skimage import data
    from skimage.transform import resize

    photo = (resize(data.retina(), (size, size), anti_aliasing=True) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "tile.png")
    seconds, peaks = {}, {}
    for path, extra in (("fast", []), ("sample", ["--steps", "2"]))[:2 if sampling else 1]:
        out = tmp_path / f"enhanced-{path}"
        done, elapsed, peak = rdiff("enhance", "--run", str(run), str(tmp_path / "tile.png"), "--out", str(out),
                                 "--path", path, "--tile", str(size), "--dtype", dtype, *extra, cwd=cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        written = sorted(out.glob("tile*.png"))
        assert written, f"no enhanced file in {out}"
        enhanced = np.asarray(Image.open(written[0]))
        assert enhanced.shape == photo.shape
        assert np.isfinite(enhanced).all() and enhanced.std() > 0  # a picture, not a constant
        seconds[path], peaks[path] = round(elapsed, 1), round(peak)
    return {"s": seconds, "peak_mib": peaks}


def _check_and_log(backbone: str, preset: str, size: int, precision: str, run: Path, done, elapsed: float,
                   peak_mib: float, enhanced: dict[str, dict[str, float]]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["preset"] == preset and report["eval"]["crops"] == 1
    for name, metrics in report["eval"]["paths"].items():
        assert np.isfinite(metrics["psnr"]), (name, metrics)
    from rdiff.config import load_yaml

    train = load_yaml(run / "config.yaml")["train"]
    assert train["image_size"] == size and train["mixed_precision"] == precision  # the preset's own crops
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {f"{r['phase']}:{r['stage']}": round(1 / r["images_per_s"], 1) for r in records if "images_per_s" in r}
    expected = {"adapt:adapt"} | {f"reconstruct:{s}" for s in STAGES[backbone]}
    assert set(steps) == expected, steps  # one optimiser step of every stage
    log = os.environ.get("RDIFF_LARGE_PRESETS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"backbone": backbone, "preset": preset, "precision": precision,
                                "params": report["params"]["total"], "s_per_step": steps,
                                "time_s": report["time_s"], "wall_s": round(elapsed, 1),
                                "peak_mib": round(peak_mib), "enhance_tile_s": enhanced.get("s"),
                                "enhance_peak_mib": enhanced.get("peak_mib")}) + "\n")


def _bf16(backbone: str, preset: str) -> list:
    marks = [pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 arithmetic "
                                                          "(emulated, bf16 autocast was 10-17x slower than float32)")]
    if (backbone, preset) != ("cnn-ae", "base"):
        marks.append(pytest.mark.skipif(os.environ.get("RDIFF_TEST_BF16") != "1",
                                        reason="bf16 runs for cnn-ae base; RDIFF_TEST_BF16=1 runs every preset"))
    return marks


CASES = [pytest.param(b, p, size, precision, id=f"{b}-{p}-{'fp32' if precision == 'no' else precision}",
                      marks=_bf16(b, p) if precision == "bf16" else [])
         for precision in ("no", "bf16") for b, p, size in LARGE]


@pytest.mark.slow
@pytest.mark.parametrize("backbone, preset, size, precision", CASES)
def test_large_preset_trains_evaluates_and_enhances_on_cpu(backbone, preset, size, precision, fundus_folder, tmp_path):
    run = tmp_path / "run"
    sets = [f"--set={s}" for s in [*one_step(backbone), f"train.mixed_precision={precision}"]]
    done, elapsed, peak = rdiff("train", "--backbone", backbone, "--modality", "fundus", "--preset", preset,
                                "--data", str(fundus_folder), "--out", str(run), *sets, cwd=tmp_path)
    sampling = backbone != "cnn-ae"  # the one backbone without a diffusion model: no 'sample' path
    dtype = "bfloat16" if precision == "bf16" else "float32"
    enhanced = _enhance_one_tile(run, tmp_path, size, tmp_path, sampling, dtype) if done.returncode == 0 else {}
    _check_and_log(backbone, preset, size, precision, run, done, elapsed, peak, enhanced)
