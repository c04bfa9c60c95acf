"""Every check that can run before the first training step, so a bad run fails in seconds, not after hours
(a pair without its partner found when phase 2 starts wastes all of phase 1). :func:`check_run` looks at
everything a run will use before anything is written to its directory:

- **configuration values**: counts and intervals in range, sizes the backbone can work with, the default
  enhancement path one the backbone has;
- **data**: every image of the data folder and of both sides of the pairs folder is opened for its header
  only (PIL reads the size without decoding the pixels; NumPy files give their shape), so names, sizes and
  readability are known in seconds even for thousands of photographs;
- **output**: the run directory can be created and written to, and its disk has room for the weights and
  checkpoints the run will write.

Each problem is one sentence; all problems found are reported together (one per line) as a
:class:`rdiff.errors.UserError`, exit code 2. :func:`check_backbone` adds what needs the built backbone.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from rdiff import images
from rdiff.errors import UserError, describe_os_error, did_you_mean

# the smallest value each count or interval may take (a step count of 0 trains nothing and reports
# "validation PSNR -inf dB"; an interval of 0 divides by zero in the training loop)
AT_LEAST: dict[str, int] = {
    "seed": 0,
    "train.image_size": 1, "train.adapt_image_size": 1, "train.batch_size": 1, "train.adapt_batch_size": 1, "train.grad_accum": 1,
    "train.adapt_steps": 1, "train.pairs": 1, "train.val_pairs": 1, "train.val_every": 1,
    "train.checkpoint_every": 1, "train.log_every": 1, "train.max_bad_steps": 1, "train.warmup_steps": 0,
    "train.eval_every": 0, "train.num_workers": 0,
    "eval.crops": 1, "eval.seed": 0,
}
# keys only phase 2 reads: `rdiff reconstruct` does not judge them (`rdiff adapt` will)
PHASE_2 = ("train.adapt_steps", "train.adapt_batch_size", "train.pairs", "train.val_pairs", "train.val_every",
           "train.adapt_lr")


class Problems:
    """Problems collected by the checks; raised together as one UserError, one sentence per line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *sentences: str) -> None:
        for sentence in sentences:
            if sentence not in self.lines:
                self.lines.append(sentence)

    def guard(self, check: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``check``; a UserError it raises becomes one more problem."""
        try:
            return check(*args, **kwargs)
        except UserError as exc:
            self.add(str(exc))
            return None

    def raise_if_any(self) -> None:
        if self.lines:
            raise UserError("\n".join(self.lines))


# --- configuration ------------------------------------------------------------------------------------------


def config_problems(config: Any, phases: tuple[str, ...] = ("reconstruct", "adapt")) -> list[str]:
    """Values of ``config`` (a RunConfig) out of their range, one sentence each."""
    train, ev = config.train, config.eval
    out = []
    skipped = () if "adapt" in phases else PHASE_2
    for key, minimum in AT_LEAST.items():
        value = attrgetter(key)(config)  # a dotted key: config.train.lr
        if key not in skipped and value is not None and value < minimum:
            out.append(f"config key '{key}' must be at least {minimum}, not {value}.")
    for stage, steps in train.steps.items():
        if steps < 1 and "reconstruct" in phases:
            out.append(f"config key 'train.steps.{stage}' must be at least 1, not {steps}.")
    for key in ("train.lr", "train.adapt_lr"):
        value = attrgetter(key)(config)
        if key not in skipped and not (value > 0 and math.isfinite(value)):
            out.append(f"config key '{key}' must be a positive number, not {value}.")
    if not (train.clip_grad >= 0 and math.isfinite(train.clip_grad)):
        out.append(f"config key 'train.clip_grad' must be 0 (off) or positive, not {train.clip_grad}.")
    if not 0 <= train.ema_decay < 1:
        out.append(f"config key 'train.ema_decay' must be at least 0 and below 1, not {train.ema_decay}.")
    if not (ev.eta >= 0 and math.isfinite(ev.eta)):
        out.append(f"config key 'eval.eta' must be 0 or positive, not {ev.eta}.")
    bad_steps = [k for k in ev.sample_steps if k < 1]
    if bad_steps:
        out.append(f"config key 'eval.sample_steps' must hold step counts of at least 1, not {bad_steps[0]}.")
    if train.resize is not None and train.resize < train.image_size:
        out.append(f"config key 'train.resize' ({train.resize}) is smaller than 'train.image_size' "
                   f"({train.image_size}): no crop would fit in a resized image; set train.resize to at least "
                   f"{train.image_size} or null.")
    return out


def backbone_problems(config: Any, backbone: Any) -> list[str]:
    """What the built backbone needs of ``config``: a crop size its networks can halve, a step count for
    each of its stages, and a default enhancement path it has."""
    from rdiff.evaluation import default_name, named_paths, sampling_settings

    train, name = config.train, config.backbone
    out = []
    multiple = int(getattr(backbone, "size_multiple", 1) or 1)
    for key, size in (("train.image_size", train.image_size), ("train.adapt_image_size", train.adapt_image_size)):
        if size is not None and size >= 1 and size % multiple:
            lower = size // multiple * multiple
            upper = lower + multiple
            suggestion = f"{lower} or {upper}" if lower else f"{upper}"
            out.append(f"config key '{key}' must be a multiple of {multiple} for backbone '{name}' "
                       f"(its networks halve the image that often), not {size}; try {suggestion}.")
    stages = tuple(backbone.stages)
    for stage in stages:
        if stage not in train.steps:
            out.append(f"config key 'train.steps' has no entry for the backbone stage '{stage}' "
                       f"(stages: {', '.join(stages)}).")
    for stage in train.steps:
        if stage not in stages:
            out.append(f"config key 'train.steps.{stage}' is not a stage of backbone '{name}'"
                       f"{did_you_mean(stage, stages)}; stages: {', '.join(stages)}.")
    paths = named_paths(backbone, sampling_settings(config))
    if default_name(backbone, config) not in paths:
        out.append(f"config key 'eval.path' is '{config.eval.path}', which backbone '{name}' does not offer"
                   f"{did_you_mean(config.eval.path, list(paths))}; paths: {', '.join(paths)}.")
    return out


# --- image headers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What a file's header says: ``width`` and ``height`` of each image and how many images it holds."""

    width: int
    height: int
    frames: int = 1


def read_header(path: Path) -> Header | None:
    """The size of the image(s) in ``path`` without decoding pixels, or ``None`` for a format this pass does
    not know (the full read later still checks it). Raises UserError naming the file when it is unreadable."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            import numpy as np

            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape = read(f)[0]  # the header only: no data read, nothing unpickled
            if len(shape) not in (2, 3):
                return None
            return Header(shape[-1], shape[-2], shape[0] if len(shape) == 3 else 1)
        if suffix not in images.SUFFIXES:
            return None
        from PIL import Image

        try:
            with Image.open(path) as im:  # lazy: reads the header, decodes nothing
                width, height = im.size
                return Header(width, height, int(getattr(im, "n_frames", 1)))
        except Exception:  # noqa: BLE001 - some TIFF variants are read by tifffile only
            if suffix not in (".tif", ".tiff"):
                raise
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            return Header(shape[-1] if len(shape) == 2 else shape[-2], shape[0] if len(shape) == 2 else shape[-3])
    except Exception as exc:  # noqa: BLE001 - every decoder error means the same to a user
        raise UserError(f"cannot read image '{path}': {type(exc).__name__}: {exc}".rstrip(".") + ".") from None


def resized(header: Header, longest: int | None) -> tuple[int, int]:
    """(width, height) after :func:`rdiff.data.resize_longest` (downscale only, longest side ``longest``)."""
    w, h = header.width, header.height
    if not longest or max(w, h) <= longest:
        return w, h
    scale = longest / max(w, h)
    return round(w * scale), round(h * scale)


def data_problems(modality: Any, folder: str, train: Any) -> list[str]:
    """Every image of a data folder: readable, and large enough for the training crops once resized."""
    problems = Problems()
    files = problems.guard(images.list_images, folder, tuple(modality.suffixes))
    if files is None:
        return problems.lines
    headers: list[tuple[Path, Header | None]] = []
    unreadable = []
    for path in files:
        try:
            headers.append((path, read_header(path)))
        except UserError as exc:
            unreadable.append(str(exc))
    if unreadable and train.bad_images != "skip":
        more = f" ({len(unreadable) - 1} more unreadable files in '{folder}')" if len(unreadable) > 1 else ""
        problems.add(f"{unreadable[0].rstrip('.')}{more}; set train.bad_images=skip to leave unreadable files out.")
    if not headers:
        problems.add(f"data folder '{folder}' holds no readable images.")
        return problems.lines
    for path, header in headers:
        if header is None:
            continue
        w, h = resized(header, train.resize)
        if min(w, h) < train.image_size:
            once = " once resized" if (w, h) != (header.width, header.height) else ""
            problems.add(f"image '{path}' is {w}×{h} px{once}, "
                         f"smaller than the {train.image_size}-px training crops of this preset "
                         f"(set train.image_size lower).")
    if len(headers) == 1 and headers[0][1] is not None and headers[0][1].frames == 1:
        path, header = headers[0]
        w, _ = resized(header, train.resize)
        cut = w * 3 // 4
        if min(cut, w - cut) < train.image_size:
            problems.add(f"'{path}' is the only image and too narrow to hold a quarter out for evaluation with "
                         f"{train.image_size}-px crops; add more images or set train.image_size lower.")
    return problems.lines


def pairs_problems(modality: Any, folder: str, train: Any) -> list[str]:
    """A pairs folder: lq/ and hq/ present, every stem on both sides, partners of the same size, large
    enough for the crops, readable, and at least two pairs (one to train, one to validate)."""
    root = Path(folder)
    if not root.is_dir():
        return [f"pairs folder '{root}' does not exist or is not a folder."]
    try:
        lq, hq = images.pair_files(root, modality.suffixes)
    except UserError as exc:
        return [str(exc)]
    problems = Problems()
    orphans = sorted(lq.keys() ^ hq.keys())
    for stem in orphans[:3]:
        have, missing = (lq[stem], root / "hq") if stem in lq else (hq[stem], root / "lq")
        problems.add(f"'{have}' has no partner with the stem '{stem}' in '{missing}'.")
    if len(orphans) > 3:
        problems.add(f"{len(orphans) - 3} more files in '{root}' have no partner.")
    count = 0
    for stem in sorted(lq.keys() & hq.keys()):
        a, b = problems.guard(read_header, lq[stem]), problems.guard(read_header, hq[stem])
        if a is None or b is None:
            count += 1
            continue
        if a.frames != b.frames:
            problems.add(f"'{lq[stem]}' holds {a.frames} images but '{hq[stem]}' holds {b.frames}.")
        elif (a.width, a.height) != (b.width, b.height):
            problems.add(f"'{lq[stem]}' is {a.width}×{a.height} px but '{hq[stem]}' is {b.width}×{b.height} px; "
                         f"pairs must have the same size.")
        else:
            w, h = resized(a, train.resize)
            if min(w, h) < train.image_size:
                problems.add(f"pair '{lq[stem]}' is {w}×{h} px, smaller than the {train.image_size}-px training "
                             f"crops of this preset (set train.image_size lower).")
        count += a.frames
    if not orphans and count < 2:
        problems.add(f"pairs folder '{root}' holds {count} pair; at least 2 are needed (one to train, one to "
                     f"validate).")
    return problems.lines


# --- output -------------------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_problems(run_dir: Path) -> list[str]:
    """The run directory can be created and written to (tested with a temporary file, removed at once)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        return [f"run directory '{run_dir}' is a file, not a folder; choose another --out."]
    base = _existing_ancestor(run_dir)
    if not base.is_dir():
        return [f"run directory '{run_dir}' cannot be created: '{base}' is a file, not a folder."]
    try:
        fd, name = images.temp_beside(base / "rdiff-write-test")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return [f"run directory '{run_dir}' is not writable: {describe_os_error(exc, base)}"]
    return []


def expected_bytes(backbone: Any, config: Any) -> int:
    """About how much a run writes: per parameter, the final weights (4 bytes), and the current, previous
    and next checkpoint (weights, two AdamW moments, EMA when on: 12-16 bytes each), plus logs."""
    params = sum(p.numel() for p in backbone.parameters())
    per_checkpoint = 12 + (4 if config.train.ema_decay > 0 else 0)
    return params * (4 + 3 * per_checkpoint) + (16 << 20)


def _size_of(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def space_problems(run_dir: Path, backbone: Any, config: Any) -> list[str]:
    """The run's disk has room for what the run will write (less what an existing run already holds)."""
    run_dir = Path(run_dir)
    need = expected_bytes(backbone, config) - (_size_of(run_dir) if run_dir.is_dir() else 0)
    base = _existing_ancestor(run_dir)
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return []  # not knowable here; writing will tell
    if need > free:
        return [f"run directory '{run_dir}' is on a disk with {_mb(free)} free, but this run writes about "
                f"{_mb(need)} (weights and checkpoints of {sum(p.numel() for p in backbone.parameters()):,} "
                f"parameters); free some space or choose another --out."]
    return []


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


# --- entry points -------------------------------------------------------------------------------------------


def check_run(config: Any, run_dir: str | Path, *, phases: tuple[str, ...] = ("reconstruct", "adapt")) -> None:
    """Everything about a run that does not need its backbone: configuration ranges, the data and pairs
    folders it will read, and its output directory. Writes nothing. Raises one UserError for all problems."""
    from rdiff.registry import create_modality

    problems = Problems()
    problems.add(*config_problems(config, phases))
    modality = problems.guard(create_modality, config.modality, **config.modality_options)
    if modality is not None:
        if config.data:
            problems.add(*data_problems(modality, config.data, config.train))
        if config.pairs:  # checked now even when phase 2 comes later (`rdiff adapt --from RUN` reads it)
            problems.add(*pairs_problems(modality, config.pairs, config.train))
    problems.add(*output_problems(Path(run_dir)))
    problems.raise_if_any()


def check_backbone(config: Any, backbone: Any, run_dir: str | Path | None = None) -> None:
    """What needs the built backbone: crop size multiple, stages, enhancement path and disk space."""
    problems = Problems()
    problems.add(*backbone_problems(config, backbone))
    if run_dir is not None:
        problems.add(*space_problems(Path(run_dir), backbone, config))
    problems.raise_if_any()


def check_heldout(config: Any, modality: Any) -> None:
    """Load the held-out images now: they are read only for the evaluation that ends every run, and a preset
    whose crops do not fit them (e.g. ``base`` on the embedded sample) would otherwise train both phases —
    minutes to days — and then stop."""
    from rdiff.data import load_items

    train = config.train
    load_items(modality, config.data, "heldout", train.resize, train.image_size, train.bad_images)
