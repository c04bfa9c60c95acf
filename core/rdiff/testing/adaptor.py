"""The contract tests of the Adaptor role (see :mod:`rdiff.testing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from rdiff.adaptor import Adaptor
from rdiff.errors import UserError
from rdiff.reconstructor import Reconstructor
from rdiff.testing._common import (_assert_all_close, _Incapable, _outputs, _seeded, _side, _snapshot, _train_steps,
                                   degraded_copy, smooth_images)


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
        from rdiff.registry import create_backbone

        with _seeded(seed):
            return create_backbone(self.backbone, preset=self.preset, channels=self.channels).eval()

    def attach(self, backbone: Reconstructor, seed: int = 10) -> Adaptor:
        """The adaptor built on ``backbone`` the way the engine builds it."""
        from rdiff.registry import create_adaptor

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
        from rdiff.training import TrainingModule

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
        from rdiff.registry import create_adaptor, create_backbone, get_preset, list_backbones
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
