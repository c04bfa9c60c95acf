"""A run directory, loaded: the backbone with its phase-1 weights, the adaptor if phase 2 ran.

Layout (see docs/concepts.md)::

    RUN/config.yaml            fully resolved configuration
    RUN/reconstruct/           phase 1: one folder per network (diffusers layout), stages.json, checkpoint/
    RUN/adapt/                 phase 2: adaptor.safetensors, adaptor.json, checkpoint/
    RUN/metrics.jsonl          one line per logged step
    RUN/report.json            held-out evaluation, parameter counts, times
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdiff.api import create_adaptor, create_backbone, create_modality
from rdiff.config import RunConfig, build, load_yaml
from rdiff.errors import UserError


class Run:
    def __init__(self, directory: Path, config: RunConfig, modality: Any, backbone: Any, adapted: bool):
        self.directory, self.config, self.modality, self.backbone, self.adapted = directory, config, modality, backbone, adapted

    @property
    def default_path(self) -> str:
        """The enhancement path the run's preset names (``fast`` or ``sample``)."""
        return "sample" if self.config.eval.path.startswith("ddim") else self.config.eval.path

    @property
    def default_steps(self) -> int:
        path = self.config.eval.path
        return int(path[4:]) if path.startswith("ddim") and path[4:].isdigit() else self.config.eval.sample_steps[0]

    @property
    def tile(self) -> int:
        """Default tile side for enhancement: large enough for context, small enough for memory."""
        return max(256, 4 * self.config.train.image_size)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        directory = Path(path)
        config_file = directory / "config.yaml"
        if not config_file.is_file():
            raise UserError(f"'{directory}' is not an rdiff run directory (it has no config.yaml).")
        config = build(RunConfig, load_yaml(config_file))
        modality = create_modality(config.modality, **config.modality_options)
        backbone = create_backbone(config.backbone, preset=None, channels=modality.channels, **config.model)
        source = Path(config.reconstruct_from) if config.reconstruct_from else directory
        stages_file = source / "reconstruct" / "stages.json"
        done = json.loads(stages_file.read_text())["done"] if stages_file.is_file() else []
        if list(done) != list(backbone.stages):
            raise UserError(f"run '{source}' has not finished phase 1 (stages done: {', '.join(done) or 'none'}).")
        _load(backbone, source / "reconstruct", config.backbone)
        adaptor_file = directory / "adapt" / "adaptor.safetensors"
        adapted = adaptor_file.is_file()
        if adapted:
            from safetensors.torch import load_file

            adaptor = create_adaptor(config.adaptor, backbone, **config.adaptor_options)
            try:
                adaptor.load_adaptor_state_dict(load_file(adaptor_file))
            except RuntimeError as exc:
                raise UserError(f"'{adaptor_file}' does not fit adaptor '{config.adaptor}' on this backbone: "
                                f"{str(exc).splitlines()[0]}") from None
            if (directory / "adapt" / "base").is_dir():
                _load(backbone, directory / "adapt" / "base", config.backbone)
        backbone.eval()
        return cls(directory, config, modality, backbone, adapted)

    def enhance(self, image: np.ndarray | torch.Tensor, **options: Any) -> np.ndarray | torch.Tensor:
        """Enhance one image: numpy ``H×W×C`` in [0, 1] (returns numpy) or a tensor ``C×H×W`` / ``B×C×H×W``
        in [0, 1] (returns a tensor). Options as :func:`rdiff.enhance.enhance_image`."""
        from rdiff.enhance import enhance_image

        options.setdefault("path", self.default_path)
        options.setdefault("steps", self.default_steps)
        options.setdefault("eta", self.config.eval.eta)
        options.setdefault("tile", self.tile)
        if isinstance(image, torch.Tensor):
            batch = image[None] if image.dim() == 3 else image
            outs = [enhance_image(self.backbone, self.modality, b.permute(1, 2, 0).cpu().numpy(), **options) for b in batch]
            out = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).to(image.device)
            return out[0] if image.dim() == 3 else out
        return enhance_image(self.backbone, self.modality, np.asarray(image, dtype=np.float32), **options)

    def evaluate(self, *, data: str | None = None, pairs: str | None = None, crops: int | None = None,
                 paths: list[str] | None = None) -> dict[str, Any]:
        """Score the run: with ``data``, the test part of that folder's split by subject (whole images at the
        working scale, degraded by the modality's simulator; as ``rdiff bench --data`` scores them); without,
        the held-out crops of the run's own data; or whole real ``pairs`` at native resolution."""
        from rdiff.data import degraded_crops, load_items, load_pair_folder
        from rdiff.evaluation import evaluate, path_options, score

        cfg = self.config
        device = next(self.backbone.parameters()).device
        if data is not None and pairs is None:
            from rdiff_bench.real_data import evaluate_run

            return evaluate_run(self, data, paths)
        if pairs is None:
            items = load_items(self.modality, cfg.data, "heldout",
                               cfg.train.resize, cfg.train.image_size, cfg.train.bad_images)
            held = degraded_crops(self.modality, items, cfg.train.image_size, crops or cfg.eval.crops, cfg.eval.seed)
            return evaluate(self.backbone, self.modality, held, default_path=cfg.eval.path,
                            sample_steps=cfg.eval.sample_steps, eta=cfg.eval.eta, seed=cfg.eval.seed,
                            device=device, paths=paths)
        real = load_pair_folder(self.modality, pairs, resize=None)  # native resolution
        options = path_options(self.backbone, cfg.eval.sample_steps, cfg.eval.eta)
        if paths:
            options = {k: v for k, v in options.items() if k in paths}
        report: dict[str, Any] = {"images": len(real), "input": score(self.modality, real, lambda lq: lq, device, 1)}
        report["paths"] = {}
        for name, opts in options.items():
            report["paths"][name] = _score_whole(self, real, opts)
        chosen = cfg.eval.path if cfg.eval.path in report["paths"] else next(iter(report["paths"]))
        report["default_path"], report["enhanced"] = chosen, report["paths"][chosen]
        return report


def _score_whole(run: Run, pairs: list, opts: dict[str, Any]) -> dict[str, Any]:
    """Score whole images enhanced tile by tile (each pair may have its own size)."""
    from rdiff.data import to_tensor

    from rdiff.evaluation import local_metrics

    metrics = local_metrics(run.modality.metrics())
    for pair in pairs:
        out = run.enhance(pair.lq, roi=pair.roi, **opts)
        metrics.update(to_tensor(out)[None], to_tensor(pair.hq)[None], to_tensor(pair.roi)[None])
    return {k: round(float(v), 4) for k, v in metrics.compute().items()}


def _load(backbone: Any, directory: Path, name: str) -> None:
    try:
        backbone.load(directory)
    except RuntimeError as exc:  # a state dict that does not fit: another backbone or configuration
        raise UserError(f"the weights in '{directory}' do not fit the backbone '{name}' of this run's "
                        f"config.yaml ({str(exc).splitlines()[0]}).") from None
