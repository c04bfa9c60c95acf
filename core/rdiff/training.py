"""What the training loop of :mod:`rdiff.engine` works with: one phase's description (:class:`Fit`), the
module DDP wraps, the best weights kept across validations, seeds, the EMA swap, and the progress bar."""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


class TrainingModule(nn.Module):
    """Backbone and adaptor under one module, so DDP sees (and synchronises) every trainable parameter."""

    def __init__(self, backbone: nn.Module, adaptor: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.adaptor = adaptor

    def forward(self, task: str, *args: Any, **kwargs: Any) -> Any:
        return self.backbone(task, *args, **kwargs)


@dataclass
class Fit:
    """What one call of the training loop needs to know about its phase."""

    phase: str  # "reconstruct" or "adapt"
    stage: str  # backbone stage, or "adapt"
    params: list[nn.Parameter]
    dataset: Any
    steps: int
    lr: float
    batch_size: int
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], Any]
    weights: Callable[[], dict[str, dict[str, torch.Tensor]]]  # what a checkpoint saves
    restore: Callable[[dict[str, dict[str, torch.Tensor]]], None]  # and how it comes back
    validate: Callable[[int], dict[str, float]] | None = None  # called every val_every steps and at the end
    val_every: int = 0


@dataclass
class BestSoFar:
    """The best validation of a phase-2 run and its weights. It travels in every checkpoint, so a resumed
    run still keeps the best step rather than the last."""

    psnr: float = -math.inf
    step: int = 0
    weights: dict[str, torch.Tensor] | None = None

    def offer(self, psnr: float, step: int, weights: Callable[[], dict[str, torch.Tensor]]) -> None:
        if psnr > self.psnr:
            self.psnr, self.step = psnr, step
            self.weights = {k: v.detach().cpu().clone() for k, v in weights().items()}

    def save_into(self, tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        if self.weights is not None:
            tensors["best"] = self.weights
            tensors["best_meta"] = {"psnr": torch.tensor(self.psnr), "step": torch.tensor(self.step)}
        return tensors

    def load_from(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        if "best" in tensors:
            self.weights = tensors["best"]
            self.psnr = float(tensors["best_meta"]["psnr"])
            self.step = int(tensors["best_meta"]["step"])


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any values (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@contextmanager
def ema_weights(ema: Any, params: list[nn.Parameter]) -> Iterator[None]:
    """A context in which ``params`` hold their EMA weights (nothing changes when ``ema`` is None)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def lr_factor(train: Any, steps: int, step: int) -> float:
    """The learning rate's multiplier at ``step`` of a stage of ``steps`` (``train`` a TrainConfig): linear
    warm-up, then constant or a cosine decay to zero."""
    warmup = max(train.warmup_steps, 0)
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if train.lr_schedule == "cosine" and steps > warmup:
        factor *= 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, step - warmup) / (steps - warmup))))
    return factor


def optimisers(fit: Fit, train: Any) -> tuple[Any, Any, Any]:
    """AdamW over the phase's parameters, its learning-rate schedule, and the EMA (``None`` when off)."""
    optimizer = torch.optim.AdamW(fit.params, lr=fit.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, train, fit.steps))
    ema = None
    if train.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(fit.params, decay=train.ema_decay)
    return optimizer, scheduler, ema


def resume_from(directory: Path, fit: Fit, optimizer: Any, scheduler: Any, ema: Any, device: torch.device
                ) -> tuple[int, dict[str, Any], Path] | None:
    """Restore the last complete checkpoint in ``directory`` when it belongs to ``fit``'s stage: ``(step, the
    info it recorded besides phase, stage and step, its path)``, or ``None``."""
    from rdiff.checkpoints import load_checkpoint

    found = load_checkpoint(directory)
    if found is None or found[2].get("stage") != fit.stage:
        return None
    tensors, state, info, path = found
    fit.restore(tensors)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None and "ema" in tensors:
        ema.shadow_params = [tensors["ema"][str(i)].to(device) for i in range(len(ema.shadow_params))]
    return int(info["step"]), {k: v for k, v in info.items() if k not in ("phase", "stage", "step")}, path


def progress(iterable: Any = None, **options: Any) -> Any:
    """A tqdm bar on a terminal; where stderr is not one (a log file, CI), a plain line at every tenth of the
    work (every 30 s when the total is unknown) instead of ``\\r`` redraws piling up in the log."""
    if not sys.stderr.isatty():
        total = options.get("total") or (len(iterable) if hasattr(iterable, "__len__") else 0)
        options.update(file=_Lines(), dynamic_ncols=False, mininterval=0 if total else 30, miniters=max(1, total // 10))
    return tqdm(iterable, **options)


class _Lines:  # tqdm's stream off a terminal: a redraw ("\r" + text) becomes a line, clears and cursor moves nothing
    def write(self, text: str) -> None:
        if text.strip() and "\x1b[" not in text:
            sys.stderr.write(text.strip() + "\n")  # stderr is line-buffered: no flush needed
