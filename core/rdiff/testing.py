"""Contract tests for plugin authors: one mixin per role, checking everything the engine relies on.

Subclass a mixin in a test module, name the registered component, and pytest runs the inherited checks::

    from rdiff.testing import AdaptorContract, BackboneContract, ModalityContract

    class TestHistology(ModalityContract):
        modality = "histology"          # the registered name
        options = {}                    # modality_options

    class TestMyNet(BackboneContract):
        backbone = "my-net"
        preset = "tiny"                 # a preset the backbone registers (None: the config's defaults)

    class TestMyAdaptor(AdaptorContract):
        adaptor = "my-adaptor"
        backbone = "cnn-ae"             # any registered backbone it can be attached to

Components are created by name through the normal plugin registry, exactly as ``rdiff train`` creates them,
so the plugin must be installed (its ``rdiff`` entry point) or named in ``RDIFF_PLUGINS``. Every check uses
small inputs (32 px, batch 2) on the CPU, downloads nothing and takes seconds on the ``tiny`` presets.

What a failure means is written in its assertion message; the conventions behind the checks are those of
:mod:`rdiff.modality`, :mod:`rdiff.reconstructor` and :mod:`rdiff.adaptor`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rdiff.adaptor import Adaptor
from rdiff.errors import UserError
from rdiff.modality import Modality
from rdiff.reconstructor import AdaptationTarget, Reconstructor

__all__ = ["AdaptorContract", "BackboneContract", "ModalityContract", "smooth_images"]

#: The adaptation groups the built-in adaptors understand (see :class:`rdiff.AdaptationTarget`).
TARGET_GROUPS = frozenset({"encoder", "denoiser_down", "denoiser_mid", "denoiser_up"})


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
        return {path: backbone.enhance(lq, path=path, steps=2, eta=1.0, generator=torch.Generator().manual_seed(seed))
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

    def enhance(self, lq, *, path="fast", steps=10, eta=1.0, generator=None, noise=None):
        return self.layer(lq).clamp(0, 1)

    def networks(self) -> dict[str, nn.Module]:
        return {"layer": self.layer}


# --- modality ---------------------------------------------------------------------------------------------------


class ModalityContract:
    """Checks a :class:`rdiff.Modality`. Set ``modality`` (registered name) and optionally ``options``."""

    modality: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}  # modality_options
    image_size: ClassVar[int] = 32  # side of the crops the checks degrade and score
    seeds: ClassVar[tuple[int, ...]] = (0, 1, 2, 3)  # degradation seeds tried (default mixes are random)

    # -- helpers -------------------------------------------------------------------------------------------
    def make_modality(self) -> Modality:
        from rdiff.api import create_modality

        return create_modality(self.modality, **self.options)

    @pytest.fixture
    def built(self) -> Modality:
        modality = self.make_modality()
        assert isinstance(modality, Modality), f"build must return an rdiff.Modality, got {type(modality).__name__}"
        return modality

    @pytest.fixture
    def crops(self, built: Modality) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(image, roi)`` crops of the embedded training images, as the engine cuts them."""
        from rdiff.data import load_items, random_crop

        items = load_items(built, None, "train", 128, self.image_size)
        rng = np.random.default_rng(0)
        out = []
        for k in range(4):
            item = items[k % len(items)]
            y, x = random_crop(rng, item.image, item.roi, self.image_size)
            s = (slice(y, y + self.image_size), slice(x, x + self.image_size))
            out.append((item.image[s].copy(), item.roi[s].copy()))
        return out

    # -- checks --------------------------------------------------------------------------------------------
    def test_declares_channels_and_file_types(self, built: Modality) -> None:
        assert isinstance(built.channels, int) and built.channels >= 1, "channels must be a positive int"
        assert built.suffixes and all(s.startswith(".") and s == s.lower() for s in built.suffixes), \
            "suffixes must be lower-case file suffixes such as '.png'"

    @pytest.mark.parametrize("split", ["train", "heldout"])
    def test_sample_images(self, built: Modality, split: str) -> None:
        images = built.sample_images(split)
        assert isinstance(images, list) and images, f"sample_images('{split}') must be a non-empty list"
        for i, image in enumerate(images):
            where = f"sample_images('{split}')[{i}]"
            assert isinstance(image, np.ndarray) and image.dtype == np.float32, f"{where} must be a float32 array"
            assert image.ndim == 3 and image.shape[2] == built.channels, \
                f"{where} must be H×W×{built.channels}, got {image.shape}"
            assert min(image.shape[:2]) >= self.image_size, f"{where} is smaller than {self.image_size} px"
            assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, f"{where} must lie in [0, 1]"
        again = built.sample_images(split)
        assert len(again) == len(images) and all(np.array_equal(a, b) for a, b in zip(images, again)), \
            f"sample_images('{split}') must return the same images every time (held-out scores depend on it)"

    def test_splits_are_disjoint(self, built: Modality) -> None:
        train, heldout = built.sample_images("train"), built.sample_images("heldout")
        for i, h in enumerate(heldout):
            assert not any(h.shape == t.shape and np.array_equal(h, t) for t in train), \
                f"held-out sample {i} is also a training sample"

    @pytest.mark.parametrize("split", ["train", "heldout"])
    def test_roi(self, built: Modality, split: str) -> None:
        image = built.sample_images(split)[0]
        roi = built.roi(image)
        assert isinstance(roi, np.ndarray) and roi.dtype == bool, "roi must be a bool array"
        assert roi.shape == image.shape[:2], f"roi must be H×W {image.shape[:2]}, got {roi.shape}"
        assert roi.any(), "the roi of an embedded sample is empty"

    def test_degrade_is_deterministic_per_seed(self, built: Modality, crops) -> None:
        for seed, (image, roi) in zip(self.seeds, crops):
            first, params = built.degrade(image, roi, np.random.default_rng(seed))
            second, params_again = built.degrade(image, roi, np.random.default_rng(seed))
            assert np.array_equal(first, second), f"degrade with seed {seed} gave two different images"
            assert json.dumps(params, sort_keys=True) == json.dumps(params_again, sort_keys=True), \
                f"degrade with seed {seed} gave two different parameter sets"
        image, roi = crops[0]
        by_seed = [built.degrade(image, roi, np.random.default_rng(seed))[0] for seed in self.seeds]
        assert any(not np.array_equal(by_seed[0], other) for other in by_seed[1:]), \
            "degrade gives the same image for every seed: it must draw its parameters from rng"

    def test_degrade_output_and_params(self, built: Modality, crops) -> None:
        changed = False
        for seed in self.seeds:
            for image, roi in crops[:2]:
                original = image.copy()
                out, params = built.degrade(image, roi, np.random.default_rng(seed))
                assert np.array_equal(image, original), "degrade modified its input image in place"
                assert isinstance(out, np.ndarray) and out.dtype == np.float32, "degrade must return float32"
                assert out.shape == image.shape, f"degrade changed the shape {image.shape} -> {out.shape}"
                assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, "degraded image outside [0, 1]"
                changed |= not np.array_equal(out, image)
                assert isinstance(params, dict), "degrade must return its parameters as a dict"
                json.dumps(params, allow_nan=False)  # logged to JSON: plain numbers, strings, lists, dicts
                types = params.get("types")
                assert isinstance(types, list) and types and all(isinstance(t, str) for t in types), \
                    "params must hold 'types', a non-empty list of degradation names (scores are broken down by it)"
        assert changed, "degrade never changed an image"

    def test_degrade_leaves_pixels_outside_the_roi_unchanged(self, built: Modality, crops) -> None:
        for seed in self.seeds:
            for image, roi in crops[:2]:
                part = roi.copy()
                part[:, : self.image_size // 3] = False  # a roi that certainly leaves pixels out
                out, _ = built.degrade(image, part, np.random.default_rng(seed))
                assert np.array_equal(out[~part], image[~part]), \
                    f"degrade (seed {seed}) changed pixels outside the roi"

    def test_metrics(self, built: Modality, crops) -> None:
        import torchmetrics

        from rdiff.data import to_tensor

        hq = torch.stack([to_tensor(image) for image, _ in crops[:2]])
        roi = torch.stack([to_tensor(r) for _, r in crops[:2]])
        lq = torch.stack([to_tensor(built.degrade(image, r, np.random.default_rng(1))[0]) for image, r in crops[:2]])
        identical = built.metrics()
        assert isinstance(identical, torchmetrics.MetricCollection), "metrics() must return a MetricCollection"
        assert {"psnr", "ssim"} <= set(identical.keys()), f"metrics() must include psnr and ssim, has {list(identical.keys())}"
        assert built.metrics() is not identical, "metrics() must return a fresh collection on every call"
        identical.update(hq, hq.clone(), roi)
        perfect = {k: float(v) for k, v in identical.compute().items()}
        assert perfect["psnr"] >= 60, f"identical images must score a (capped) perfect PSNR, got {perfect['psnr']}"
        assert perfect["ssim"] > 0.999, f"identical images must score SSIM 1, got {perfect['ssim']}"
        assert not any(np.isnan(v) for v in perfect.values()), f"a metric is NaN on identical images: {perfect}"
        degraded = built.metrics()
        degraded.update(lq, hq, roi)
        scores = {k: float(v) for k, v in degraded.compute().items()}
        assert all(np.isfinite(v) for v in scores.values()), f"metrics of degraded images must be finite: {scores}"
        assert scores["psnr"] < perfect["psnr"], "a degraded image must score a lower PSNR than the clean one"

    def test_png_round_trip(self, built: Modality, crops, tmp_path: Path) -> None:
        image = crops[0][0]
        written = built.write(tmp_path / "image.png", image)
        back = built.read(written)
        assert back.dtype == np.float32 and back.shape == image.shape, f"read gave {back.dtype} {back.shape}"
        assert np.abs(back - image).max() <= 0.5 / 255 + 1e-6, "a PNG written and read back differs by more than 8-bit rounding"
        stack = built.read_stack(built.write_stack(tmp_path / "stack.png", [image]))
        assert len(stack) == 1 and np.abs(stack[0] - image).max() <= 0.5 / 255 + 1e-6, \
            "write_stack/read_stack of one image must round-trip like write/read"
        with pytest.raises(UserError):
            built.read(tmp_path / "missing.png")

    def test_preprocess_maps_results_back(self, built: Modality) -> None:
        image = built.sample_images("heldout")[0]
        roi = built.roi(image)
        work, work_roi, to_original = built.preprocess(image, roi)
        assert work.ndim == 3 and work.shape[2] == built.channels and work_roi.shape == work.shape[:2], \
            "preprocess must return an H×W×C image and its H×W roi"
        assert np.asarray(to_original(work)).shape == image.shape, "preprocess's inverse must restore the input's shape"

    def test_feeds_the_engine(self, built: Modality) -> None:
        """The engine's own data path: embedded splits, held-out pairs degraded on the fly, batched and scored."""
        from rdiff.data import CleanCrops, degraded_crops, load_items, stack

        held = load_items(built, None, "heldout", 256, self.image_size)
        pairs = degraded_crops(built, held, self.image_size, 2, seed=1234)
        batch = stack(pairs)
        assert batch["lq"].shape == (2, built.channels, self.image_size, self.image_size)
        metrics = built.metrics()
        metrics.update(batch["lq"], batch["hq"], batch["roi"])
        assert all(np.isfinite(float(v)) for v in metrics.compute().values())
        train = load_items(built, None, "train", 256, self.image_size)
        item = CleanCrops(train, self.image_size, 2, seed=0, modality=built)[0]
        assert item["clean"].shape == item["degraded"].shape == (built.channels, self.image_size, self.image_size)


# --- backbone ---------------------------------------------------------------------------------------------------


class BackboneContract:
    """Checks a :class:`rdiff.Reconstructor`. Set ``backbone`` (registered name) and optionally ``preset``,
    ``options`` (model overrides), ``channels`` and ``image_size``."""

    backbone: ClassVar[str]
    preset: ClassVar[str | None] = "tiny"
    options: ClassVar[dict[str, Any]] = {}  # model overrides on top of the preset
    channels: ClassVar[int] = 3
    image_size: ClassVar[int] = 32  # rounded up to the backbone's size_multiple
    batch_size: ClassVar[int] = 2

    # -- helpers -------------------------------------------------------------------------------------------
    def make_backbone(self, seed: int = 0) -> Reconstructor:
        """A freshly initialised backbone (seeded, so two calls with one seed build identical weights)."""
        from rdiff.api import create_backbone

        with _seeded(seed):
            backbone = create_backbone(self.backbone, preset=self.preset, channels=self.channels, **self.options)
        assert isinstance(backbone, Reconstructor), f"build must return an rdiff.Reconstructor, got {type(backbone).__name__}"
        return backbone.eval()

    def batch(self, backbone: Reconstructor, seed: int = 0) -> dict[str, torch.Tensor]:
        side = _side(backbone, self.image_size)
        clean = smooth_images(self.batch_size, self.channels, side, seed)
        return {"clean": clean, "degraded": degraded_copy(clean, seed + 1),
                "roi": torch.ones(self.batch_size, 1, side, side)}

    def stage_loss(self, backbone: nn.Module, stage: str, batch: dict[str, torch.Tensor]) -> Any:
        """The loss exactly as the engine asks for it (through ``forward``, degraded images only if wanted)."""
        degraded = batch["degraded"] if backbone.needs_degraded(stage) else None
        return backbone("reconstruction_loss", stage, batch["clean"], batch["roi"], degraded)

    @pytest.fixture
    def built(self) -> Reconstructor:
        return self.make_backbone()

    # -- checks --------------------------------------------------------------------------------------------
    def test_declares_stages_paths_and_parameters(self, built: Reconstructor) -> None:
        assert built.registered_name == self.backbone
        assert built.stages and len(set(built.stages)) == len(built.stages), "stages must be unique names"
        assert "fast" in built.paths(), "every backbone offers the one-pass 'fast' path"
        assert ("sample" in built.paths()) == ("sampling" in built.capabilities), \
            "the 'sample' path and the 'sampling' capability go together"
        assert isinstance(built.size_multiple, int) and built.size_multiple >= 1
        staged: set[int] = set()
        for stage in built.stages:
            params = built.stage_parameters(stage)
            assert params, f"stage '{stage}' has no parameters"
            staged |= {id(p) for p in params}
        unstaged = [n for n, p in built.named_parameters() if p.requires_grad and id(p) not in staged]
        assert not unstaged, f"parameters no stage trains (they would stay random): {unstaged[:3]}"
        assert set(built.networks()), "networks() must name at least one network"

    def test_stage_losses_are_finite_and_reach_only_their_stage(self, built: Reconstructor) -> None:
        batch = self.batch(built)
        trainable = [p for p in built.parameters() if p.requires_grad]  # pretrained frozen parts stay frozen
        built.train()
        for stage in built.stages:
            for p in trainable:
                p.requires_grad_(True)
            built.zero_grad(set_to_none=True)
            with _seeded(0):
                loss = _loss_of(self.stage_loss(built, stage, batch), f"the '{stage}' loss")
            assert loss.requires_grad, f"the '{stage}' loss does not depend on any parameter"
            loss.backward()
            inside = {id(p) for p in built.stage_parameters(stage)}
            reached = [p for p in built.stage_parameters(stage) if p.grad is not None and p.grad.abs().sum() > 0]
            assert reached, f"the '{stage}' loss sends no gradient into the stage's parameters"
            assert all(torch.isfinite(p.grad).all() for p in reached), f"the '{stage}' loss has non-finite gradients"
            leaked = [n for n, p in built.named_parameters()
                      if id(p) not in inside and p.grad is not None and p.grad.abs().sum() > 0]
            assert not leaked, (f"the '{stage}' loss sends gradients into other stages' parameters {leaked[:3]}; "
                                f"run frozen networks under torch.no_grad()")

    def test_optimiser_steps_change_only_their_stage(self, built: Reconstructor) -> None:
        batch = self.batch(built)
        names = {id(p): n for n, p in built.named_parameters()}
        for stage in built.stages:
            params = built.stage_parameters(stage)
            before = _snapshot(list(built.parameters()))
            _train_steps(built, params, lambda s=stage: self.stage_loss(built, s, batch), 2, f"the '{stage}' loss")
            inside = {id(p) for p in params}
            changed = [p for p, old in before if not torch.equal(p, old)]
            outside = [names[id(p)] for p in changed if id(p) not in inside]
            assert not outside, f"training stage '{stage}' changed parameters outside it: {outside[:3]}"
            assert any(id(p) in inside for p in changed), f"two steps of stage '{stage}' changed none of its parameters"

    def test_enhance_shape_and_range_on_every_path(self, built: Reconstructor) -> None:
        lq = self.batch(built)["degraded"]
        for path, out in _outputs(built, lq).items():
            assert isinstance(out, torch.Tensor) and out.shape == lq.shape, \
                f"path '{path}' returned {tuple(getattr(out, 'shape', ()))}, expected {tuple(lq.shape)}"
            assert out.dtype.is_floating_point and torch.isfinite(out).all(), f"path '{path}' returned non-finite values"
            assert out.min() >= 0 and out.max() <= 1, f"path '{path}' left [0, 1]: [{out.min():.3f}, {out.max():.3f}]"

    def test_enhance_is_deterministic_for_a_fixed_generator(self, built: Reconstructor) -> None:
        lq = self.batch(built)["degraded"]
        first, second = _outputs(built, lq, seed=5), _outputs(built, lq, seed=5)
        for path in first:
            assert torch.equal(first[path], second[path]), f"path '{path}' differs between two runs with one seed"

    def test_save_load_round_trip_is_bit_exact(self, built: Reconstructor, tmp_path: Path) -> None:
        batch = self.batch(built)
        with torch.no_grad(), _seeded(0):  # lazily measured state (e.g. a latent scale) is set by a first loss
            for stage in built.stages:
                self.stage_loss(built, stage, batch)
        built.save(tmp_path)
        for name in built.networks():
            assert (tmp_path / name).is_dir(), f"save() wrote no folder for network '{name}'"
        other = self.make_backbone(seed=1)
        other.load(tmp_path)
        mine, theirs = built.state_dict(), other.state_dict()
        assert mine.keys() == theirs.keys()
        different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
        assert not different, f"after save/load these tensors differ: {different[:3]}"
        lq = batch["degraded"]
        a, b = _outputs(built, lq), _outputs(other, lq)
        assert all(torch.equal(a[p], b[p]) for p in a), "a reloaded backbone enhances differently"

    def test_adaptation_targets(self, built: Reconstructor) -> None:
        targets = built.adaptation_targets()
        assert targets, "adaptation_targets() is empty: no adaptor can attach to this backbone"
        names = [t.name for t in targets]
        assert len(set(names)) == len(names), "adaptation target names must be unique (adaptor weights are keyed by them)"
        assert names == [t.name for t in self.make_backbone(seed=1).adaptation_targets()], \
            "adaptation target names must be the same for every instance (saved adaptors are keyed by them)"
        for t in targets:
            assert isinstance(t, AdaptationTarget) and isinstance(t.module, nn.Module)
            assert built.get_submodule(t.name) is t.module, f"target '{t.name}' is not the dotted path of its module"
            assert t.group in TARGET_GROUPS, f"target '{t.name}' has group '{t.group}', not one of {sorted(TARGET_GROUPS)}"
            assert isinstance(t.channels, int) and t.channels > 0 and t.layout in ("BCHW", "BLC")
        # every target must run (an adaptor there would otherwise never train) with the declared channels
        seen: dict[str, int] = {}

        def record(name: str, layout: str):
            def hook(module, inputs, output):
                seen[name] = int(output.shape[1] if layout == "BCHW" else output.shape[-1])
            return hook

        handles = [t.module.register_forward_hook(record(t.name, t.layout)) for t in targets]
        try:
            batch = self.batch(built)
            with torch.no_grad(), _seeded(0):
                _loss_of(built("adaptation_loss", batch["degraded"], batch["clean"], batch["roi"]),
                         "the adaptation loss")
            _outputs(built, batch["degraded"])
        finally:
            for handle in handles:
                handle.remove()
        silent = [n for n in names if n not in seen]
        assert not silent, f"targets never run by adaptation_loss or enhance: {silent[:3]}"
        wrong = [f"{t.name} ({seen[t.name]} != {t.channels})" for t in targets if seen[t.name] != t.channels]
        assert not wrong, f"targets whose output does not have the declared channels: {wrong[:3]}"

    def test_capability_protocols(self, built: Reconstructor) -> None:
        caps = built.capabilities
        lq = self.batch(built)["degraded"]
        if "latent" in caps:
            with torch.no_grad():
                latent = built.encode(lq)
                assert latent.ndim == 4 and built.decode(latent).shape == lq.shape, "decode(encode(x)) must keep x's shape"
        if "lora_targets" in caps:
            networks = built.networks()
            for network, patterns in built.lora_target_modules().items():
                assert network in networks, f"lora_target_modules names network '{network}', not in networks()"
                modules = [n for n, _ in networks[network].named_modules() if n]
                for pattern in patterns:
                    assert any(n == pattern or n.endswith("." + pattern) or re.fullmatch(pattern, n) for n in modules), \
                        f"lora target '{pattern}' matches no module of '{network}'"
        if "down_residuals" in caps:
            unet = built.control_unet()
            assert any(unet is m for m in built.modules()), "control_unet() must be a network of the backbone"
        if "sampling" in caps:
            assert "sample" in built.paths()


# --- adaptor ----------------------------------------------------------------------------------------------------


class AdaptorContract:
    """Checks a :class:`rdiff.Adaptor` on one backbone. Set ``adaptor`` and ``backbone`` (registered names) and
    optionally ``preset``, ``options`` (adaptor_options) and ``identity_at_init`` (False when ``options``
    choose an initialisation that does not start as the identity)."""

    adaptor: ClassVar[str]
    backbone: ClassVar[str]
    preset: ClassVar[str | None] = "tiny"
    options: ClassVar[dict[str, Any]] = {}  # adaptor_options
    identity_at_init: ClassVar[bool] = True
    channels: ClassVar[int] = 3
    image_size: ClassVar[int] = 32
    batch_size: ClassVar[int] = 2

    # -- helpers -------------------------------------------------------------------------------------------
    def make_backbone(self, seed: int = 0) -> Reconstructor:
        from rdiff.api import create_backbone

        with _seeded(seed):
            return create_backbone(self.backbone, preset=self.preset, channels=self.channels).eval()

    def attach(self, backbone: Reconstructor, seed: int = 10) -> Adaptor:
        """The adaptor built on ``backbone`` the way the engine builds it."""
        from rdiff.api import create_adaptor

        with _seeded(seed):
            adaptor = create_adaptor(self.adaptor, backbone, **self.options)
        assert isinstance(adaptor, Adaptor), f"build must return an rdiff.Adaptor, got {type(adaptor).__name__}"
        return adaptor.eval()

    def batch(self, backbone: Reconstructor, seed: int = 0) -> dict[str, torch.Tensor]:
        side = _side(backbone, self.image_size)
        hq = smooth_images(self.batch_size, self.channels, side, seed)
        return {"lq": degraded_copy(hq, seed + 1), "hq": hq, "roi": torch.ones(self.batch_size, 1, side, side)}

    def train_adaptor(self, backbone: Reconstructor, adaptor: Adaptor, batch: dict[str, torch.Tensor]) -> None:
        """Two phase-2 steps, as the engine takes them."""
        from rdiff.engine import TrainingModule

        owner = TrainingModule(backbone, adaptor)
        _train_steps(owner, adaptor.trainable_parameters(),
                     lambda: owner("adaptation_loss", batch["lq"], batch["hq"], batch["roi"]), 2, "the adaptation loss")

    @staticmethod
    def perturb(adaptor: Adaptor, seed: int = 7) -> None:
        """Move every adaptor weight away from its initial value (so the adaptor is no longer the identity)."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in adaptor.trainable_parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=generator).to(p))

    # -- checks --------------------------------------------------------------------------------------------
    def test_attaches_with_its_own_parameters(self) -> None:
        backbone = self.make_backbone()
        base = {id(p) for p in backbone.parameters()}
        base_count = sum(p.numel() for p in backbone.parameters())
        adaptor = self.attach(backbone)
        assert backbone.adaptor is adaptor, "the adaptor must attach itself to the backbone (Adaptor.__init__)"
        assert adaptor.enabled
        params = adaptor.trainable_parameters()
        assert params, "trainable_parameters() is empty"
        assert not [p for p in params if id(p) in base], "trainable_parameters() includes the base's own parameters"
        state = adaptor.adaptor_state_dict()
        assert state and all(isinstance(v, torch.Tensor) for v in state.values()), "adaptor_state_dict() is empty"
        assert sum(v.numel() for v in state.values()) < base_count, "the adaptor's weights are not smaller than the base"

    def test_identity_at_init(self) -> None:
        if not self.identity_at_init:
            pytest.skip("these options do not start as the identity")
        backbone = self.make_backbone()
        lq = self.batch(backbone)["lq"]
        base = _outputs(backbone, lq)
        self.attach(backbone)
        _assert_all_close(base, _outputs(backbone, lq), "at initialisation the adapted backbone must equal its base")

    def test_phase_two_trains_only_the_adaptor(self) -> None:
        backbone = self.make_backbone()
        frozen = _snapshot(list(backbone.parameters()) + list(backbone.buffers()))
        adaptor = self.attach(backbone)
        trainable = _snapshot(adaptor.trainable_parameters())
        self.train_adaptor(backbone, adaptor, self.batch(backbone))
        moved = sum(not torch.equal(t, old) for t, old in frozen)
        assert moved == 0, f"two adaptation steps changed {moved} tensors of the frozen base"
        assert any(not torch.equal(p, old) for p, old in trainable), "two adaptation steps changed no adaptor weight"

    def test_disabled_reproduces_the_base(self) -> None:
        backbone = self.make_backbone()
        lq = self.batch(backbone)["lq"]
        base = _outputs(backbone, lq)
        adaptor = self.attach(backbone)
        self.perturb(adaptor)
        adapted = _outputs(backbone, lq)
        assert any(not torch.equal(base[p], adapted[p]) for p in base), \
            "with perturbed weights the adaptor changes no enhancement path: is it hooked into the backbone?"
        with adaptor.disabled():
            _assert_all_close(base, _outputs(backbone, lq), "inside adaptor.disabled()")
        with backbone.base_only():
            _assert_all_close(base, _outputs(backbone, lq), "inside backbone.base_only()")
        assert adaptor.enabled, "disabled() must switch the adaptor back on when the block ends"
        _assert_all_close(adapted, _outputs(backbone, lq), "after disabled()", atol=0.0)

    def test_weights_round_trip_through_safetensors(self, tmp_path: Path) -> None:
        from safetensors.torch import load_file, save_file

        backbone = self.make_backbone()
        base_state = {k: v.clone() for k, v in backbone.state_dict().items()}
        adaptor = self.attach(backbone)
        self.perturb(adaptor)
        file = tmp_path / "adaptor.safetensors"
        save_file({k: v.contiguous() for k, v in adaptor.adaptor_state_dict().items()}, str(file))  # as the engine

        other_backbone = self.make_backbone(seed=1)
        other_backbone.load_state_dict(base_state)
        other = self.attach(other_backbone, seed=11)
        other.load_adaptor_state_dict(load_file(str(file)))
        mine, theirs = adaptor.adaptor_state_dict(), other.adaptor_state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), \
            "adaptor weights differ after a safetensors round trip"
        lq = self.batch(backbone)["lq"]
        _assert_all_close(_outputs(backbone, lq), _outputs(other_backbone, lq), "a reloaded adaptor", atol=0.0)
        with pytest.raises((UserError, RuntimeError)):  # rdiff.Run turns RuntimeError into a UserError
            self.attach(self.make_backbone()).load_adaptor_state_dict({})

    def test_refuses_a_backbone_without_a_required_capability(self) -> None:
        from rdiff.api import create_adaptor, create_backbone, get_preset, list_backbones
        from rdiff.config import build
        from rdiff.plugins import plugins

        entry = plugins().get("adaptor", self.adaptor)
        if not entry.requires:
            pytest.skip(f"adaptor '{self.adaptor}' requires no capability")
        # the adaptor's own class refuses, not only the registry (for code that builds it directly)
        config = build(entry.config, dict(self.options), "adaptor_options") if entry.config else None
        with pytest.raises(UserError):
            entry.build(config, _Incapable())
        lacking = [name for name in list_backbones()
                   if not set(entry.requires) <= set(plugins().get("backbone", name).capabilities)]
        if not lacking:
            pytest.skip(f"every registered backbone offers {', '.join(entry.requires)}")
        name = lacking[0]
        try:
            get_preset(name, self.preset) if self.preset else None
            backbone = create_backbone(name, preset=self.preset)
        except UserError:
            pytest.skip(f"backbone '{name}' has no preset '{self.preset}' to build it small")
        with pytest.raises(UserError, match=self.adaptor):
            create_adaptor(self.adaptor, backbone, **self.options)
