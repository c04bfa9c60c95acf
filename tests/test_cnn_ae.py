"""The ``cnn-ae`` backbone: it learns to reconstruct, saves as a diffusers model, adapts its encoder only,
enhances in one pass, and takes a timm encoder."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import rdiff

_TINY: list[rdiff.Reconstructor] = []


def tiny(**overrides) -> rdiff.Reconstructor:
    """A fresh tiny cnn-ae (the default one is built once per session)."""
    if overrides:
        torch.manual_seed(0)
        return rdiff.create_backbone("cnn-ae", preset="tiny", **overrides)
    if not _TINY:
        torch.manual_seed(0)
        _TINY.append(rdiff.create_backbone("cnn-ae", preset="tiny"))
    return copy.deepcopy(_TINY[0])


def smooth_images(batch: int = 4, side: int = 32) -> torch.Tensor:
    """Smooth synthetic colour images: a few low-frequency waves per channel, in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    out = []
    for b in range(batch):
        channels = [0.5 + 0.25 * torch.sin(2 * math.pi * (x * (1 + c) + y * (b + 1) / 2) + b + c)
                    + 0.15 * torch.cos(2 * math.pi * (y * (2 + c) - x * b / 3)) for c in range(3)]
        out.append(torch.stack(channels))
    return torch.stack(out).clamp(0, 1)


def test_tiny_preset_size_and_declared_capabilities():
    backbone = tiny()
    total = sum(p.numel() for p in backbone.parameters())
    assert 0.5e6 <= total <= 1.0e6
    assert backbone.stages == ("autoencoder",)
    assert backbone.paths() == ("fast",)
    assert backbone.capabilities == {"latent", "lora_targets"}
    assert backbone.size_multiple == 4
    assert backbone.latent_shape(64, 48) == (3, 16, 12)
    assert backbone.encode(torch.rand(1, 3, 64, 48)).shape == (1, 3, 16, 12)


def test_phase_one_loss_falls_on_a_smooth_image():
    backbone = tiny()
    backbone.train()
    clean = smooth_images(batch=2, side=24)
    roi = torch.ones_like(clean[:, :1])
    optimiser = torch.optim.Adam(backbone.stage_parameters("autoencoder"), lr=2e-3)
    losses = []
    for _ in range(30):
        loss, logs = backbone.reconstruction_loss("autoencoder", clean, roi)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert set(logs) == {"l1", "ssim"}
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_save_pretrained_round_trip(tmp_path):
    from rdiff_cnn_ae.model import CNNAutoencoder

    backbone = tiny()
    images = smooth_images(batch=2)
    with torch.no_grad():
        expected = backbone.autoencoder(images * 2 - 1)
    backbone.autoencoder.save_pretrained(tmp_path / "ae")
    loaded = CNNAutoencoder.from_pretrained(tmp_path / "ae")
    with torch.no_grad():
        # equal up to float rounding (layer_norm's vectorised kernel may round differently on other memory)
        torch.testing.assert_close(loaded(images * 2 - 1), expected, atol=1e-5, rtol=0)
    assert loaded.config.block_out_channels == [32, 64, 64]

    backbone.save(tmp_path / "run")  # the engine's layout: one folder per network
    other = tiny()
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    other.load(tmp_path / "run")
    assert torch.equal(other.enhance(images), backbone.enhance(images))


def test_adaptation_loss_is_the_encoder_loss_and_zero_for_clean_pairs_at_start():
    backbone = tiny()
    rdiff.create_adaptor("residual", backbone)
    hq = smooth_images(batch=2)
    roi = torch.ones_like(hq[:, :1])
    loss, logs = backbone.adaptation_loss(hq, hq, roi)
    assert float(loss.detach()) == 0.0 and set(logs) == {"latent_l1_lq", "latent_l1_hq"}
    lq = hq * 0.5  # a darker copy lands elsewhere in latent space until the encoder is adapted
    loss, logs = backbone.adaptation_loss(lq, hq, roi)
    with torch.no_grad():
        expected = (backbone.encode(lq) - backbone.encode(hq)).abs().mean()
    assert torch.isclose(loss, expected) and logs["latent_l1_hq"] == 0.0


def test_adaptation_targets_are_the_encoders_res_blocks():
    backbone = tiny()
    targets = backbone.adaptation_targets()
    # tiny: three levels of one res-block and the middle block's two
    assert [t.name for t in targets] == [
        "autoencoder.encoder.down_blocks.0.resnets.0.conv2", "autoencoder.encoder.down_blocks.1.resnets.0.conv2",
        "autoencoder.encoder.down_blocks.2.resnets.0.conv2", "autoencoder.encoder.mid_block.resnets.0.conv2",
        "autoencoder.encoder.mid_block.resnets.1.conv2"]
    assert {t.group for t in targets} == {"encoder"} and [t.channels for t in targets] == [32, 64, 64, 64, 64]
    assert all(t.module is backbone.get_submodule(t.name) for t in targets)


def test_enhance_is_one_pass_of_the_adapted_autoencoder_at_any_size():
    backbone = tiny()
    lq = torch.rand(1, 3, 30, 37)
    out = backbone.enhance(lq)
    assert out.shape == lq.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(rdiff.UserError, match="only the enhancement path 'fast'"):
        backbone.enhance(lq, path="sample")


def test_bad_options_are_refused_by_name():
    with pytest.raises(rdiff.UserError, match="model.norm_groups"):
        tiny(block_out_channels=[30, 64])
    with pytest.raises(rdiff.UserError, match="model.timm_encoder 'resnet10x' is not a timm model"):
        tiny(timm_encoder="resnet10x")


def test_a_timm_encoder_builds_runs_and_adapts(tmp_path):
    from rdiff_cnn_ae.model import CNNAutoencoder

    backbone = tiny(timm_encoder="resnet10t")
    lq = torch.rand(2, 3, 32, 32)
    assert backbone.encode(lq).shape == (2, 3, 8, 8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())  # batch-independent
    targets = backbone.adaptation_targets()
    assert targets and all(t.group == "encoder" for t in targets)
    before = backbone.enhance(lq)
    adaptor = rdiff.create_adaptor("residual", backbone)
    assert torch.equal(backbone.enhance(lq), before)
    adaptor.detach()
    rdiff.create_adaptor("lora", backbone)
    assert torch.equal(backbone.enhance(lq), before)
    backbone.adaptor.detach()

    backbone.autoencoder.save_pretrained(tmp_path / "ae")  # rebuilt from its config, never downloaded
    loaded = CNNAutoencoder.from_pretrained(tmp_path / "ae")
    with torch.no_grad():
        torch.testing.assert_close(loaded(lq * 2 - 1), backbone.autoencoder(lq * 2 - 1), atol=1e-5, rtol=0)
