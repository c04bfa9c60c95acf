"""``rdiff bench --data DIR``: the benchmark on a user's own folder of real images.

    rdiff bench --data DIR --modality fundus [--backbones ldm-unet] [--adaptors residual] [--preset tiny]
                [--pairs DIR] [--test DIR] [--reconstruct-from RUN] [--reconstruct-steps N|preset]
                [--adapt-steps N|preset] [--seeds N] [--scratch] [--set K=V ...] [--out DIR]

1. **Split** DIR's files three ways by subject with :func:`rdiff.data.split_by_subject` (the file's stem, or
   the patient where the modality's names carry it): ``train`` (phase 1), ``pairs`` (adaptation), ``test``
   (scoring). The split is written to ``OUT/split.json``. No image whose subject was trained on, in either
   phase, is ever scored.
2. **Phase 1** on the ``train`` part (a folder of links, ``OUT/train/``), once per backbone, or an existing
   phase-1 run (``--reconstruct-from RUN``). A finished phase-1 run in ``OUT/runs/`` is reused.
3. **Adaptation**, once per seed and adaptor, referencing that phase 1: on real pairs (``--pairs DIR`` with
   ``lq/`` and ``hq/``) or, by default, on crops of the ``pairs`` part degraded on the fly by the modality's
   simulator.
4. **Test set**: real pairs (``--test DIR``) or every ``test`` image degraded by the simulator with a fixed
   seed per image. Every test image is scored *whole*, at the run's working scale (``train.resize``), inside
   the region of interest, with the modality's metrics.
5. **Rows**: ``input``; ``clahe``; ``colour regression`` (a global colour/intensity map fitted by least
   squares on the adaptation pairs, :func:`fit_colour_map`); ``reconstruct-only``; ``adapted`` for every
   enhancement path; ``scratch`` (with ``--scratch``); and two ceilings: ``ceiling D(E(hq))`` (the clean test
   images through the phase-1 model) and ``bicubic round trip`` (through an image of the latent's size).
6. **Output**: ``OUT/results.json``, ``OUT/results.md`` (printed at the end too), ``OUT/grid.png``.

:func:`evaluate_run` scores a run on the ``test`` part of the same split (from Python, or
``rdiff bench --data DIR --run RUN``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rdiff.errors import UserError

if TYPE_CHECKING:
    import numpy as np

GRID_IMAGES = 3  # test images shown in grid.png
DEFAULT_BACKBONE = "ldm-unet"
# adaptation and scratch units finish by writing this file; its presence marks a unit that can be reused
_DONE = "report.json"


# --- settings ---------------------------------------------------------------------------------------------------


@dataclass
class RealSettings:
    """What the flags of ``rdiff bench --data`` say."""

    data: str
    modality: str
    backbones: list[str] = field(default_factory=lambda: [DEFAULT_BACKBONE])
    adaptors: list[str] = field(default_factory=lambda: ["residual"])
    preset: str = "tiny"
    pairs: str | None = None  # real adaptation pairs (lq/, hq/)
    test: str | None = None  # real test pairs (lq/, hq/)
    reconstruct_from: str | None = None  # an existing phase-1 run
    reconstruct_steps: int | None = None  # None: the preset's own
    adapt_steps: int | None = None
    batch_size: int | None = None
    seeds: int = 3
    scratch: bool = False
    scratch_lr: float | None = None
    uncertainty_samples: int = 4  # the hallucination report's samples per test image (rdiff_bench.hallucination)
    out: str = "runs/bench-real"
    force: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


def settings_from_args(args: argparse.Namespace) -> RealSettings:
    """The settings of ``rdiff bench --data``, every name checked before anything runs."""
    from rdiff.config import parse_set
    from rdiff.plugins import plugins

    modality = getattr(args, "modality", None)
    if not modality and args.modalities:
        names = [n.strip() for n in args.modalities.split(",") if n.strip()]
        if len(names) != 1:
            raise UserError(f"--data holds one modality; name it with --modality, not --modalities "
                            f"'{args.modalities}'.")
        modality = names[0]
    if not modality:
        raise UserError("--data needs --modality NAME (the modality of the images in the folder).")
    plugins().get("modality", modality)  # an unknown name stops here with the installed ones
    backbones = _names(args.backbones or DEFAULT_BACKBONE, "--backbones")
    adaptors = _names(args.adaptors, "--adaptors")
    for name in backbones:
        plugins().get("backbone", name)
    for name in adaptors:
        plugins().get("adaptor", name)
    for flag in ("seeds", "reconstruct_steps", "adapt_steps", "batch_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {value}.")
    overrides = parse_set(args.set)
    for key in ("backbone", "modality", "adaptor", "preset", "seed", "out", "reconstruct_from", "data", "pairs"):
        if key in overrides:
            raise UserError(f"--set {key}=... is chosen by the bench itself; use its own flags "
                            f"(--backbones, --modality, --adaptors, --preset, --seeds, --out, --reconstruct-from, "
                            f"--data, --pairs).")
    data = Path(args.data)
    if not data.is_dir():
        raise UserError(f"--data '{data}' does not exist or is not a folder.")
    for flag, folder in (("--pairs", args.pairs), ("--test", args.test)):
        if folder is not None:
            for sub in ("lq", "hq"):
                if not (Path(folder) / sub).is_dir():
                    raise UserError(f"{flag} folder '{folder}' needs the sub-folders lq/ and hq/; "
                                    f"'{Path(folder) / sub}' is missing.")
    if args.reconstruct_from is not None and not (Path(args.reconstruct_from) / "config.yaml").is_file():
        raise UserError(f"--reconstruct-from '{args.reconstruct_from}' is not an rdiff run directory "
                        f"(it has no config.yaml).")
    if args.reconstruct_from is not None and len(backbones) > 1:
        raise UserError("--reconstruct-from gives one phase-1 run, so --backbones can name only its backbone.")
    out = args.out if args.out != "runs/bench" else "runs/bench-real"  # the synthetic bench's default folder
    from rdiff_bench.hallucination import DEFAULT_SAMPLES, check_samples

    uncertainty_samples = getattr(args, "uncertainty_samples", DEFAULT_SAMPLES)
    check_samples(uncertainty_samples)
    return RealSettings(data=str(data), modality=modality, backbones=backbones, adaptors=adaptors,
                        preset=args.preset, pairs=args.pairs, test=args.test,
                        reconstruct_from=args.reconstruct_from, reconstruct_steps=args.reconstruct_steps,
                        adapt_steps=args.adapt_steps, batch_size=args.batch_size, seeds=args.seeds,
                        scratch=args.scratch, scratch_lr=args.scratch_lr, uncertainty_samples=uncertainty_samples,
                        out=out, force=args.force, overrides=overrides)


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag} needs at least one name, got '{text}'.")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags ``rdiff bench`` takes only with ``--data`` (``--modality``, ``--pairs`` and ``--scratch`` are
    declared so argparse does not read them as abbreviations of ``--modalities``, ``--pairs-counts`` and
    ``--scratch-lr``)."""
    g = p.add_argument_group("real-data benchmark (with --data)")
    g.add_argument("--data", help="folder of real clean images: split by subject into phase-1 train / adaptation "
                                  "pairs / test, test images scored whole (see docs/benchmarks.md)")
    g.add_argument("--modality", help="the modality of the --data images (instead of --modalities)")
    g.add_argument("--pairs", help="folder with lq/ and hq/: real adaptation pairs (default: the split's pairs part "
                                   "degraded on the fly by the modality's simulator)")
    g.add_argument("--test", help="folder with lq/ and hq/: real test pairs (default: the split's test part, "
                                  "degraded by the simulator with a fixed seed per image)")
    g.add_argument("--reconstruct-from", metavar="RUN", help="reuse this finished phase-1 run instead of training one")
    g.add_argument("--scratch", action="store_true",
                   help="also train the backbone from scratch on the pairs with the adaptation budget")
    g.add_argument("--run", metavar="RUN", help="score this finished run on the test part of --data's split "
                                                "(whole images, as the benchmark scores them) and print its table")


# --- the split --------------------------------------------------------------------------------------------------


def split_folder(modality: Any, data: str | Path) -> dict[str, list[Path]]:
    """DIR's image files split by subject; an empty folder or an empty part is a UserError."""
    from rdiff.data import split_by_subject
    from rdiff.images import list_images

    files = list_images(data, modality.suffixes)
    split = split_by_subject(modality, files)
    empty = [name for name, part in split.items() if not part]
    if empty:
        subjects = len({modality.subject(p) for p in files})
        raise UserError(f"data folder '{data}' holds {len(files)} image file(s) of {subjects} subject(s), too few to "
                        f"split by subject into train, pairs and test (the {', '.join(empty)} part would be "
                        f"empty); at least 3 subjects are needed.")
    return split


def _link_folder(files: list[Path], root: Path, folder: Path) -> Path:
    """A folder of symbolic links to ``files`` (relative paths under ``root`` kept), as tools/pretrain.py makes."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for path in files:
        link = folder / path.relative_to(root)
        wanted.add(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and Path(os.readlink(link)) != path.resolve():
            link.unlink()
        if not link.is_symlink():
            os.symlink(path.resolve(), link)
    for stale in [p for p in folder.rglob("*") if p.is_symlink() and p not in wanted]:
        stale.unlink()  # a file that left this part (the folder's content changed): never train on it
    return folder


# --- the test set -----------------------------------------------------------------------------------------------


def real_pairs(modality: Any, folder: str, resize: int | None) -> list[Any]:
    """A folder's real pairs at the working scale (whole images)."""
    from rdiff.data import load_pair_folder

    return load_pair_folder(modality, folder, resize)


# --- whole-image scoring ----------------------------------------------------------------------------------------


def score_whole(modality: Any, pairs: list[Any], produce: Callable[[Any], np.ndarray], *, label: str = "",
                keep: int = 0) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The modality's metrics of ``produce(pair)`` against each whole ``pair.hq`` inside ``pair.roi``, overall
    and by degradation type; also the first ``keep`` outputs (for the grid)."""
    import numpy as np

    from tqdm.auto import tqdm

    from rdiff.data import to_tensor
    from rdiff.evaluation import local_metrics

    overall = local_metrics(modality.metrics())
    types: dict[str, Any] = {}
    kept: list[np.ndarray] = []
    shapes = set()
    for i, pair in enumerate(tqdm(pairs, desc=label or "scoring", leave=False, disable=len(pairs) < 4)):
        out = np.clip(np.asarray(produce(pair), dtype=np.float32), 0, 1)
        if out.shape != pair.hq.shape:
            raise RuntimeError(f"{label}: output of shape {out.shape} for an image of shape {pair.hq.shape}")
        shapes.add(out.shape[:2])
        pred, target, roi = to_tensor(out)[None], to_tensor(pair.hq)[None], to_tensor(pair.roi)[None]
        overall.update(pred, target, roi)
        for kind in pair.params.get("types", []):
            if kind not in types:
                types[kind] = local_metrics(modality.metrics())
            types[kind].update(pred, target, roi)
        if i < keep:
            kept.append(out)
    result: dict[str, Any] = {k: round(float(v), 4) for k, v in overall.compute().items()}
    result["images"] = len(pairs)
    result["sizes"] = sorted([list(s) for s in shapes])
    if types:
        result["by_type"] = {kind: {k: round(float(v), 4) for k, v in m.compute().items()}
                             for kind, m in sorted(types.items())}
    return result, kept


def enhancer(run: Any, options: dict[str, Any]) -> Callable[[Any], np.ndarray]:
    """``pair -> run.enhance(pair.lq)`` whole (tiled by the run's default tile), inside the pair's roi."""
    return lambda pair: run.enhance(pair.lq, roi=pair.roi, seed=0, **options)


def bicubic_round_trip(image: np.ndarray, factor: int) -> np.ndarray:
    """Down by ``factor`` with antialiased bicubic, then back to the image's size: a latent of the same size
    with no learning at all."""
    import numpy as np

    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    small = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic").clamp(0, 1)[0].permute(1, 2, 0).numpy()


def latent_factor(backbone: Any) -> int:
    """How much the backbone's latent is smaller than the image (the denoiser's own multiple taken out)."""
    denoiser = getattr(backbone, "denoiser_multiple", None)
    return max(1, backbone.size_multiple // max(1, denoiser() if callable(denoiser) else 1))


# --- the colour regression --------------------------------------------------------------------------------------


def colour_features(image: np.ndarray, channel: int) -> np.ndarray:
    """The regressors of output channel ``channel`` for every pixel: ``[1, r, g, b, x_c²]`` for colour
    images, ``[1, x, x²]`` for grey ones (``N×F``)."""
    import numpy as np

    pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
    own = pixels[:, channel:channel + 1]
    return np.concatenate([np.ones_like(own), pixels, own ** 2], axis=1)


def fit_colour_map(pairs: list[Any]) -> np.ndarray:
    """Least-squares weights ``W`` (``C×F``) with ``hq_c ≈ W_c · colour_features(lq, c)`` over the roi pixels
    of every pair: one global map, the same for every image."""
    import numpy as np

    channels = pairs[0].hq.shape[-1]
    weights = []
    for c in range(channels):
        a = np.concatenate([colour_features(p.lq, c)[p.roi.reshape(-1)] for p in pairs])
        b = np.concatenate([p.hq[..., c].reshape(-1)[p.roi.reshape(-1)] for p in pairs]).astype(np.float64)
        weights.append(np.linalg.lstsq(a, b, rcond=None)[0])
    return np.stack(weights)


def apply_colour_map(weights: np.ndarray, image: np.ndarray, roi: np.ndarray | None = None) -> np.ndarray:
    """The fitted map applied to ``image`` (clipped to [0, 1]); outside ``roi`` the input is kept."""
    import numpy as np

    out = np.stack([colour_features(image, c) @ weights[c] for c in range(image.shape[-1])], axis=-1)
    out = np.clip(out.reshape(image.shape), 0, 1).astype(np.float32)
    if roi is not None:
        out = np.where(roi[..., None], out, image)
    return out


# --- the benchmark ----------------------------------------------------------------------------------------------


def say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"rdiff bench: {message}")


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class RealBench:
    """One benchmark on one folder: the split, the runs (reused when finished), the scores, the report."""

    def __init__(self, settings: RealSettings):
        from rdiff.api import create_modality

        self.s = settings
        self.out = Path(settings.out)
        self.modality = create_modality(settings.modality)
        self.samples: dict[str, list[np.ndarray]] = {}  # row label -> the first test outputs (grid.png)
        self.notes: list[str] = []
        self.hallucinate = False  # whether adapted rows get the hallucination report (set by run())

    # -- configurations -------------------------------------------------------------------------------------
    def config(self, backbone: str, *layers: dict[str, Any], model: dict[str, Any] | None = None) -> Any:
        """A run's resolved configuration: the preset, ``model`` (a phase-1 run's networks), the bench's
        budget, ``--set``, then ``layers``."""
        from rdiff.registry import resolve_config

        s = self.s
        names = {"backbone": backbone, "modality": s.modality, "preset": s.preset, "adaptor": s.adaptors[0]}
        preset = resolve_config([names]).train
        budget: dict[str, Any] = {"train": {}}
        if s.reconstruct_steps is not None:
            budget["train"]["steps"] = {stage: s.reconstruct_steps for stage in preset.steps}
        if s.adapt_steps is not None:
            budget["train"]["adapt_steps"] = s.adapt_steps
        if s.batch_size is not None:
            budget["train"]["batch_size"] = s.batch_size
        return resolve_config([names, {"model": model or {}}, budget, s.overrides, *layers])

    # -- the whole benchmark --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from rdiff.config import to_dict

        started = time.perf_counter()
        s, modality = self.s, self.modality
        for backbone in s.backbones:  # a misspelt --set key stops here, before any scoring or training
            self.config(backbone)
        split = split_folder(modality, s.data)
        root = Path(s.data)
        from rdiff_bench.hallucination import skipped_line, unavailable

        skipped = skipped_line(s.uncertainty_samples, s.backbones)
        if skipped:
            say(skipped)
        self.hallucinate = s.uncertainty_samples >= 2 and unavailable() is None
        self.out.mkdir(parents=True, exist_ok=True)
        self.split = {name: [str(p.relative_to(root)) for p in part] for name, part in split.items()}
        (self.out / "split.json").write_text(json.dumps({"data": str(root), **self.split}, indent=1), encoding="utf-8")
        say(f"split of '{root}' by subject: {', '.join(f'{len(v)} {k}' for k, v in split.items())} "
            f"(written to {self.out / 'split.json'})")
        # absolute, so the runs' config.yaml still names them from another working directory
        train_dir = _link_folder(split["train"], root, self.out / "train").resolve()
        pairs_dir = _link_folder(split["pairs"], root, self.out / "pairs").resolve()

        rows: list[dict[str, Any]] = []
        tests: list[Any] | None = None
        settings_out: dict[str, Any] = {}
        for b_index, backbone in enumerate(s.backbones):
            phase1_dir, phase1_config = self.phase1(backbone, train_dir, split)
            resize = phase1_config.train.resize
            if tests is None:  # the test set, at the (first) phase-1 run's working scale
                tests = self.test_set(resize, phase1_config.eval.seed, split)
                say(f"test set: {len(tests)} whole image(s) at working scale {resize or 'native'} px "
                    f"({'real pairs from ' + s.test if s.test else 'degraded by the ' + s.modality + ' simulator'})")
                rows += self.baselines(tests, phase1_config, pairs_dir)
            rows += self.model_rows(backbone, phase1_dir, phase1_config, pairs_dir, tests, first=b_index == 0)
            settings_out[backbone] = {"phase1_run": str(phase1_dir), "config": to_dict(phase1_config)}
        report = {"settings": {**{k: v for k, v in vars(s).items()}, "split_counts": {k: len(v) for k, v in
                                                                                     self.split.items()},
                               "test_images": len(tests or []), "runs": settings_out},
                  "rows": rows, "notes": self.notes}
        (self.out / "results.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        text = results_markdown(report)
        (self.out / "results.md").write_text(text, encoding="utf-8")
        grid = write_grid(self, tests or [])
        say(f"{len(rows)} rows in {self.out / 'results.json'}; tables in {self.out / 'results.md'}"
            + (f"; grid in {grid}" if grid else "") + f"; took {time.perf_counter() - started:.0f} s")
        print(text)
        return report

    # -- phase 1 --------------------------------------------------------------------------------------------
    def phase1(self, backbone: str, train_dir: Path, split: dict[str, list[Path]]) -> tuple[Path, Any]:
        """The phase-1 run of ``backbone``: ``--reconstruct-from``, a finished one in OUT, or trained now."""
        from rdiff.config import RunConfig, build, load_yaml, to_dict

        if self.s.reconstruct_from:
            source = Path(self.s.reconstruct_from)
            config = build(RunConfig, load_yaml(source / "config.yaml"))
            if config.modality != self.s.modality:
                raise UserError(f"--reconstruct-from '{source}' is a {config.modality} run, not {self.s.modality}.")
            if config.backbone != backbone:
                raise UserError(f"--reconstruct-from '{source}' is a {config.backbone} run; pass --backbones "
                                f"{config.backbone}.")
            if not _phase1_done(source, config):
                raise UserError(f"--reconstruct-from '{source}' has not finished phase 1.")
            self.check_no_leak(config, split)
            say(f"phase 1 of {backbone}: reusing '{source}'")
            return source, config
        config = self.config(backbone, {"seed": 0, "data": str(train_dir)})
        phase = to_dict(config)
        for key in ("out", "adaptor", "adaptor_options", "pairs"):
            phase.pop(key)
        for key in ("adapt_steps", "adapt_lr", "adapt_batch_size", "pairs", "val_pairs", "val_every", "train_base"):
            phase["train"].pop(key)  # phase 2's keys: one phase-1 run serves every adaptation
        run_dir = self.out / "runs" / f"phase1-{backbone}-{_key(phase)}"
        config = replace(config, out=str(run_dir))
        self.check_no_leak(config, split)  # before anything trains
        self.budget_note(backbone, config)
        if run_dir.exists() and not self.s.force and _phase1_done(run_dir, config):
            say(f"phase 1 of {backbone}: reusing the finished run '{run_dir}'")
            return run_dir, config
        if self.s.force and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        say(f"phase 1 of {backbone} on {len(self.split['train'])} file(s) of the train part "
            f"({', '.join(f'{k} {v}' for k, v in config.train.steps.items())} steps) into '{run_dir}'")
        engine = _engine(config, run_dir)
        engine.save_config()
        engine.reconstruct()  # stages finished before a kill are kept and skipped
        engine.write_report(None, None)
        return run_dir, config

    def budget_note(self, backbone: str, config: Any) -> None:
        """Say in results.md when the runs train less than the preset does (the bench's smoke-test budget)."""
        from rdiff.api import get_preset

        train = get_preset(backbone, self.s.preset).get("train", {})
        short = [f"{stage} {config.train.steps.get(stage)} of {n}" for stage, n in (train.get("steps") or {}).items()
                 if config.train.steps.get(stage, n) < n]
        if config.train.adapt_steps < train.get("adapt_steps", 0):
            short.append(f"adaptation {config.train.adapt_steps} of {train['adapt_steps']}")
        if short:
            self.notes.append(f"- **Budget warning** ({backbone}): fewer steps than the `{self.s.preset}` preset "
                              f"trains ({', '.join(short)}); the figures test the pipeline more than the method. "
                              "Pass `--reconstruct-steps preset --adapt-steps preset` for the preset's own budget.")

    def check_no_leak(self, config: Any, split: dict[str, list[Path]]) -> None:
        """Stop when a subject that phase 1 trained on would be scored."""
        from rdiff.images import list_images

        scored = {self.modality.subject(p) for p in split["test"]} if not self.s.test else set()
        if self.s.test:
            scored = {self.modality.subject(p) for p in list_images(Path(self.s.test) / "hq", self.modality.suffixes)}
        trained: dict[str, Path] = {}
        data = Path(config.data) if config.data else None
        if data is not None and data.is_dir():
            trained.update({self.modality.subject(p): p for p in list_images(data, self.modality.suffixes)})
        if self.s.pairs:
            trained.update({self.modality.subject(p): p for p in
                            list_images(Path(self.s.pairs) / "hq", self.modality.suffixes)})
        else:
            trained.update({self.modality.subject(p): p for p in split["pairs"]})
        both = sorted(scored & set(trained))
        if both:
            raise UserError(f"the test images include the subject '{both[0]}' of the training file "
                            f"'{trained[both[0]]}' ({len(both)} subject(s) in both); a model must never be scored "
                            f"on a subject it trained on.")

    # -- the test set ---------------------------------------------------------------------------------------
    def test_set(self, resize: int | None, seed: int, split: dict[str, list[Path]]) -> list[Any]:
        if self.s.test:
            return real_pairs(self.modality, self.s.test, resize)
        from rdiff.data import degraded_images

        return degraded_images(self.modality, split["test"], resize, seed)

    # -- rows that train nothing ----------------------------------------------------------------------------
    def adaptation_pairs(self, config: Any, pairs_dir: Path, seed: int) -> list[Any]:
        """The whole images the adaptation of ``seed`` learns from, at the working scale: the real pairs, or
        the images the engine crops its on-the-fly pairs from, degraded whole with the seed
        ``(stable_seed(seed, "pairs"), index)``."""
        import numpy as np

        from rdiff.data import load_items
        from rdiff.training import stable_seed

        train = config.train
        if self.s.pairs:
            return real_pairs(self.modality, self.s.pairs, train.resize)
        from rdiff.data import Pair

        items = load_items(self.modality, str(pairs_dir), "train", train.resize, train.image_size, train.bad_images)
        base = stable_seed(seed, "pairs")
        out = []
        for i, item in enumerate(items):
            degraded, params = self.modality.degrade(item.image, item.roi, np.random.default_rng([base, i]))
            out.append(Pair(np.clip(degraded, 0, 1).astype(np.float32), item.image, item.roi, params, item.source))
        return out

    def baselines(self, tests: list[Any], config: Any, pairs_dir: Path) -> list[dict[str, Any]]:
        """input, CLAHE and the colour regression (per seed when the pairs are simulated)."""
        import numpy as np

        from rdiff_bench.bench import clahe  # noqa: the classical baseline of the synthetic bench (same module at merge)

        rows = []
        say("scoring input and CLAHE")
        result, kept = score_whole(self.modality, tests, lambda p: p.lq, label="input", keep=GRID_IMAGES)
        self.samples["input"] = kept
        self.samples["clean"] = [p.hq for p in tests[:GRID_IMAGES]]
        rows.append(make_row("input", None, None, None, [(None, result)]))
        result, kept = score_whole(self.modality, tests, lambda p: clahe(p.lq, p.roi), label="clahe", keep=GRID_IMAGES)
        self.samples["clahe"] = kept
        rows.append(make_row("clahe", None, None, None, [(None, result)]))
        # the regression depends on the pairs only: one fit for real pairs, one per seed for simulated ones
        seeds = [0] if self.s.pairs else list(range(self.s.seeds))
        entries = []
        for seed in seeds:
            fitted = fit_colour_map(self.adaptation_pairs(config, pairs_dir, seed))
            result, kept = score_whole(self.modality, tests, lambda p, w=fitted: apply_colour_map(w, p.lq, p.roi),
                                       label=f"colour regression, seed {seed}", keep=GRID_IMAGES)
            result["weights"] = np.round(fitted, 5).tolist()
            if seed == 0:
                self.samples["regression"] = kept
            entries.append((seed, result))
        rows.append(make_row("colour regression", None, None, None, entries))
        return rows

    # -- the hallucination report (rdiff_bench.hallucination) ---------------------------------------------------
    def hallucination(self, run: Any, tests: list[Any], per_path: dict[str, list[tuple[int, dict]]], *,
                      label: str) -> None:
        """Add the hallucination report of ``run`` on the whole test images to the result of its default
        sampling path's row (the last seed scored), sampled as that row's enhancement (seed 0, the run's tile)."""
        from rdiff_bench.hallucination import default_sampling, report

        name, choice = default_sampling(run.backbone, run.config)
        if name not in per_path:  # a default sampling path the table has no row for
            self.notes.append(f"- No hallucination report for {label}: its default sampling path ({name}) "
                              "is not one of the scored paths.")
            return
        say(f"{label}: hallucination report, {self.s.uncertainty_samples} samples of {name} per test image")
        per_path[name][-1][1]["hallucination"] = report(run.backbone, self.modality, tests, choice,
                                                        samples=self.s.uncertainty_samples, seed=0,
                                                        tile=run.tile, overlap=run.overlap)

    # -- rows of one backbone -------------------------------------------------------------------------------
    def model_rows(self, backbone: str, phase1_dir: Path, phase1_config: Any, pairs_dir: Path, tests: list[Any],
                   *, first: bool) -> list[dict[str, Any]]:
        import rdiff

        rows = []
        phase1 = rdiff.load_run(str(phase1_dir))
        say(f"{backbone}: scoring reconstruct-only (zero pairs, every path) and the ceilings")
        for name, options in _paths(phase1).items():
            result, kept = score_whole(self.modality, tests, enhancer(phase1, options),
                                       label=f"reconstruct-only {name}", keep=GRID_IMAGES)
            if first and name == "fast":
                self.samples["reconstruct-only"] = kept
            rows.append(make_row("reconstruct-only", backbone, None, name, [(None, result)]))
        clean = [replace(p, lq=p.hq) for p in tests]
        result, _ = score_whole(self.modality, clean, enhancer(phase1, {"path": "fast"}), label="ceiling")
        rows.append(make_row("ceiling D(E(hq))", backbone, None, "fast", [(None, result)]))
        factor = latent_factor(phase1.backbone)
        result, _ = score_whole(self.modality, clean, lambda p: bicubic_round_trip(p.hq, factor), label="bicubic")
        result["factor"] = factor
        rows.append(make_row("bicubic round trip", backbone, None, None, [(None, result)]))
        del phase1

        for adaptor in self.s.adaptors:
            per_path: dict[str, list[tuple[int, dict]]] = {}
            for seed in range(self.s.seeds):
                run_dir = self.adapt(backbone, adaptor, seed, phase1_dir, pairs_dir)
                run = rdiff.load_run(str(run_dir))
                for name, options in _paths(run).items():
                    result, kept = score_whole(self.modality, tests, enhancer(run, options),
                                               label=f"adapted {adaptor} {name}, seed {seed}", keep=GRID_IMAGES)
                    result["best_step"] = json.loads((run_dir / _DONE).read_text()).get("adapt", {}).get("best_step")
                    if first and seed == 0 and adaptor == self.s.adaptors[0]:
                        self.samples[f"adapted {name}"] = kept
                    per_path.setdefault(name, []).append((seed, result))
                if self.hallucinate and "sampling" in run.backbone.capabilities:
                    self.hallucination(run, tests, per_path, label=f"adapted {adaptor}, seed {seed}")
            for name, entries in per_path.items():
                rows.append(make_row("adapted", backbone, adaptor, name, entries))
        if self.s.scratch:
            entries = []
            for seed in range(self.s.seeds):
                run = self.scratch(backbone, seed, pairs_dir)
                result, _ = score_whole(self.modality, tests, enhancer(run, {"path": "fast"}),
                                        label=f"scratch, seed {seed}")
                entries.append((seed, result))
            rows.append(make_row("scratch", backbone, None, "fast", entries))
        return rows

    def _phase2_layers(self, seed: int, pairs_dir: Path) -> dict[str, Any]:
        # on-the-fly pairs: the engine crops and degrades images of `data`, here the split's pairs part
        return {"seed": seed, "data": str(pairs_dir), "pairs": self.s.pairs}

    def adapt_config(self, backbone: str, adaptor: str, seed: int, phase1_dir: Path, pairs_dir: Path) -> Any:
        """An adaptation's configuration: the phase-1 run's networks as they were trained (a run of your own
        may change any model key of the preset), with the preset's phase-2 keys."""
        from rdiff.config import load_yaml
        from rdiff.plugins import plugins

        phase2_only = getattr(plugins().get("backbone", backbone).config, "ADAPTATION_KEYS", ())
        trained = {k: v for k, v in load_yaml(phase1_dir / "config.yaml").get("model", {}).items() if k not in phase2_only}
        return self.config(backbone, {"adaptor": adaptor}, self._phase2_layers(seed, pairs_dir),
                           {"reconstruct_from": str(phase1_dir.resolve())}, model=trained)

    def adapt(self, backbone: str, adaptor: str, seed: int, phase1_dir: Path, pairs_dir: Path) -> Path:
        """The adaptation run of one seed (reused when finished)."""
        from rdiff.config import to_dict

        config = self.adapt_config(backbone, adaptor, seed, phase1_dir, pairs_dir)
        key = _key(to_dict(replace(config, out=None)), _stamp(phase1_dir))
        run_dir = self.out / "runs" / f"adapt-{backbone}-{adaptor}-s{seed}-{key}"
        if (run_dir / _DONE).is_file() and not self.s.force:
            say(f"{backbone} adapt {adaptor}, seed {seed}: reusing '{run_dir}'")
            return run_dir
        _fresh(run_dir)
        say(f"{backbone} adapt {adaptor}, seed {seed}: {config.train.adapt_steps} steps on "
            f"{'the pairs in ' + self.s.pairs if self.s.pairs else 'the pairs part, degraded on the fly'}")
        config = replace(config, out=str(run_dir))
        engine = _engine(config, run_dir)
        engine.save_config()
        engine.load_reconstruction()
        info = engine.adapt()
        engine.write_report(None, info)
        return run_dir

    def scratch(self, backbone: str, seed: int, pairs_dir: Path) -> Any:
        """The from-scratch run of one seed, loaded (reused when finished)."""
        from rdiff.api import create_backbone
        from rdiff.config import to_dict
        from rdiff.run import Run

        layers = [self._phase2_layers(seed, pairs_dir)]
        if self.s.scratch_lr is not None:
            layers.append({"train": {"adapt_lr": self.s.scratch_lr}})
        config = self.config(backbone, *layers)
        run_dir = self.out / "runs" / f"scratch-{backbone}-s{seed}-{_key(to_dict(replace(config, out=None)))}"
        if not (run_dir / _DONE).is_file() or self.s.force:
            _fresh(run_dir)
            say(f"{backbone} from scratch, seed {seed}: {config.train.adapt_steps} steps")
            config = replace(config, out=str(run_dir))
            engine = _engine(config, run_dir)
            engine.save_config()
            info = engine.scratch()
            (run_dir / _DONE).write_text(json.dumps({"scratch": info}), encoding="utf-8")
        else:
            say(f"{backbone} from scratch, seed {seed}: reusing '{run_dir}'")
        backbone_net = create_backbone(config.backbone, preset=None, channels=self.modality.channels, **config.model)
        backbone_net.load(run_dir / "scratch")
        backbone_net.eval()
        return Run(run_dir, config, self.modality, backbone_net, False)


def _engine(config: Any, run_dir: Path) -> Any:
    from rdiff_bench.bench import make_engine  # the bench's engine: no per-type scoring of validation crops

    return make_engine(config, run_dir)


def _phase1_done(run_dir: Path, config: Any) -> bool:
    from rdiff.api import create_backbone, create_modality

    stages_file = run_dir / "reconstruct" / "stages.json"
    if not stages_file.is_file():
        return False
    channels = create_modality(config.modality, **config.modality_options).channels
    stages = create_backbone(config.backbone, preset=None, channels=channels, **config.model).stages
    return list(json.loads(stages_file.read_text())["done"]) == list(stages)


def _stamp(phase1_dir: Path) -> float:
    """When phase 1 last changed: an adaptation of an older phase 1 is not reused."""
    stages = phase1_dir / "reconstruct" / "stages.json"
    return stages.stat().st_mtime if stages.is_file() else 0.0


def _fresh(run_dir: Path) -> None:
    import shutil

    if run_dir.exists():  # left by a stopped run: start it again
        shutil.rmtree(run_dir)


def _paths(run: Any) -> dict[str, dict[str, Any]]:
    """Enhancement options of every path name the run offers: ``fast`` and ``ddimK`` for each K in eval.sample_steps."""
    from rdiff.evaluation import named_paths, sampling_settings

    return {name: {"path": name} for name in named_paths(run.backbone, sampling_settings(run.config))}


# --- rows and tables ----------------------------------------------------------------------------------------------


def make_row(method: str, backbone: str | None, adaptor: str | None, path: str | None,
             entries: list[tuple[int | None, dict[str, Any]]]) -> dict[str, Any]:
    """A row: mean ± sample std over the entries (seeds) of every metric, overall and by degradation type."""
    from rdiff_bench.bench import summarise

    scores = [{k: v for k, v in r.items()
               if k not in ("images", "sizes", "weights", "factor", "best_step", "hallucination")}
              for _, r in entries]
    summary = summarise(scores)
    row: dict[str, Any] = {"method": method, "backbone": backbone, "adaptor": adaptor, "path": path,
                           "seeds": [seed for seed, _ in entries if seed is not None],
                           "images": entries[0][1]["images"], "sizes": entries[0][1]["sizes"],
                           "metrics": summary["metrics"],
                           "per_seed": {k: [s[k] for s in scores] for k in summary["metrics"]}}
    if "by_type" in summary:
        row["by_type"] = summary["by_type"]
    for extra in ("weights", "factor"):
        if extra in entries[0][1]:
            row[extra] = entries[0][1][extra]
    if any("best_step" in r for _, r in entries):
        row["best_steps"] = [r.get("best_step") for _, r in entries]
    reports = [r["hallucination"] for _, r in entries if r.get("hallucination")]
    if reports:
        from rdiff_bench.hallucination import summarise as summarise_reports

        row["hallucination"] = summarise_reports(reports)
    return row


def _label(row: dict[str, Any]) -> str:
    if row["method"] == "adapted":
        return f"adapted {row['path']}" + (f" ({row['adaptor']})" if row["adaptor"] else "")
    if row["method"] == "scratch":
        return "scratch fast"
    if row["method"] == "reconstruct-only":
        return f"reconstruct-only {row['path']}"
    return row["method"]


def _cell(metric: dict[str, float] | None, spread: bool, digits: int) -> str:
    if metric is None:
        return "—"
    return f"{metric['mean']:.{digits}f} ± {metric['std']:.{digits}f}" if spread else f"{metric['mean']:.{digits}f}"


def _digits(name: str) -> int:
    return 2 if name in ("psnr", "snr", "cnr", "enl") else 3


def results_markdown(report: dict[str, Any]) -> str:
    s, rows = report["settings"], report["rows"]
    first = ("psnr", "ssim")  # then the modality's own metrics, in its order
    names = sorted(rows[0]["metrics"], key=lambda k: first.index(k) if k in first else len(first)) if rows else []
    counts = s["split_counts"]
    from rdiff_bench import hallucination

    reported = any(r.get("hallucination") for r in rows)  # the two columns of the hallucination report
    headers = hallucination.HEADERS if reported else []
    budget = []
    for backbone, info in s["runs"].items():
        train = info["config"]["train"]
        budget.append(f"{backbone}: phase 1 {', '.join(f'{k} {v}' for k, v in train['steps'].items())} steps at batch "
                      f"{train['batch_size']}, adaptation {train['adapt_steps']} steps, working scale "
                      f"{train['resize'] or 'native'} px")
    pairs = (f"the real pairs in `{s['pairs']}`" if s["pairs"]
             else "the pairs part, degraded on the fly by the modality's simulator")
    tests = (f"the real pairs in `{s['test']}`" if s["test"]
             else "the test part degraded by the simulator (seed per image)")
    lines = [
        f"# rdiff bench on real data: {s['modality']}", "",
        f"Data `{s['data']}`, split by subject into {counts['train']} train / {counts['pairs']} pairs / "
        f"{counts['test']} test files (`split.json`). Adaptation on {pairs}; test: {s['test_images']} whole "
        f"images, {tests}, "
        f"scored at the working scale inside the region of interest. Preset `{s['preset']}`; {s['seeds']} seed(s). "
        + "; ".join(budget) + ".", "",
        "Adapted, scratch and (with simulated pairs) colour-regression rows: mean ± sample std over the seeds; "
        "the other rows train nothing on the pairs (phase 1 is one run) and show one value.", "",
        "| backbone | method | " + " | ".join(names + headers) + " | seeds |",
        "|---|---|" + "---|" * len(names + headers) + "---|"]
    for r in rows:
        spread = len(r["seeds"]) > 1
        lines.append(f"| {r['backbone'] or ''} | {_label(r)} | "
                     + " | ".join([_cell(r["metrics"].get(n), spread, _digits(n)) for n in names]
                                  + (hallucination.cells(r.get("hallucination")) if headers else []))
                     + f" | {len(r['seeds']) or ''} |")
    lines.append("")
    typed = [r for r in rows if r.get("by_type") and r["path"] in (None, "fast")
             and not r["method"].startswith(("ceiling", "bicubic"))]
    if typed:
        types = sorted({t for r in typed for t in r["by_type"]})
        lines += ["## PSNR (dB) / SSIM by degradation type", "",
                  "An image counts under every type its degradation applied (the simulator's `types`).", "",
                  "| backbone | method | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
        for r in typed:
            cells = []
            for t in types:
                m = r["by_type"].get(t)
                cells.append(f"{m['psnr']['mean']:.2f} / {m['ssim']['mean']:.3f}" if m else "—")
            lines.append(f"| {r['backbone'] or ''} | {_label(r)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Rows", "",
        "- `input`: the degraded test image itself. `clahe`: CLAHE of the lightness inside the region of interest.",
        "- `colour regression`: one global map per output channel c, `out_c = w_c · [1, r, g, b, x_c²]` "
        "(grey: `[1, x, x²]`), fitted by least squares on the roi pixels of the adaptation pairs (whole images at "
        "the working scale), then applied to every test input.",
        "- `reconstruct-only`: the phase-1 model, fast path, no adaptor. `adapted <path>`: with the adaptor.",
        "- `ceiling D(E(hq))`: the *clean* test images through the phase-1 model (what phase 1 can give back). "
        "`bicubic round trip`: clean test images down by the latent's factor (antialiased bicubic) and back up.",
        *([hallucination.note(s.get("uncertainty_samples", 4))] if reported else []),
        *report.get("notes", []), ""]
    return "\n".join(lines)


def write_grid(bench: RealBench, tests: list[Any]) -> Path | None:
    """grid.png: the first test images as input / CLAHE / regression / reconstruct-only / adapted, every path /
    clean (matplotlib; skipped when it is not importable)."""
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    adapted = [key for key in bench.samples if key.startswith("adapted ")]
    columns = [(title, bench.samples.get(key)) for title, key in (
        ("input", "input"), ("CLAHE", "clahe"), ("regression", "regression"), ("reconstruct-only", "reconstruct-only"),
        *((key, key) for key in adapted), ("clean", "clean"))]
    count = min(GRID_IMAGES, len(tests))
    if not count:
        return None
    fig, axes = plt.subplots(count, len(columns), squeeze=False, figsize=(1.9 * len(columns), 1.9 * count + 0.4))
    for j, (title, images) in enumerate(columns):
        for i in range(count):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if images is None or i >= len(images):
                ax.text(0.5, 0.5, "—", ha="center", va="center")
            else:
                image = np.clip(images[i], 0, 1)
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = bench.out / "grid.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- rdiff bench --data DIR --run RUN ------------------------------------------------------------------------------


def evaluate_run(run: Any, data: str, paths: list[str] | None = None) -> dict[str, Any]:
    """The run scored on the ``test`` part of DIR's split by subject (:func:`split_folder`): whole images at
    the run's working scale, degraded by its modality's simulator with the seed ``(eval.seed, index)``."""
    from rdiff.data import degraded_images
    from rdiff.evaluation import named_paths, sampling_settings, with_default

    cfg = run.config
    split = split_folder(run.modality, data)
    tests = degraded_images(run.modality, split["test"], cfg.train.resize, cfg.eval.seed)
    options = {name: {"path": name} for name in named_paths(run.backbone, sampling_settings(cfg))}
    if paths:
        unknown = [p for p in paths if p not in options]
        if unknown:
            raise UserError(f"--paths '{unknown[0]}' is not a path of this run; its paths: {', '.join(options)}.")
        options = {k: v for k, v in options.items() if k in paths}

    def scored(produce: Callable[[Any], Any], label: str) -> dict[str, Any]:
        result = score_whole(run.modality, tests, produce, label=label)[0]
        result.pop("sizes")
        result.pop("images")  # the same for every row: said once, at the top
        return result

    report: dict[str, Any] = {"images": len(tests), "split": {k: len(v) for k, v in split.items()},
                              "input": scored(lambda p: p.lq, "input")}
    report["paths"] = {name: scored(enhancer(run, opts), name) for name, opts in options.items()}
    report = with_default(report, run.backbone, cfg)
    if run.backbone.adaptor is not None:  # zero pairs: the phase-1 model alone on the default path
        with run.backbone.base_only():
            report["reconstruct_only"] = scored(enhancer(run, {"path": report["default_path"]}), "reconstruct-only")
        report["reconstruct_only_path"] = report["default_path"]
    return report


# --- entry point ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``rdiff bench --data DIR ...``: exit code 0 (bad input raises UserError, exit 2)."""
    if args.run:
        return score_run(args.run, args.data)
    RealBench(settings_from_args(args)).run()
    return 0


def score_run(run_dir: str, data: str) -> int:
    """``rdiff bench --data DIR --run RUN``: the run's table on DIR's test part (:func:`evaluate_run`)."""
    from rdiff.report import format_eval_table
    from rdiff.run import Run

    run = Run.load(run_dir)
    report = evaluate_run(run, data)
    say(f"scored '{run_dir}' on the test part of '{data}' ({report['split']['test']} of "
        f"{sum(report['split'].values())} files, split by subject)")
    print(format_eval_table(report))
    return 0
