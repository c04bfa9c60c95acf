"""The contract tests of the Reconstructor role (see :mod:`rdiff.testing`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from rdiff.reconstructor import AdaptationTarget, Reconstructor
from rdiff.testing._common import (_loss_of, _outputs, _seeded, _side, _snapshot, _train_steps, degraded_copy,
                                   smooth_images, TARGET_GROUPS)


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
        from rdiff.registry import create_backbone

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

    def test_path_names_resolve_to_the_backbones_typed_options(self, built: Reconstructor) -> None:
        from rdiff.errors import UserError

        settings = {"sample_steps": [2, 3], "eta": 0.5, "steps": None, "unknown_setting": 1}
        names = built.path_names(**settings)
        assert "fast" in names and len(set(names)) == len(names), "path names must be unique and include 'fast'"
        declared = built.sampling_options
        assert declared is None or dataclasses.is_dataclass(declared), "sampling_options must be a dataclass"
        for name in [*names, *built.paths()]:
            path, options = built.resolve_path(name, **settings)
            assert path in built.paths(), f"'{name}' resolves to '{path}', which is not one of paths()"
            assert options is None or (declared is not None and isinstance(options, declared)), \
                f"the options of '{name}' must be an instance of the backbone's sampling_options"
        with pytest.raises(UserError):
            built.resolve_path("no-such-path", **settings)

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
        from rdiff.capabilities import PROTOCOLS

        caps = built.capabilities
        unknown = sorted(set(caps) - set(PROTOCOLS))
        assert not unknown, f"capabilities {unknown} are not among rdiff's: {', '.join(PROTOCOLS)}"
        missing = [cap for cap in caps if not isinstance(built, PROTOCOLS[cap])]
        assert not missing, f"the backbone lacks the methods of its capabilities {missing} (see rdiff.capabilities)"
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
