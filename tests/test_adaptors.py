"""The built-in adaptors on every registered backbone: identity at start, only the adaptor trains, weights
that save and load alone, a switch back to the base, and pairings that cannot work refused in one sentence."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

import rdiff
from rdiff.plugins import plugins

BACKBONES = rdiff.list_backbones()
ADAPTORS = rdiff.list_adaptors()


def _compatible(backbone: str, adaptor: str) -> bool:
    entries = plugins()
    return set(entries.get("adaptor", adaptor).requires) <= set(entries.get("backbone", backbone).capabilities)


PAIRS = [(b, a) for b in BACKBONES for a in ADAPTORS if _compatible(b, a)]
IMPOSSIBLE = [(b, a) for b in BACKBONES for a in ADAPTORS if not _compatible(b, a)]

_BUILT: dict[str, rdiff.Reconstructor] = {}


def tiny(name: str) -> rdiff.Reconstructor:
    """A fresh copy of backbone ``name`` at its tiny preset (built once per session, seeded)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = rdiff.create_backbone(name, preset="tiny").eval()
        if hasattr(_BUILT[name], "denoiser_output"):  # a trained residual denoiser's last layer is not zero
            torch.nn.init.normal_(_BUILT[name].denoiser_output().weight, std=0.02)
    return copy.deepcopy(_BUILT[name])


def images(backbone: rdiff.Reconstructor, seed: int, batch: int = 2) -> torch.Tensor:
    side = backbone.size_multiple * max(1, 32 // backbone.size_multiple)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, backbone.channels, side, side, generator=generator)


def outputs(backbone: rdiff.Reconstructor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything a user gets from the backbone: every enhancement path (seeded) and the latents."""
    with torch.no_grad():
        result = {path: backbone.enhance(lq, path=path, options=backbone.resolve_path(path, steps=2)[1],
                                         generator=torch.Generator().manual_seed(3))
                  for path in backbone.paths()}
        if "latent" in backbone.capabilities:
            result["latent"] = backbone.encode(lq)
    return result


def assert_same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"'{key}' differs"


def adapt(backbone: rdiff.Reconstructor, adaptor: rdiff.Adaptor, steps: int = 2) -> None:
    """A few phase-2 optimiser steps on the backbone's adaptation loss."""
    optimiser = torch.optim.Adam(adaptor.trainable_parameters(), lr=1e-3)
    lq, hq = images(backbone, 1), images(backbone, 2)
    roi = torch.ones_like(lq[:, :1])
    torch.manual_seed(5)
    for _ in range(steps):
        loss = backbone.adaptation_loss(lq, hq, roi)
        loss = loss[0] if isinstance(loss, tuple) else loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def base_state(backbone: rdiff.Reconstructor, adaptor: rdiff.Adaptor) -> dict[str, torch.Tensor]:
    """Copies of every backbone tensor that is not the adaptor's (LoRA's live inside the backbone)."""
    own = {id(p) for p in adaptor.trainable_parameters()}
    return {k: v.detach().clone() for k, v in backbone.state_dict(keep_vars=True).items() if id(v) not in own}


@pytest.mark.parametrize(("backbone_name", "adaptor_name"), PAIRS)
def test_an_adapted_model_starts_exactly_as_its_base(backbone_name, adaptor_name):
    backbone = tiny(backbone_name)
    lq = images(backbone, 0)
    before = outputs(backbone, lq)
    adaptor = rdiff.create_adaptor(adaptor_name, backbone)
    assert sum(p.numel() for p in adaptor.trainable_parameters()) > 0
    assert_same(outputs(backbone, lq), before)


@pytest.mark.parametrize(("backbone_name", "adaptor_name"), PAIRS)
def test_phase_two_trains_the_adaptor_only_and_disabled_or_detached_gives_the_base(backbone_name, adaptor_name):
    backbone = tiny(backbone_name)
    lq = images(backbone, 0)
    before, keys = outputs(backbone, lq), set(backbone.state_dict())
    adaptor = rdiff.create_adaptor(adaptor_name, backbone)
    frozen = base_state(backbone, adaptor)
    weights = {k: v.clone() for k, v in adaptor.adaptor_state_dict().items()}

    adapt(backbone, adaptor)

    after = base_state(backbone, adaptor)
    assert after.keys() == frozen.keys()
    changed_base = [k for k in frozen if not torch.equal(frozen[k], after[k])]
    assert not changed_base, f"base tensors changed: {changed_base[:3]}"
    trained = adaptor.adaptor_state_dict()
    assert any(not torch.equal(weights[k], trained[k]) for k in weights), "no adaptor weight changed"
    assert not torch.equal(outputs(backbone, lq)["fast"], before["fast"]), "the adaptor has no effect"
    with adaptor.disabled():
        assert_same(outputs(backbone, lq), before)
    assert adaptor.enabled  # switched back on after the block

    adaptor.detach()
    assert backbone.adaptor is None
    assert set(backbone.state_dict()) == keys
    assert_same(outputs(backbone, lq), before)


@pytest.mark.parametrize(("backbone_name", "adaptor_name"), PAIRS)
def test_adaptor_weights_save_and_load_alone(backbone_name, adaptor_name, tmp_path):
    trained_backbone = tiny(backbone_name)
    adaptor = rdiff.create_adaptor(adaptor_name, trained_backbone)
    adapt(trained_backbone, adaptor)
    save_file(adaptor.adaptor_state_dict(), tmp_path / "adaptor.safetensors")

    fresh_backbone = tiny(backbone_name)  # the same base weights, a new untrained adaptor
    loaded = rdiff.create_adaptor(adaptor_name, fresh_backbone)
    loaded.load_adaptor_state_dict(load_file(tmp_path / "adaptor.safetensors"))
    lq = images(trained_backbone, 0)
    assert_same(outputs(fresh_backbone, lq), outputs(trained_backbone, lq))

    adaptor_size = sum(v.numel() for v in adaptor.adaptor_state_dict().values())
    assert adaptor_size < sum(p.numel() for p in tiny(backbone_name).parameters())


@pytest.mark.parametrize(("backbone_name", "adaptor_name"), PAIRS)
def test_weights_for_another_configuration_are_refused(backbone_name, adaptor_name):
    adaptor = rdiff.create_adaptor(adaptor_name, tiny(backbone_name))
    state = adaptor.adaptor_state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(rdiff.UserError, match=f"'{adaptor_name}' adaptor weights lack"):
        adaptor.load_adaptor_state_dict(state)


@pytest.mark.parametrize(("backbone_name", "adaptor_name"), IMPOSSIBLE)
def test_an_impossible_pairing_fails_in_one_sentence(backbone_name, adaptor_name):
    missing = set(plugins().get("adaptor", adaptor_name).requires) - set(plugins().get("backbone", backbone_name).capabilities)
    with pytest.raises(rdiff.UserError) as caught:
        rdiff.create_adaptor(adaptor_name, tiny(backbone_name))
    message = str(caught.value)
    assert f"'{adaptor_name}'" in message and all(m in message for m in missing)
    assert "\n" not in message


def test_controlnet_on_the_cnn_autoencoder_names_what_is_missing():
    backbone = tiny("cnn-ae")
    with pytest.raises(rdiff.UserError, match=r"'controlnet'.*down_residuals"):
        rdiff.create_adaptor("controlnet", backbone)
    # built directly (as a third party might), the adaptor refuses the backbone just the same
    from rdiff_adaptors.config import ControlNetConfig
    from rdiff_adaptors.controlnet import ControlNetAdaptor

    with pytest.raises(rdiff.UserError, match=r"'controlnet'.*down_residuals"):
        ControlNetAdaptor(ControlNetConfig(), backbone)
    assert backbone.adaptor is None


# --- residual -------------------------------------------------------------------------------------------------

RESIDUAL_BACKBONES = [b for b, a in PAIRS if a == "residual"]


@pytest.mark.parametrize("backbone_name", RESIDUAL_BACKBONES)
def test_residual_paper_init_is_not_the_identity(backbone_name):
    backbone = tiny(backbone_name)
    lq = images(backbone, 0)
    before = outputs(backbone, lq)
    torch.manual_seed(0)
    rdiff.create_adaptor("residual", backbone, init="paper")
    assert not torch.equal(outputs(backbone, lq)["fast"], before["fast"])


@pytest.mark.parametrize("backbone_name", RESIDUAL_BACKBONES)
def test_residual_layers_sit_in_the_adaptor_keyed_by_target_name(backbone_name):
    backbone = tiny(backbone_name)
    keys = set(backbone.state_dict())
    targets = backbone.adaptation_targets()
    paper = rdiff.create_adaptor("residual", backbone)
    assert set(backbone.state_dict()) == keys  # no layer, hook or buffer added to the base
    expected = [t.name for t in targets if t.group in ("image", "encoder", "denoiser_down", "denoiser_mid")]
    assert paper.target_names == expected
    # every weight is keyed "<target name>.<its layer's parameter>"
    owners = {k: [n for n in expected if k.startswith(n + ".")] for k in paper.adaptor_state_dict()}
    assert all(len(names) == 1 for names in owners.values())
    assert {names[0] for names in owners.values()} == set(expected)
    everywhere = rdiff.create_adaptor("residual", backbone, position="all")  # replaces the first one
    assert everywhere.target_names == [t.name for t in targets]
    assert paper.branches._handles == []  # the replaced adaptor's hooks are gone


def test_residual_layer_is_groupnorm_silu_conv_on_the_residual_branch():
    from rdiff_adaptors.residual import ResidualLayer

    layer = ResidualLayer(48, norm_groups=32, zero_init=False)
    assert isinstance(layer.norm, torch.nn.GroupNorm) and layer.norm.num_groups == 24  # 32 does not divide 48
    assert isinstance(layer.act, torch.nn.SiLU)
    assert isinstance(layer.proj, torch.nn.Conv2d) and layer.proj.kernel_size == (3, 3)
    assert layer.proj.in_channels == layer.proj.out_channels == 48
    tokens = ResidualLayer(16, layout="BLC")  # the token equivalent, zero at start
    x = torch.randn(2, 5, 16)
    assert isinstance(tokens.norm, torch.nn.LayerNorm) and isinstance(tokens.proj, torch.nn.Linear)
    assert torch.equal(tokens(x), torch.zeros_like(x))


# --- lora -----------------------------------------------------------------------------------------------------

LORA_BACKBONES = [b for b, a in PAIRS if a == "lora"]


@pytest.mark.parametrize("backbone_name", LORA_BACKBONES)
def test_lora_wraps_what_the_backbone_names_and_keeps_requires_grad(backbone_name):
    backbone = tiny(backbone_name)
    named = sum(len(v) for v in backbone.lora_target_modules().values())
    adaptor = rdiff.create_adaptor("lora", backbone, rank=2)
    assert len(adaptor.trainable_parameters()) == 2 * named  # lora_A and lora_B per wrapped module
    assert all(p.requires_grad for p in adaptor.trainable_parameters())
    with adaptor.disabled():
        pass
    assert all(p.requires_grad for p in adaptor.trainable_parameters())
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("backbone_name", LORA_BACKBONES)
def test_lora_targets_can_be_overridden_and_bad_ones_are_named(backbone_name):
    backbone = tiny(backbone_name)
    network, names = next((k, v) for k, v in backbone.lora_target_modules().items() if v)
    adaptor = rdiff.create_adaptor("lora", backbone, target_modules={network: [names[0]]})
    assert len(adaptor.trainable_parameters()) == 2
    untouched = tiny(backbone_name)
    keys = set(untouched.state_dict())
    with pytest.raises(rdiff.UserError, match="lora target 'no_such_layer' matches no module"):
        rdiff.create_adaptor("lora", untouched, target_modules={network: [names[0], "no_such_layer"]})
    assert untouched.adaptor is None and set(untouched.state_dict()) == keys  # nothing left half-wrapped
    with pytest.raises(rdiff.UserError, match="names network 'nowhere'"):
        rdiff.create_adaptor("lora", tiny(backbone_name), target_modules={"nowhere": ["conv1"]})


# --- the paper's size -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif("ldm-unet" not in BACKBONES, reason="the ldm-unet backbone is not installed")
def test_residual_adaptor_at_the_papers_size_trains_under_15_percent_of_the_denoiser():
    # the paper preset, or the defaults, which are the paper's sizes
    preset = "paper" if "paper" in plugins().get("backbone", "ldm-unet").presets else None
    with torch.device("meta"):  # sizes only: no memory, no initialisation time
        backbone = rdiff.create_backbone("ldm-unet", preset=preset)
        adaptor = rdiff.create_adaptor("residual", backbone)
    denoiser = sum(p.numel() for p in backbone.denoiser.parameters())
    in_denoiser = sum(p.numel() for name, p in adaptor.adaptor_state_dict().items() if name.startswith("denoiser."))
    # the paper: 18.9 M adaptor parameters in a 136.6 M adapted denoiser (13.8 %)
    assert abs(in_denoiser - 18.9e6) < 0.1e6
    assert in_denoiser / (denoiser + in_denoiser) <= 0.15


# --- controlnet -----------------------------------------------------------------------------------------------

CONTROLNET_BACKBONES = [b for b, a in PAIRS if a == "controlnet"]


@pytest.mark.parametrize("backbone_name", CONTROLNET_BACKBONES)
def test_controlnet_starts_from_the_denoisers_weights_behind_zero_convolutions(backbone_name):
    backbone = tiny(backbone_name)
    unet = backbone.control_unet()
    adaptor = rdiff.create_adaptor("controlnet", backbone)
    control = adaptor.control
    assert torch.equal(control.conv_in.weight, unet.conv_in.weight)
    assert control.conv_in.weight is not unet.conv_in.weight and control.conv_in.weight.requires_grad
    zero_convs = [*control.down_zero_convs, control.mid_zero_conv]
    assert all(not conv.weight.any() and not conv.bias.any() for conv in zero_convs)
    encoder = [t.name for t in backbone.adaptation_targets() if t.group == "encoder"]
    assert adaptor.encoder.names == encoder  # the adapted encoder E' reuses the residual layers


@pytest.mark.parametrize("backbone_name", CONTROLNET_BACKBONES)
def test_controlnet_without_encoder_layers_leaves_the_encoder_as_it_was(backbone_name):
    backbone = tiny(backbone_name)
    lq = images(backbone, 0)
    before = outputs(backbone, lq)
    adaptor = rdiff.create_adaptor("controlnet", backbone, encoder_layers=False)
    assert adaptor.encoder is None
    adapt(backbone, adaptor)
    after = outputs(backbone, lq)
    assert torch.equal(after["latent"], before["latent"]) and torch.equal(after["fast"], before["fast"])
    assert not torch.equal(after["sample"], before["sample"])  # only the denoiser's path changed


def test_the_image_field_learns_uneven_illumination_from_a_few_crops():
    """The residual adaptor's layer on the input image (ColourField) corrects a vignetting and a colour cast
    on a part of the photograph it never trained on; the res-block layers alone cannot see that far."""
    from skimage import data, transform

    photo = torch.from_numpy(transform.resize(data.retina(), (256, 256), anti_aliasing=True)).float().permute(2, 0, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    field = (1 - 0.45 * ((ys - 0.3) ** 2 + (xs + 0.2) ** 2)).clamp_min(0.2)
    degraded = (photo * field * torch.tensor([0.8, 0.7, 0.75])[:, None, None]).clamp(0, 1)
    roi = (photo.amax(0, keepdim=True) > 0.05).float()

    def crops(image, left):  # 128-px crops of the left half (training) or the right half (test)
        return torch.stack([image[:, y:y + 128, x:x + 128] for y in (0, 64, 128)
                            for x in ((0, 64) if left else (128,))])

    torch.manual_seed(0)
    # untrained, the tiny autoencoder is the image skip's round trip; the fast path alone, encoder on 32-px crops
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny", adapt_crop=32, diffusion_loss_weight=0.0)
    adaptor = rdiff.create_adaptor("residual", backbone)
    optimizer = torch.optim.AdamW(adaptor.trainable_parameters(), lr=3e-3)
    lq, hq, mask = crops(degraded, True), crops(photo, True), crops(roi, True)
    for _ in range(20):
        loss, logs = backbone.adaptation_loss(lq, hq, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert "image" in logs

    def psnr(a, b, m):
        return float(-10 * torch.log10(((a - b) ** 2 * m).sum() / (m.sum() * 3)))

    test_lq, test_hq, test_roi = crops(degraded, False), crops(photo, False), crops(roi, False)
    with torch.no_grad():
        adapted = backbone.enhance(test_lq, path="fast")
        with adaptor.disabled():
            base = backbone.enhance(test_lq, path="fast")
    assert psnr(adapted, test_hq, test_roi) > psnr(base, test_hq, test_roi) + 3


def test_whole_image_adaptation_puts_each_photograph_on_one_canvas():
    """`train.adapt_image_size` of at least every image's longest side trains phase 2 on whole images (the
    colour field then sees the same whole-image statistics it sees when enhancing): each on a square black
    canvas, its roi zero outside the photograph."""
    import numpy as np

    from rdiff.data import Item, adaptation_size, degraded_crops

    modality = rdiff.create_modality("fundus")
    rng = np.random.default_rng(0)
    shapes = [(170, 256), (200, 240)]
    items = []
    for h, w in shapes:
        image = rng.uniform(0.2, 0.8, (h, w, 3)).astype(np.float32)
        items.append(Item(image, np.ones((h, w), bool), f"{h}x{w}"))
    train = rdiff.TrainConfig(image_size=64, adapt_image_size=256)
    assert adaptation_size(train, [item.image for item in items]) == 256
    assert adaptation_size(rdiff.TrainConfig(image_size=64, adapt_image_size=128), [i.image for i in items]) == 128
    pairs = degraded_crops(modality, items, 256, 6, seed=1)
    for pair in pairs:
        h, w = next(s for s in shapes if pair.source == f"{s[0]}x{s[1]}")
        assert pair.lq.shape == pair.hq.shape == (256, 256, 3) and pair.roi.shape == (256, 256)
        assert pair.roi[:h, :w].all() and not pair.roi[h:].any() and not pair.roi[:, w:].any()
        assert (pair.hq[h:] == 0).all() and (pair.lq[:, w:] == 0).all()
        source = next(item for item in items if item.source == pair.source)
        assert np.array_equal(pair.hq[:h, :w], source.image)


def test_the_colour_fields_whole_image_statistics_ignore_the_black_background():
    """The field's global part reads the photograph's distribution inside its field of view: the same image
    on a larger black canvas (or with wider black corners) gets the same numbers."""
    import torch.nn.functional as F

    from rdiff_layers.colour_field import BACKGROUND, cell_statistics, whole_statistics

    torch.manual_seed(0)
    image = torch.rand(1, 3, 96, 128) * 0.8 + 0.1
    canvas = F.pad(image, (0, 64, 0, 96))

    def statistics(x):
        means, _, coverage = cell_statistics(x, (x.amax(dim=1, keepdim=True) > BACKGROUND).float())
        return whole_statistics(means, coverage)

    assert torch.allclose(statistics(image), statistics(canvas), atol=1e-6)
    assert not torch.allclose(statistics(image), statistics(image * 0.7), atol=1e-3)  # yet it sees the image


def test_early_stopping_keeps_the_modality_s_own_psnr():
    """Validation scores PSNR alone (a Frangi vessel map per validation would cost a quarter of it), but
    the modality's PSNR — for fundus inside the field of view without its rim — so the adaptor kept is the
    one the report's PSNR would pick."""
    import numpy as np
    import torch

    from rdiff.data import Item, degraded_crops
    from rdiff.evaluation import enhancer, score, validation_psnr

    modality = rdiff.create_modality("fundus")
    image = np.asarray(modality.sample_images("train")[0], np.float32)
    pairs = degraded_crops(modality, [Item(image, modality.roi(image), "sample")], 64, 3, seed=0)
    backbone = rdiff.create_backbone("cnn-ae", preset="tiny")
    choice = backbone.resolve_path("fast")
    device = torch.device("cpu")
    full = score(modality, pairs, enhancer(backbone, choice, device, 0), device, by_type=False)
    assert set(full) >= {"psnr", "vessel_dice"}
    assert validation_psnr(backbone, modality, pairs, choice, device, 0) == pytest.approx(full["psnr"], abs=1e-3)
