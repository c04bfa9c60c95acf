"""Helpers shared by the contract mixins of :mod:`rdiff.testing`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rdiff.reconstructor import AdaptationTarget, Reconstructor

#: The adaptation groups the built-in adaptors understand (see :class:`rdiff.AdaptationTarget`).
TARGET_GROUPS = frozenset({"image", "encoder", "denoiser_down", "denoiser_mid", "denoiser_up"})


# --- shared helpers -------------------------------------------------------------------------------------------


def smooth_images(batch: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """``batch × channels × size × size`` smooth random images in [0, 1] (structure at several scales, so
    convolutions, norms and SSIM see something image-like rather than white noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(size // 8, 2), max(size // 8, 2), generator=generator)
    fine = torch.rand(batch, channels, size, size, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.85 * smooth + 0.15 * fine).clamp(0, 1)


def degraded_copy(clean: torch.Tensor, seed: int) -> torch.Tensor:
    """A simple seeded degradation of ``clean``: lower contrast, darker, noisy (a stand-in pair for phase 2)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator)
    return (0.15 + 0.55 * clean + 0.03 * noise).clamp(0, 1)


def _loss_of(result: Any, what: str) -> torch.Tensor:
    """The loss tensor of a ``loss`` or ``(loss, logs)`` result, checked the way the engine uses it."""
    loss, logs = result if isinstance(result, tuple) else (result, {})
    assert isinstance(loss, torch.Tensor), f"{what} must return a tensor (or (tensor, logs)), got {type(loss).__name__}"
    assert loss.numel() == 1, f"{what} must be a scalar, got shape {tuple(loss.shape)}"
    assert torch.isfinite(loss).all(), f"{what} is not finite: {loss.item()}"
    assert isinstance(logs, dict), f"the logs of {what} must be a dict, got {type(logs).__name__}"
    for key, value in logs.items():
        assert isinstance(key, str) and np.isfinite(float(value)), f"log '{key}' of {what} is not a finite number"
    return loss.reshape(())


def _side(backbone: Reconstructor, wanted: int) -> int:
    """The smallest multiple of the backbone's ``size_multiple`` that is at least ``wanted`` pixels."""
    multiple = max(int(backbone.size_multiple), 1)
    return -(-wanted // multiple) * multiple


def _outputs(backbone: Reconstructor, lq: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    """Every enhancement path of ``backbone`` on ``lq`` (sampling paths with 2 steps, seeded)."""
    with torch.no_grad():
        return {path: backbone.enhance(lq, path=path, options=backbone.resolve_path(path, steps=2, eta=1.0)[1],
                                       generator=torch.Generator().manual_seed(seed))
                for path in backbone.paths()}


def _snapshot(tensors: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(tensor, copy)`` pairs, kept by identity: names change when an adaptor wraps layers (peft)."""
    return [(t, t.detach().clone()) for t in tensors]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, and give the previous state back afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _train_steps(module: nn.Module, params: list[nn.Parameter], loss_fn: Any, steps: int, what: str) -> None:
    """``steps`` AdamW updates of ``params`` only, everything else frozen: what the engine's loop does."""
    trainable = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in trainable)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    module.train()
    for step in range(steps):
        with _seeded(100 + step):
            loss = _loss_of(loss_fn(), f"{what} (step {step + 1})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    module.eval()


def _assert_all_close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], what: str,
                      atol: float = 1e-6) -> None:
    assert expected.keys() == actual.keys()
    for path in expected:
        difference = (expected[path] - actual[path]).abs().max().item()
        assert difference <= atol, f"{what}: path '{path}' differs from the base by up to {difference:.3g}"


class _Incapable(Reconstructor):
    """A backbone with no capability at all, to check that adaptors refuse what they cannot attach to."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    stages = ("autoencoder",)

    def __init__(self) -> None:
        super().__init__(None, 3)
        self.registered_name = "incapable"
        self.layer = nn.Conv2d(3, 3, 3, padding=1)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        return list(self.parameters())

    def reconstruction_loss(self, stage, clean, roi, degraded=None):
        return (self.layer(clean) - clean).abs().mean()

    def adaptation_targets(self) -> list[AdaptationTarget]:
        return [AdaptationTarget("layer", "encoder", self.layer, 3)]

    def adaptation_loss(self, lq, hq, roi):
        return (self.layer(lq) - hq).abs().mean()

    def enhance(self, lq, *, path="fast", options=None, generator=None, noise=None):
        return self.layer(lq).clamp(0, 1)

    def networks(self) -> dict[str, nn.Module]:
        return {"layer": self.layer}
