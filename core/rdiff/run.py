"""A run directory: its layout (the one place that knows it) and, loaded, the backbone with its phase-1
weights and the adaptor if phase 2 ran.

Layout (see docs/concepts.md)::

    RUN/config.yaml            fully resolved configuration
    RUN/reconstruct/           phase 1: one folder per network (diffusers layout), stages.json, checkpoint/
    RUN/adapt/                 phase 2: adaptor.safetensors, adaptor.json, checkpoint/
    RUN/metrics.jsonl          one line per logged step
    RUN/report.json            held-out evaluation, parameter counts, times
    RUN/manifest.json          size and SHA-256 of every final weight file (rdiff.checkpoints)
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdiff.checkpoints import recorded_weights, verify_weights, write_bytes, write_json
from rdiff.config import RunConfig, build, load_yaml, to_dict
from rdiff.errors import UserError, did_you_mean
from rdiff.evaluation import sampling_settings
from rdiff.registry import create_adaptor, create_components

STAGES = "stages.json"  # in RUN/reconstruct/: the phase-1 stages finished so far


# --- the layout ------------------------------------------------------------------------------------------


def reconstruct_dir(config: RunConfig, run_dir: str | Path) -> Path:
    """Where a run's phase-1 weights are: its own, or those of the run it adapts (``reconstruct_from``)."""
    return (Path(config.reconstruct_from) if config.reconstruct_from else Path(run_dir)) / "reconstruct"


def stages_done(directory: Path) -> list[str]:
    """The phase-1 stages finished in ``directory`` (a run's ``reconstruct/``), in training order."""
    path = Path(directory) / STAGES
    return list(json.loads(path.read_text())["done"]) if path.is_file() else []


def mark_stages_done(directory: Path, done: list[str]) -> None:
    write_json(Path(directory) / STAGES, {"done": list(done)})


def write_config(run_dir: Path, config: RunConfig, note: str | None = None) -> None:
    """config.yaml: the fully resolved configuration, after the comment lines it already had (what earlier
    resumes changed) and ``note``."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    kept = list(itertools.takewhile(lambda line: line.startswith("#"), old)) + ([f"# {note}"] if note else [])
    header = "".join(line + "\n" for line in kept)
    write_bytes(path, (header + yaml.safe_dump(to_dict(config), sort_keys=False)).encode("utf-8"))


#: what training leaves in a run directory (a config.yaml alone is a run stopped before its first checkpoint)
RESULTS = ("checkpoint", "checkpoint.prev", STAGES, "adaptor.safetensors")


def holds_results(run_dir: Path, also: tuple[str, ...] = ()) -> bool:
    """Whether ``run_dir`` holds anything training wrote (or a file named in ``also``)."""
    return any(p.name in RESULTS + also for p in Path(run_dir).rglob("*"))


def discard_untrained(run_dir: str | Path) -> bool:
    """Remove a run directory this run created when it stopped before saving anything worth keeping (no
    checkpoint, no finished stage): rerunning the corrected command must not be refused as "already holds a
    run", nor must ``--resume`` replay the rejected configuration. Returns whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or holds_results(run_dir, also=("report.json",)):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def expects_adaptor(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` finished phase 2: its manifest lists the adaptor, or phase 2's own record
    (``adapt/adaptor.json``) or report says so. Used to refuse enhancing an adapted run without its adaptor."""
    run_dir = Path(run_dir)
    if "adapt/adaptor.safetensors" in recorded_weights(run_dir) or (run_dir / "adapt" / "adaptor.json").is_file():
        return True
    try:  # no report.json (OSError) or a damaged one: not adapted
        return bool(json.loads((run_dir / "report.json").read_text(encoding="utf-8")).get("adapt"))
    except (OSError, ValueError, AttributeError):
        return False


def load_phase1(backbone: Any, config: RunConfig, run_dir: str | Path, hint: str = "") -> None:
    """Load a run's phase 1 (its own, or the run it adapts) into ``backbone``: refused, in one sentence, when
    a stage has not finished or a weight file is missing or damaged."""
    phase1 = reconstruct_dir(config, run_dir)
    done = stages_done(phase1)
    if list(done) != list(backbone.stages):
        raise UserError(f"run '{phase1.parent}' has not finished phase 1 (stages done: {', '.join(done) or 'none'})"
                        f"{hint}.")
    verify_weights(phase1.parent, "reconstruct")
    _load(backbone, phase1, config.backbone)


def truncate_log(run_dir: Path, phase: str, stage: str, step: int) -> None:
    """Drop metrics.jsonl lines written after the checkpoint we resume from (they will be written again)."""
    log = Path(run_dir) / "metrics.jsonl"
    if not log.is_file():
        return
    keep = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if rec.get("phase") == phase and rec.get("stage") == stage and rec.get("step", 0) > step:
            continue
        keep.append(line)
    log.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


# --- a run, loaded -----------------------------------------------------------------------------------------


class Run:
    def __init__(self, directory: Path, config: RunConfig, modality: Any, backbone: Any, adapted: bool):
        self.directory, self.config, self.modality, self.backbone, self.adapted = directory, config, modality, backbone, adapted

    def resolve_path(self, path: str | None = None, **settings: Any) -> tuple[str, Any]:
        """``(path, options)`` to enhance with: ``path`` (a path or name of the backbone; default the run's
        ``eval.path``) with the backbone's options built from the run's ``eval`` settings under ``settings``
        (e.g. ``steps``, ``eta``). Naming the path the run's own ``eval.path`` means (``sample`` for
        ``ddim20``) keeps that name's options."""
        defaults = sampling_settings(self.config)
        own = self.config.eval.path
        if path is None or path == self.backbone.resolve_path(own, **defaults)[0]:
            path = own
        given = {k: v for k, v in settings.items() if v is not None}
        return self.backbone.resolve_path(path, **{**defaults, **given})

    @property
    def tile(self) -> int:
        """Default tile side for enhancement: as large as memory allows (fewer tiles, less overlap computed
        twice: a 512² image is one pass, a 1411² one two by two), at least twice the training crop."""
        return max(1024, 2 * self.config.train.image_size)

    @property
    def overlap(self) -> int:
        """Default overlap of neighbouring tiles: the backbone's, wider than its networks' reach, so tiles
        agree with the whole image (within 2/255) and no seam shows."""
        return int(getattr(self.backbone, "tile_overlap", 96))

    @classmethod
    def load(cls, path: str | Path, *, reconstruct_only: bool = False) -> Run:
        """Load a run directory. An adapted run loads with its adaptor, and refuses (naming the file) when
        the adaptor is missing or damaged; ``reconstruct_only=True`` asks for the phase-1 model alone."""
        directory = Path(path)
        config_file = directory / "config.yaml"
        if not config_file.is_file():
            raise UserError(f"'{directory}' is not an rdiff run directory (it has no config.yaml).")
        config = build(RunConfig, load_yaml(config_file))
        modality, backbone = create_components(config)
        load_phase1(backbone, config, directory)
        adaptor_file = directory / "adapt" / "adaptor.safetensors"
        adapted = not reconstruct_only and (adaptor_file.is_file() or expects_adaptor(directory))
        if adapted:
            from safetensors.torch import load_file

            if not adaptor_file.is_file():  # never enhance silently un-adapted
                raise UserError(f"adaptor file '{adaptor_file}' is missing, so run '{directory}' cannot enhance "
                                f"as adapted; restore it, re-adapt with `rdiff adapt --from {directory}`, or pass "
                                f"--reconstruct-only to use the phase-1 model alone.")
            verify_weights(directory, "adapt", hint="; pass --reconstruct-only to use the phase-1 model alone")
            adaptor = create_adaptor(config.adaptor, backbone, **config.adaptor_options)
            try:
                weights = load_file(adaptor_file)
            except Exception as exc:  # noqa: BLE001 - safetensors' own error type; a damaged file either way
                raise UserError(f"adaptor file '{adaptor_file}' is damaged ({str(exc).splitlines()[0]}); "
                                f"pass --reconstruct-only to use the phase-1 model alone.") from None
            try:
                adaptor.load_adaptor_state_dict(weights)
            except RuntimeError as exc:
                raise UserError(f"'{adaptor_file}' does not fit adaptor '{config.adaptor}' on this backbone: "
                                f"{str(exc).splitlines()[0]}") from None
            if (directory / "adapt" / "base").is_dir():
                _load(backbone, directory / "adapt" / "base", config.backbone)
        backbone.eval()
        return cls(directory, config, modality, backbone, adapted)

    def enhance(self, image: np.ndarray | torch.Tensor, *, path: str | None = None, **options: Any
                ) -> np.ndarray | torch.Tensor:
        """Enhance one image: numpy ``H×W×C`` in [0, 1] (returns numpy) or a tensor ``C×H×W`` / ``B×C×H×W``
        in [0, 1] (returns a tensor). Options as :func:`rdiff.enhance.enhance_image`; the others (``steps``,
        ``eta``, ...) are the backbone's sampling settings (:meth:`resolve_path`)."""
        from rdiff.enhance import IMAGE_OPTIONS, enhance_image

        settings = {k: options.pop(k) for k in list(options) if k not in IMAGE_OPTIONS}
        path, sampling = self.resolve_path(path, **settings)
        options.setdefault("tile", self.tile)
        options.setdefault("overlap", self.overlap)
        options.update(path=path, options=sampling)
        if isinstance(image, torch.Tensor):
            batch = image[None] if image.dim() == 3 else image
            outs = [enhance_image(self.backbone, self.modality, b.permute(1, 2, 0).cpu().numpy(), **options) for b in batch]
            out = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).to(image.device)
            return out[0] if image.dim() == 3 else out
        return enhance_image(self.backbone, self.modality, np.asarray(image, dtype=np.float32), **options)

    def evaluate(self, *, data: str | None = None, pairs: str | None = None, crops: int | None = None,
                 paths: list[str] | None = None) -> dict[str, Any]:
        """Score the run. Without ``data`` or ``pairs``: the embedded held-out crops (``crops`` of them).
        ``data``: every image of that folder, whole, at the run's working scale, degraded by the modality's
        simulator with the seed ``(eval.seed, index)``. ``pairs``: whole real pairs at native resolution.
        Whole images are enhanced one by one (tiled as ``rdiff enhance`` tiles them)."""
        from rdiff.data import degraded_images, load_pair_folder, to_tensor
        from rdiff.evaluation import evaluate, heldout_pairs, local_metrics, named_paths, score, with_default
        from rdiff.images import list_images

        cfg = self.config
        known = named_paths(self.backbone, sampling_settings(cfg))
        for name in paths or ():  # a misspelled name would otherwise score nothing, silently
            if name not in known:
                raise UserError(f"run '{self.directory}' has no enhancement path '{name}'{did_you_mean(name, known)}; "
                                f"paths: {', '.join(known)}.")
        device = next(self.backbone.parameters()).device
        if pairs is None and data is None:
            held = heldout_pairs(self.modality, cfg, split="heldout", crops=crops)
            return evaluate(self.backbone, self.modality, held, config=cfg, device=device, paths=paths)
        whole = (load_pair_folder(self.modality, pairs, resize=None) if pairs is not None
                 else degraded_images(self.modality, list_images(data, self.modality.suffixes), cfg.train.resize,
                                      cfg.eval.seed))
        names = [n for n in known if not paths or n in paths]
        report: dict[str, Any] = {"images": len(whole), "input": score(self.modality, whole, lambda lq: lq, device, 1)}
        report["paths"] = {}
        for name in names:  # each image may have its own size
            metrics = local_metrics(self.modality.metrics())
            for pair in whole:
                out = self.enhance(pair.lq, roi=pair.roi, path=name)
                metrics.update(to_tensor(out)[None], to_tensor(pair.hq)[None], to_tensor(pair.roi)[None])
            report["paths"][name] = {k: round(float(v), 4) for k, v in metrics.compute().items()}
        return with_default(report, self.backbone, cfg)


def _load(backbone: Any, directory: Path, name: str) -> None:
    try:
        backbone.load(directory)
    except RuntimeError as exc:  # a state dict that does not fit: another backbone or configuration
        raise UserError(f"the weights in '{directory}' do not fit the backbone '{name}' of this run's "
                        f"config.yaml ({str(exc).splitlines()[0]}).") from None
